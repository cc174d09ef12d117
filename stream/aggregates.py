"""One view of the shop across workers: the stream's aggregates shared through the ``aggregates`` topic.

Trending, co-visitation and exploration exposure count the whole shop's events, but each worker consumes only
its partitions. So every worker records what its own events added to them (:class:`AggregateDeltas`: each
counted event's item, weight, time, category, segment and preceding items; the items it showed and the items
then engaged with) and publishes that record with every batch, as messages of the batch (sent and acknowledged
before the batch's offsets are committed). Every worker follows the topic
(``stream/runtime/aggregates_feed.py``) and applies the other workers' records with :func:`apply_deltas`: the
same additions their events made there, so N workers hold what one worker consuming every partition would,
each behind the others by the time to fetch a batch's record. A restarted worker reads the topic's
retained records from the beginning before it consumes events (its earlier incarnation's records included: the
worker id is new for every process), so it starts with the shop's aggregates rather than from nothing.
"""

from __future__ import annotations

import collections
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from streamrec.index.covisitation import CoVisitation
from streamrec.stream.explore import ExposureStats
from streamrec.stream.results import OutgoingMessage
from streamrec.stream.trending import TrendingBoard

AGGREGATES_FORMAT = 1
WORKER_HEADER = "streamrec.worker"
MAX_RECORD_BYTES = 256 * 1024
"""Largest aggregates record: well under the 1 MiB a broker and a producer accept by default."""


def new_worker_id() -> str:
    """An id for this worker process: its host, its pid and a random part (a restart is a new worker)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class AggregateDeltas:
    """What this worker's events added to the aggregates since the last :meth:`take`."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.sequence = 0
        self.counted: list[list[Any]] = []  # [item, weight, ts, category, segment]
        self.covisited: list[list[Any]] = []  # [item, [preceding known items, oldest first]]
        self.shown: collections.Counter[str] = collections.Counter()
        self.engaged: collections.Counter[str] = collections.Counter()

    def __bool__(self) -> bool:
        return bool(self.counted or self.covisited or self.shown or self.engaged)

    def count(self, item_id: str, weight: float, ts: float, category: str | None, segment: int | None) -> None:
        self.counted.append([item_id, weight, ts, category, segment])

    def covisit(self, preceding: Sequence[str], item_id: str) -> None:
        self.covisited.append([item_id, list(preceding)])

    def take(self, topic: str) -> list[OutgoingMessage]:
        """The record of everything since the last call, as messages keyed by this worker (split so that none
        exceeds :data:`MAX_RECORD_BYTES`, whatever the batch size); then starts afresh."""
        parts = {
            "counted": self.counted,
            "covisited": self.covisited,
            "shown": list(self.shown.items()),
            "engaged": list(self.engaged.items()),
        }
        self.counted, self.covisited = [], []
        self.shown, self.engaged = collections.Counter(), collections.Counter()
        key = self.worker_id.encode()
        return [OutgoingMessage(topic, key, value, headers=[(WORKER_HEADER, key)]) for value in self._records(parts)]

    def _records(self, parts: dict[str, list]) -> list[bytes]:
        payload = {"format": AGGREGATES_FORMAT, "worker": self.worker_id, "sequence": self.sequence + 1}
        payload |= {
            name: (dict(entries) if name in ("shown", "engaged") else entries) for name, entries in parts.items()
        }
        value = orjson.dumps(payload)
        if len(value) <= MAX_RECORD_BYTES or sum(map(len, parts.values())) <= 1:
            self.sequence += 1
            return [value]
        halves = [{name: entries[: len(entries) // 2] for name, entries in parts.items()}]
        halves.append({name: entries[len(entries) // 2 :] for name, entries in parts.items()})
        return [record for half in halves for record in self._records(half)]


def apply_deltas(
    payload: Mapping[str, Any],
    trending: TrendingBoard,
    exposure: ExposureStats,
    covisitations: Sequence[tuple[CoVisitation, Mapping[str, int]]] = (),
) -> int:
    """Apply another worker's record to this worker's aggregates; returns the events it counted.

    Co-visitation is kept in the rows of each model served (``covisitations``: each with its ``row_of``): items a
    model does not know are skipped, as they are for local events. Raises ``ValueError`` for a record of another
    format.
    """
    if payload.get("format") != AGGREGATES_FORMAT:
        raise ValueError(f"aggregates record format {payload.get('format')!r}, expected {AGGREGATES_FORMAT}")
    for item_id, weight, ts, category, segment in payload["counted"]:
        trending.add(item_id, float(weight), float(ts), category, segment)
    for covisitation, row_of in covisitations:
        for item_id, preceding in payload["covisited"]:
            row = row_of.get(item_id)
            if row is not None:
                covisitation.add([r for item in preceding if (r := row_of.get(item)) is not None], row)
    for item_id, count in payload["shown"].items():
        exposure.add(item_id, shown=float(count))
    for item_id, count in payload["engaged"].items():
        exposure.add(item_id, engaged=float(count))
    return len(payload["counted"])
