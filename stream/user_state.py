"""Stage 3 — update user state: each user's interest vector, recent-item sequence and purchases.

The interest vector is a decayed, event-type-weighted sum of the embeddings of the items the user touched:
``v ← v · 2^(−Δt / half_life) + w[event_type] · E[item]`` with Δt in event time. Training optimises the same
sum as a retrieval query (``model/train.py``), so what is served is what was evaluated. Events about items the
model does not know still enter the sequence and the purchases; they just cannot move the vector.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamrec.model.events import Event, EventType
from streamrec.stream.metrics import REASON_KINDS, SOURCES
from streamrec.stream.settings import Settings

STATE_FORMAT = 2
"""Version of the changelog record written by :func:`encode_state`; 2 added ``updated_at``. The optional
``last_list`` needs no new format: a reader that predates it ignores it, so workers of both versions can share a
changelog during a rolling update. 3 is read too, for records written while it briefly marked ``last_list``."""
READABLE_STATE_FORMATS = (1, 2, 3)
MAX_SHOWN_ITEMS = 200


@dataclass(slots=True)
class RecentItem:
    item_id: str
    event_type: str
    ts: float


_SOURCE_CODE = {source: code for code, source in enumerate(SOURCES)}
_REASON_CODE = {reason: code for code, reason in enumerate(REASON_KINDS)}
OTHER = "other"  # a source or explanation kind this version does not know (read from a newer changelog)


def _codes(names: Iterable[str], table: dict[str, int]) -> bytes:
    return bytes(table.get(name, 255) for name in names)


def _names(codes: bytes, vocabulary: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(vocabulary[code] if code < len(vocabulary) else OTHER for code in codes)


@dataclass(slots=True, frozen=True)
class ShownList:
    """The list a user was last shown: the online evaluation reads it at their next event (``online_eval.py``),
    the read path serves it (``read_path.py``).

    Sources and explanation kinds are held as one byte each (their index in the output contract's vocabularies),
    so a 20-item list costs about 350 bytes per user rather than 700.
    """

    item_ids: tuple[str, ...]
    source_codes: bytes
    reason_codes: bytes  # the kind of each item's explanation (``reason_code`` before its ``:``)
    variant: str
    trigger_ts: float  # event time of the event the list answered
    trigger_item: str | None = None  # the item of that event, which the list could not hold

    @classmethod
    def of(
        cls,
        item_ids: Iterable[str],
        sources: Iterable[str],
        reasons: Iterable[str],
        variant: str,
        trigger_ts: float,
        trigger_item: str | None = None,
    ) -> ShownList:
        item_ids = tuple(item_ids)
        source_codes, reason_codes = _codes(sources, _SOURCE_CODE), _codes(reasons, _REASON_CODE)
        if not len(item_ids) == len(source_codes) == len(reason_codes):
            raise ValueError("a shown list's items, sources and reasons differ in length")
        return cls(item_ids, source_codes, reason_codes, sys.intern(variant), trigger_ts, trigger_item)

    @property
    def sources(self) -> tuple[str, ...]:
        return _names(self.source_codes, SOURCES)

    @property
    def reasons(self) -> tuple[str, ...]:
        return _names(self.reason_codes, REASON_KINDS)


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
    # Wall-clock time of the last event applied: what idle-user eviction reads (0.0 in states from before it).
    updated_at: float = 0.0
    last_list: ShownList | None = None

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

    @classmethod
    def from_settings(
        cls, settings: Settings, embeddings: np.ndarray, row_of: dict[str, int], model_version: str
    ) -> InterestModel:
        return cls(
            embeddings=embeddings,
            row_of=row_of,
            event_weights=dict(settings.event_weights),
            half_life_s=settings.interest_half_life_s,
            max_recent_items=settings.max_recent_items,
            max_bought_items=settings.max_bought_items,
            model_version=model_version,
        )

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
        """Model rows of the user's ``n`` latest known items, oldest first.

        :meth:`latest_known` without the ids, written out because every warm user's whole history is read this
        way once per batch (building a pair per item there is measurable)."""
        rows: list[int] = []
        for item in reversed(state.recent):
            row = self.row_of.get(item.item_id)
            if row is not None:
                rows.append(row)
                if len(rows) == n:
                    break
        rows.reverse()
        return rows

    def latest_known(self, state: UserState, n: int) -> list[tuple[str, int]]:
        """(item id, model row) of the user's ``n`` latest known items, oldest first."""
        known: list[tuple[str, int]] = []
        for item in reversed(state.recent):
            row = self.row_of.get(item.item_id)
            if row is not None:
                known.append((item.item_id, row))
                if len(known) == n:
                    break
        known.reverse()
        return known

    def history_rows(self, state: UserState) -> list[int]:
        """Model rows of the recent items the model knows, oldest first (the ranker's input)."""
        return self.latest_rows(state, len(state.recent))


class UserStateStore:
    """User states grouped by input partition, so a revoked partition's users can be dropped at once.

    Within a partition users are held least recently updated first (:meth:`touch` moves one to the end), so
    :meth:`evict_idle` reads only the users it evicts, however many are held.
    """

    def __init__(self) -> None:
        # OrderedDict, not dict: moving a user to the end and reading the front stay O(1) however many users were
        # moved or removed before (a plain dict leaves holes that every read from the front walks again).
        self._partitions: dict[int, OrderedDict[str, UserState]] = {}

    def get(self, partition: int, user_id: str) -> UserState | None:
        users = self._partitions.get(partition)
        return None if users is None else users.get(user_id)

    def put(self, partition: int, state: UserState) -> None:
        self._partitions.setdefault(partition, OrderedDict())[state.user_id] = state

    def touch(self, partition: int, user_id: str) -> None:
        """Mark the user as the partition's most recently updated."""
        self._partitions[partition].move_to_end(user_id)

    def evict_idle(self, updated_before: float, limit: int | None = None) -> dict[str, int]:
        """Remove users last updated before ``updated_before``, at most ``limit`` of them (the longest idle of
        each partition first); returns each one's partition."""
        evicted: dict[str, int] = {}
        for partition, users in self._partitions.items():
            while users and (limit is None or len(evicted) < limit):
                user_id = next(iter(users))
                if users[user_id].updated_at >= updated_before:
                    break
                del users[user_id]
                evicted[user_id] = partition
        return evicted

    def remove(self, partition: int, user_id: str) -> bool:
        """Forget one user; True when they were held."""
        return self._partitions.get(partition, {}).pop(user_id, None) is not None

    def drop_partition(self, partition: int) -> int:
        return len(self._partitions.pop(partition, {}))

    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def __len__(self) -> int:
        return sum(len(users) for users in self._partitions.values())


class StateRecordError(ValueError):
    """A changelog record that is not a user state this version can read."""


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
            "updated_at": state.updated_at,
            "last_list": None if state.last_list is None else _shown_list_fields(state.last_list),
        }
    )


