"""Following the catalog topic: every worker reads all of ``items`` from the beginning and then keeps up.

Any worker may recommend any item, so each needs the whole catalog (a :class:`TopicFollower`, ``follow.py``).
The topic is compacted (the latest record per item survives), so reading it from the start on every launch costs
one record per item. The worker starts consuming events only once the feed has caught up with the high
watermark read at start-up, so a restarted worker never recommends an item it has not yet seen withdrawn.

Records are applied between two event batches (under the runtime's batch lock). Text embeddings of new items,
the slow part, are computed before taking the lock. A record that fails validation is counted in
``streamrec_catalog_rejected_total`` and logged with its offset; it stays in the topic for the shop to fix, and
is not dead-lettered, since every worker reads every catalog record and would each report it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from streamrec.stream.catalog import CatalogItem, parse_catalog_item
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.runtime.follow import TopicFollower

log = logging.getLogger(__name__)


class CatalogFeed(TopicFollower):
    """Applies the catalog topic to a pipeline; :attr:`caught_up` is set once the start-up backlog is applied."""

    name = "catalog"

    @property
    def topic(self) -> str:
        return self.settings.items_topic

    def _loaded(self) -> None:
        log.info("catalog loaded: %d items", len(self.pipeline.catalog))

    async def _apply(self, records: list) -> None:
        started = time.perf_counter()
        metrics = self.pipeline.metrics
        items: list[CatalogItem] = []
        removed: list[str] = []
        for record in records:
            if record.value is None and record.key is not None:
                removed.append(record.key.decode("utf-8", "replace"))
                continue
            try:
                items.append(
                    parse_catalog_item(
                        record.value, record.key, self.pipeline.intake.rules, self.settings.max_payload_bytes
                    )
                )
            except InvalidEvent as rejection:
                log.warning(
                    "rejected catalog record %s/%d@%d: %s", record.topic, record.partition, record.offset, rejection
                )
                metrics.catalog_rejected.labels(rejection.reason).inc()
        vectors = await asyncio.to_thread(self.pipeline.text_vectors, items) if items else {}
        async with self.lock:
            self.pipeline.apply_catalog(items, vectors)
            for item_id in removed:
                self.pipeline.remove_catalog_item(item_id)
        metrics.catalog_update_seconds.observe(time.perf_counter() - started)
