"""The read path: ``GET /recommendations/<user id>`` on the worker's HTTP port returns the list the user was last
shown, for pages that render before the user's next event.

A user's state lives on the worker that owns the partition of their events, so the answer is one of:

* **200** with the list (items with their titles, sources and explanation kinds, the variant, and the time of the
  event it answered), when this worker owns the user and has shown them a list;
* **404** when this worker owns the user's partition but knows no list for them (a new or evicted user: serve
  trending);
* **421 Misdirected Request** when another worker owns the partition, with ``partition`` and, when the consumer
  group says so, ``owner`` (``host:port`` of that worker's HTTP server) to ask instead.

The partition is Kafka's default for a keyed message (murmur2 of the user id), which is how producers that key
events by user id place them. The handler runs on the HTTP server's threads and only reads: a dict lookup and an
immutable list, no lock on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from streamrec.stream.user_state import UserStateStore


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's ``Utils.murmur2``), as a signed 32-bit int."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(data)
    h = (seed ^ length) & 0xFFFFFFFF
    for start in range(0, length - length % 4, 4):
        k = int.from_bytes(data[start : start + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    if tail:
        rest = data[length - tail :]
        if tail == 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(user_id: str, n_partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message keyed ``user_id``."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % n_partitions


@dataclass
class ReadPath:
    """Answers read requests from the worker's state; the runtime keeps :attr:`owned` and :attr:`n_partitions`."""

    store: UserStateStore
    title_of: Callable[[str], str | None]
    n_partitions: int = 0  # of the events topic; 0 until the topics are known
    owned: Callable[[], Collection[int]] = field(default=lambda: ())
    owner_of: Callable[[int], str | None] = field(default=lambda partition: None)

    def answer(self, user_id: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for ``user_id``."""
        if not user_id:
            return 400, {"error": "no user id: GET /recommendations/<user id>"}
        if self.n_partitions <= 0:
            return 503, {"error": "the worker is starting"}
        partition = partition_of(user_id, self.n_partitions)
        if partition not in self.owned():
            return 421, {"error": "another worker owns this user", "partition": partition,
                         "owner": self.owner_of(partition)}  # fmt: skip
        state = self.store.get(partition, user_id)
        shown = None if state is None else state.last_list
        if shown is None:
            return 404, {"error": "no list shown to this user yet", "partition": partition}
        return 200, {
            "user_id": user_id,
            "variant": shown.variant,
            "trigger_ts": shown.trigger_ts,
            "items": [
                {"item_id": item, "title": self.title_of(item), "source": source, "reason": reason}
                for item, source, reason in zip(shown.item_ids, shown.sources, shown.reasons, strict=True)
            ],
        }
