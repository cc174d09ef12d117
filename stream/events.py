"""The event contract: what shops send on topic ``events`` (one JSON object per message, key = user id).

The JSON Schema in ``stream/schemas/event.schema.json`` describes the same contract for producers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class CommandType(StrEnum):
    """Control messages that travel on the events topic, in order with the user's own events."""

    FORGET = "forget"  # erase the user's state and recommendations (right to be forgotten)


COMMAND_TYPES: tuple[str, ...] = tuple(t.value for t in CommandType)


@dataclass(slots=True, frozen=True)
class Command:
    """An accepted control message about one user, e.g. ``{"command": "forget", "user_id": "u42", "ts": ...}``.

    It is sent keyed by the user id like the user's events, so it lands on their partition and is applied after
    every event produced before it.
    """

    user_id: str
    command: CommandType
    ts: float | None = None
    request_id: str | None = None


@dataclass(slots=True)
class SourceRecord:
    """A raw message as the transport delivered it, before decoding.

    ``received_at`` is wall-clock time when the worker consumed it, used for the consume-time latency metric.
    """

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    received_at: float
    topic: str = "events"
    headers: list[tuple[str, bytes]] = field(default_factory=list)
