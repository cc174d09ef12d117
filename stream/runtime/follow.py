"""Following a topic that every worker reads whole: from the beginning at start-up, then keeping up.

These are global tables, not consumer-group subscriptions: each worker needs all of the catalog
(``catalog_feed.py``) and every other worker's aggregate additions (``aggregates_feed.py``). A follower assigns
itself every partition, seeks to the beginning and sets :attr:`TopicFollower.caught_up` once it has applied what
the topic held at start-up; the worker consumes events only after that. Records are applied between two event
batches, under the runtime's batch lock.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamrec.stream.pipeline import Pipeline
from streamrec.stream.runtime.security import aiokafka_options
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

FOLLOW_FETCH_RECORDS = 2_000
FOLLOW_FETCH_WAIT_MS = 500


class TopicFollower:
    """Reads all of :attr:`topic` into a pipeline; subclasses say how a batch of records is applied."""

    name = "topic"

    def __init__(self, settings: Settings, pipeline: Pipeline, lock: asyncio.Lock) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.lock = lock
        self.caught_up = asyncio.Event()
        self.records_applied = 0

    @property
    def topic(self) -> str:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"streamrec-{self.name}",
            enable_auto_commit=False,
            # These updates can wait half a second; a short fetch wait here would keep the broker and the event
            # loop busy with empty fetches that the event consumer's latency pays for.
            fetch_max_wait_ms=FOLLOW_FETCH_WAIT_MS,
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
                    fetched = await consumer.getmany(timeout_ms=FOLLOW_FETCH_WAIT_MS, max_records=FOLLOW_FETCH_RECORDS)
                except KafkaError as exc:
                    log.warning("reading %s failed (%s); retrying", self.topic, exc)
                    await asyncio.sleep(1.0)
                    continue
                if fetched:
                    records = [record for records in fetched.values() for record in records]
                    await self._apply(records)
                    self.records_applied += len(records)
                if backlog:
                    for tp in list(backlog):
                        highwater = consumer.highwater(tp)
                        if highwater is not None and await consumer.position(tp) >= highwater:
                            backlog.discard(tp)
                    if not backlog:
                        self._loaded()
                        self.caught_up.set()
        finally:
            # `caught_up` stays unset if the feed ended early: the worker notices the feed's end and stops rather
            # than serve with tables it has not read.
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> list[TopicPartition]:
        topic = self.topic
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
        raise NotImplementedError

    def _loaded(self) -> None:
        """Called once, when the start-up backlog is applied."""
