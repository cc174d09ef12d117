"""Stage 3 — update user state: each user's interest vector, recent-item sequence and purchases.

The interest vector is a decayed, event-type-weighted sum of the embeddings of the items the user touched:
``v ← v · 2^(−Δt / half_life) + w[event_type] · E[item]`` with Δt in event time. Training optimises the same
sum as a retrieval query (``model/train.py``), so what is served is what was evaluated. Events about items the
model does not know still enter the sequence and the purchases; they just cannot move the vector.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.events import Event, EventType

STATE_FORMAT = 1
MAX_SHOWN_ITEMS = 200


@dataclass(slots=True)
class RecentItem:
    item_id: str
    event_type: str
    ts: float


@dataclass(slots=True)
class UserState:
    """Everything the worker remembers about one user."""

    user_id: str
    recent: deque[RecentItem]
    vector: np.ndarray | None = None
    vector_ts: float = 0.0
    model_version: str | None = None
    bought: dict[str, None] = field(default_factory=dict)  # insertion-ordered set, oldest first
    n_events: int = 0
    # Input position of the last event applied. A redelivered event (at-least-once) is not applied twice.
    last_partition: int = -1
    last_offset: int = -1
    # Items recommended to the user and not touched since, with how often: the "ignored" rule and the
    # engagement statistics of exploration read it. Bounded to the most recently shown items.
    shown: dict[str, int] = field(default_factory=dict)

    def record_shown(self, item_ids: list[str], max_items: int = MAX_SHOWN_ITEMS) -> None:
        for item_id in item_ids:
            self.shown[item_id] = self.shown.pop(item_id, 0) + 1
        while len(self.shown) > max_items:
            del self.shown[next(iter(self.shown))]

    def record_engaged(self, item_id: str) -> bool:
        """Forget the impressions of an item the user touched; True when it had been recommended to them."""
        return self.shown.pop(item_id, None) is not None

    def already_applied(self, partition: int, offset: int) -> bool:
        return partition == self.last_partition and offset <= self.last_offset

    @property
    def is_cold(self) -> bool:
        """No known item has shaped the vector yet: serve trending instead."""
        return self.vector is None


@dataclass(frozen=True)
class InterestModel:
    """What the state update needs from the loaded model and the settings."""

    embeddings: np.ndarray  # float32 [n_items, dim]
    row_of: dict[str, int]
    event_weights: dict[str, float]
    half_life_s: float
    max_recent_items: int
    max_bought_items: int
    model_version: str

    def new_state(self, user_id: str) -> UserState:
        return UserState(user_id=user_id, recent=deque(maxlen=self.max_recent_items))

    def apply(self, state: UserState, event: Event) -> None:
        """Fold one event into the user's state, in place."""
        state.n_events += 1
        state.recent.append(RecentItem(event.item_id, event.event_type.value, event.ts))
        if event.event_type is EventType.BUY and self.max_bought_items:
            state.bought.pop(event.item_id, None)
            state.bought[event.item_id] = None
            while len(state.bought) > self.max_bought_items:
                del state.bought[next(iter(state.bought))]
        if state.model_version != self.model_version:
            self.rebuild_vector(state)
            return
        row = self.row_of.get(event.item_id)
        if row is not None:
            self._add(state, row, self.event_weights[event.event_type.value], event.ts)

    def rebuild_vector(self, state: UserState) -> None:
        """Recompute the vector from the recent sequence, for state written under another model version."""
        state.vector = None
        state.vector_ts = 0.0
        state.model_version = self.model_version
        for item in state.recent:
            row = self.row_of.get(item.item_id)
            if row is not None:
                self._add(state, row, self.event_weights[item.event_type], item.ts)

    def _add(self, state: UserState, row: int, weight: float, ts: float) -> None:
        contribution = self.embeddings[row] * np.float32(weight)
        if state.vector is None:
            state.vector = contribution.astype(np.float32, copy=True)
            state.vector_ts = ts
        elif ts >= state.vector_ts:
            state.vector *= np.float32(2.0 ** (-(ts - state.vector_ts) / self.half_life_s))
            state.vector += contribution
            state.vector_ts = ts
        else:  # a late event: decay its own contribution instead of rewinding the vector
            state.vector += contribution * np.float32(2.0 ** (-(state.vector_ts - ts) / self.half_life_s))

    def latest_rows(self, state: UserState, n: int) -> list[int]:
        """Model rows of the user's ``n`` latest known items, oldest first."""
        rows: list[int] = []
        for item in reversed(state.recent):
            row = self.row_of.get(item.item_id)
            if row is not None:
                rows.append(row)
                if len(rows) == n:
                    break
        rows.reverse()
        return rows

    def history_rows(self, state: UserState) -> list[int]:
        """Model rows of the recent items the model knows, oldest first (the ranker's input)."""
        return self.latest_rows(state, len(state.recent))


class UserStateStore:
    """User states grouped by input partition, so a revoked partition's users can be dropped at once."""

    def __init__(self) -> None:
        self._partitions: dict[int, dict[str, UserState]] = {}

    def get(self, partition: int, user_id: str) -> UserState | None:
        return self._partitions.get(partition, {}).get(user_id)

    def put(self, partition: int, state: UserState) -> None:
        self._partitions.setdefault(partition, {})[state.user_id] = state

    def drop_partition(self, partition: int) -> int:
        return len(self._partitions.pop(partition, {}))

    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def __len__(self) -> int:
        return sum(len(users) for users in self._partitions.values())


def encode_state(state: UserState) -> bytes:
    """Serialise a state for the changelog topic (JSON; the vector as base64 float32)."""
    vector = None if state.vector is None else base64.b64encode(state.vector.astype("<f4").tobytes()).decode()
    return orjson.dumps(
        {
            "format": STATE_FORMAT,
            "user_id": state.user_id,
            "vector": vector,
            "vector_ts": state.vector_ts,
            "model_version": state.model_version,
            "recent": [[r.item_id, r.event_type, r.ts] for r in state.recent],
            "bought": list(state.bought),
            "n_events": state.n_events,
            "last_partition": state.last_partition,
            "last_offset": state.last_offset,
            "shown": state.shown,
        }
    )


def decode_state(payload: bytes, max_recent_items: int) -> UserState:
    """Inverse of :func:`encode_state`; raises ``ValueError`` on a record it cannot read."""
    data: dict[str, Any] = orjson.loads(payload)
    if data.get("format") != STATE_FORMAT:
        raise ValueError(f"unsupported user state format {data.get('format')!r}")
    vector = data["vector"]
    return UserState(
        user_id=data["user_id"],
        recent=deque(
            (RecentItem(str(item), str(kind), float(ts)) for item, kind, ts in data["recent"]),
            maxlen=max_recent_items,
        ),
        vector=None if vector is None else np.frombuffer(base64.b64decode(vector), dtype="<f4").copy(),
        vector_ts=float(data["vector_ts"]),
        model_version=data["model_version"],
        bought=dict.fromkeys(data["bought"]),
        n_events=int(data["n_events"]),
        last_partition=int(data["last_partition"]),
        last_offset=int(data["last_offset"]),
        shown={str(item): int(count) for item, count in data.get("shown", {}).items()},  # absent in older states
    )
