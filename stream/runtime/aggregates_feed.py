"""Following the aggregates topic: the other workers' additions to trending, co-visitation and exposure.

Every worker reads the whole topic (a :class:`TopicFollower`, ``follow.py``) from the beginning at start-up,
so a restarted worker gets back the shop's aggregates for the topic's retention, and then keeps up; it skips its
own records, whose additions it made when it counted its events. See ``stream/aggregates.py``. A record that
cannot be read is logged and counted in ``streamrec_shared_records_rejected_total`` and skipped: aggregates are
statistics, and one lost record must not stop the worker.
"""

from __future__ import annotations

import logging

import orjson

from streamrec.stream.aggregates import WORKER_HEADER
from streamrec.stream.runtime.follow import TopicFollower

log = logging.getLogger(__name__)


class AggregatesFeed(TopicFollower):
    """Applies other workers' aggregate records to a pipeline, under the batch lock."""

    name = "aggregates"

    @property
    def topic(self) -> str:
        return self.settings.aggregates_topic

    async def _apply(self, records: list) -> None:
        own = self.pipeline.deltas.worker_id.encode() if self.pipeline.deltas is not None else None
        payloads = []
        for record in records:
            if own is not None and dict(record.headers or ()).get(WORKER_HEADER) == own:
                continue
            try:
                payloads.append(orjson.loads(record.value))
            except (orjson.JSONDecodeError, TypeError) as exc:
                self._reject(record, exc)
        async with self.lock:
            for payload in payloads:
                try:
                    self.pipeline.apply_shared(payload)
                except (ValueError, KeyError, TypeError) as exc:
                    self._reject(None, exc)

    def _loaded(self) -> None:
        log.info("shared aggregates loaded: %d records", self.records_applied)

    def _reject(self, record: object, error: Exception) -> None:
        where = f"{record.topic}/{record.partition}@{record.offset}" if record is not None else self.topic
        log.warning("skipped an aggregates record at %s: %s", where, error)
        self.pipeline.metrics.shared_records_rejected.inc()
