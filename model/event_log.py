"""An event log in columnar form: the training and evaluation input of every model.

Loaders for the file formats live in ``model/datasets.py``; they all return an :class:`EventLog`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from streamrec.model.events import EVENT_TYPES, Event, EventType

EVENT_TYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}


@dataclass
class EventLog:
    """Events as parallel arrays, in the order they happened (stable-sorted by ``timestamps``).

    ``event_types`` holds codes indexing :data:`streamrec.model.events.EVENT_TYPES` (0 = view ... 3 = buy).
    """

    user_ids: np.ndarray  # dtype object (str)
    item_ids: np.ndarray  # dtype object (str)
    event_types: np.ndarray  # int8
    timestamps: np.ndarray  # float64, epoch seconds
    name: str = "events"

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if not (len(self.item_ids) == len(self.event_types) == len(self.timestamps) == n):
            raise ValueError("EventLog columns differ in length")

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_events(cls, events: Iterable[Event], name: str = "events") -> EventLog:
        users, items, types, stamps = [], [], [], []
        for event in events:
            users.append(event.user_id)
            items.append(event.item_id)
            types.append(EVENT_TYPE_CODES[event.event_type.value])
            stamps.append(event.ts)
        log = cls(
            np.array(users, dtype=object),
            np.array(items, dtype=object),
            np.array(types, dtype=np.int8),
            np.array(stamps, dtype=np.float64),
            name,
        )
        return log.sorted_by_time()

    def sorted_by_time(self) -> EventLog:
        order = np.argsort(self.timestamps, kind="stable")
        return EventLog(
            self.user_ids[order], self.item_ids[order], self.event_types[order], self.timestamps[order], self.name
        )

    def events(self) -> Iterator[Event]:
        for user, item, code, ts in zip(self.user_ids, self.item_ids, self.event_types, self.timestamps, strict=True):
            yield Event(user_id=user, item_id=item, event_type=EventType(EVENT_TYPES[code]), ts=float(ts))

    def user_sequences(self) -> dict[str, np.ndarray]:
        """Each user's event indexes in time order."""
        order = np.argsort(self.user_ids, kind="stable")  # stable keeps time order within a user
        users_sorted = self.user_ids[order]
        boundaries = np.flatnonzero(users_sorted[1:] != users_sorted[:-1]) + 1
        return {
            str(chunk_users[0]): chunk
            for chunk, chunk_users in zip(np.split(order, boundaries), np.split(users_sorted, boundaries), strict=True)
            if len(chunk)
        }

    def fingerprint(self) -> str:
        """A SHA-256 over the content, recorded in artifact manifests to tie a model to its data."""
        digest = hashlib.sha256()
        for column in (self.user_ids, self.item_ids):
            digest.update("\x1f".join(map(str, column)).encode())
        digest.update(self.event_types.tobytes())
        digest.update(self.timestamps.tobytes())
        return digest.hexdigest()