def _shown_list_fields(shown: ShownList) -> dict[str, Any]:
    return {
        "items": shown.item_ids,
        "sources": shown.sources,
        "reasons": shown.reasons,
        "variant": shown.variant,
        "trigger_ts": shown.trigger_ts,
        "trigger_item": shown.trigger_item,
    }


def _shown_list(data: Any) -> ShownList | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("`last_list` must be an object or null")
    return ShownList.of(
        (_text(item) for item in data["items"]),
        [_text(source) for source in data["sources"]],
        [_text(reason) for reason in data["reasons"]],
        _text(data["variant"]),
        _finite(data["trigger_ts"]),
        None if data.get("trigger_item") is None else _text(data["trigger_item"]),
    )


def decode_state(payload: bytes, max_recent_items: int) -> UserState:
    """Inverse of :func:`encode_state`; raises :class:`StateRecordError` for anything it cannot read.

    Every field is checked: a changelog is input like any other, and one malformed record must cost one user's
    state, never the restore of a partition. Formats 1 and 2 (before ``updated_at``, ``last_list``) are still read.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise StateRecordError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateRecordError(f"a JSON {type(data).__name__}, expected an object")
    if data.get("format") not in READABLE_STATE_FORMATS:
        raise StateRecordError(f"unsupported user state format {data.get('format')!r}")
    try:
        return _state_from_fields(data, max_recent_items)
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as exc:
        raise StateRecordError(f"malformed field: {type(exc).__name__}: {exc}") from None


def _state_from_fields(data: dict[str, Any], max_recent_items: int) -> UserState:
    user_id = data["user_id"]
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("`user_id` must be a non-empty string")
    vector = data["vector"]
    if vector is not None:
        vector = np.frombuffer(base64.b64decode(vector, validate=True), dtype="<f4").astype(np.float32)
        if vector.size == 0 or not np.isfinite(vector).all():
            raise ValueError("`vector` must be a non-empty finite float32 array")
    model_version = data["model_version"]
    if model_version is not None and not isinstance(model_version, str):
        raise TypeError("`model_version` must be a string or null")
    recent = deque(
        (RecentItem(_text(item), _text(kind), _finite(ts)) for item, kind, ts in data["recent"]),
        maxlen=max_recent_items,
    )
    shown = data.get("shown", {})  # absent in the oldest states
    if not isinstance(shown, dict):
        raise TypeError("`shown` must be an object")
    return UserState(
        user_id=user_id,
        recent=recent,
        vector=vector,
        vector_ts=_finite(data["vector_ts"]),
        model_version=model_version,
        bought=dict.fromkeys(_text(item) for item in data["bought"]),
        n_events=_integer(data["n_events"]),
        last_partition=_integer(data["last_partition"]),
        last_offset=_integer(data["last_offset"]),
        shown={_text(item): _integer(count) for item, count in shown.items()},
        updated_at=_finite(data.get("updated_at", 0.0)),
        last_list=_shown_list(data.get("last_list")),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
