"""The event vocabulary shared by training and serving: what a user did, to which item, when.

Shops send events as JSON on topic ``events`` (the contract is in ``stream/schemas/event.schema.json`` and enforced
by :mod:`streamrec.stream.validate`); the offline loaders build the same :class:`Event` from data set files.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    """User actions, from weakest to strongest signal of interest."""

    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    BUY = "buy"


EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)


@dataclass(slots=True)
class Event:
    """One accepted user action on one item. ``ts`` is event time in epoch seconds."""

    user_id: str
    item_id: str
    event_type: EventType
    ts: float
    event_id: str | None = None
    session_id: str | None = None
    context: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type.value,
            "ts": self.ts,
        }
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.context is not None:
            out["context"] = self.context
        return out


#: How much each event type adds to a user's interest vector: a buy says more than a view. The serving default
#: (``STREAMREC_EVENT_WEIGHTS``) and the training default.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "click": 2.0, "cart": 4.0, "buy": 8.0}

#: Event-time half-life of interest, seconds: an event this much older than the newest counts half.
DEFAULT_HALF_LIFE_S = 172_800.0


def checked_event_weights(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` if it gives every event type a non-negative weight; else ``ValueError`` saying what is wrong."""
    missing = set(EVENT_TYPES) - set(weights)
    if missing:
        raise ValueError(f"event_weights lacks {sorted(missing)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("event weights must be non-negative")
    return weights
