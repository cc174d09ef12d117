"""Following the catalog topic: every worker reads all of ``items`` from the beginning and then keeps up.

This is a global table, not a consumer-group subscription: any worker may recommend any item, so each needs the
whole catalog. The topic is compacted (the latest record per item survives), so reading it from the start on
every launch costs one record per item. The worker starts consuming events only once the feed has caught up
with the high watermark read at start-up, so a restarted worker never recommends an item it has not yet seen
withdrawn.

Records are applied between two event batches (under the runtime's batch lock). Text embeddings of new items,
the slow part, are computed before taking the lock. A record that fails validation is counted in
``streamrec_catalog_rejected_total`` and logged with its offset; it stays in the topic for the shop to fix, and
is not dead-lettered, since every worker reads every catalog record and would each report it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamrec.stream.catalog import CatalogItem, parse_catalog_item
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.runtime.security import aiokafka_options
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

CATALOG_FETCH_RECORDS = 2_000
CATALOG_FETCH_WAIT_MS = 500


class CatalogFeed:
    """Applies the catalog topic to a pipeline; :attr:`caught_up` is set once the start-up backlog is applied."""

    def __init__(self, settings: Settings, pipeline: Pipeline, lock: asyncio.Lock) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.lock = lock
        self.caught_up = asyncio.Event()
        self.records_applied = 0

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id="streamrec-catalog",
            enable_auto_commit=False,
            # Catalog updates can wait half a second; a short fetch wait here would keep the broker and the event
            # loop busy with empty fetches that the event consumer's latency pays for.
            fetch_max_wait_ms=CATALOG_FETCH_WAIT_MS,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            **aiokafka_options(settings),
        )
        await consumer.start()
        try:
            partitions = await self._partitions(consumer, stop)
            await consumer.seek_to_beginning(*partitions)
            backlog = set(partitions)
            while not stop.is_set():
                try:
                    fetched = await consumer.getmany(
                        timeout_ms=CATALOG_FETCH_WAIT_MS, max_records=CATALOG_FETCH_RECORDS
                    )
                except KafkaError as exc:
                    log.warning("reading %s failed (%s); retrying", settings.items_topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                if fetched:
                    await self._apply([record for records in fetched.values() for record in records])
                if backlog:
                    for tp in list(backlog):
                        highwater = consumer.highwater(tp)
                        if highwater is not None and await consumer.position(tp) >= highwater:
                            backlog.discard(tp)
                    if not backlog:
                        log.info("catalog loaded: %d items", len(self.pipeline.catalog))
                        self.caught_up.set()
        finally:
            # `caught_up` stays unset if the feed ended early: the worker notices the feed's end and stops rather
            # than serve with availability it has not read.
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[TopicPartition]:
        topic = self.settings.items_topic
        # Assigning a partition makes the client ask the brokers for this topic's metadata. Apache Kafka answers an
        # unassigned consumer's metadata request with no topics at all (the embedded broker sends every topic), and
        # AIOKafkaConsumer has no public way to ask for one topic; every topic has a partition 0.
        consumer.assign([TopicPartition(topic, 0)])
        while not stop.is_set():
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                tps = [TopicPartition(topic, p) for p in sorted(partitions)]
                consumer.assign(tps)
                return tps
            await asyncio.sleep(0.2)
        return []

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
        self.records_applied += len(records)
        metrics.catalog_update_seconds.observe(time.perf_counter() - started)
