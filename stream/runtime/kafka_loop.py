"""The default runtime: a bare aiokafka consume → process → produce → commit loop over micro-batches.

Delivery is at-least-once: a batch's input offsets are committed only after every message it produced
(recommendations, dead letters, state updates) is acknowledged by the broker. If producing fails, the batch's
messages are sent again until they succeed or the worker is stopped; uncommitted input is then redelivered to
whichever worker owns the partition next, and user state skips events it has already applied.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from stream.changelog import restore_assigned
from stream.events import SourceRecord
from stream.metrics import WorkerMetrics
from stream.pipeline import BatchResult, OutgoingMessage, Pipeline
from stream.runtime.base import BatchRuntime
from stream.settings import Settings

log = logging.getLogger(__name__)

_RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Rebalance(ConsumerRebalanceListener):
    """Drops revoked partitions' users and restores newly assigned ones before their events are processed."""

    def __init__(self, worker: KafkaWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.worker.batch_lock:  # let the batch in flight finish and commit first
            self.worker.pipeline.drop_partitions([tp.partition for tp in revoked])
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.worker.batch_lock:
            await restore_assigned(self.worker.settings, self.worker.pipeline, [tp.partition for tp in assigned])


class KafkaWorker(BatchRuntime):
    """One worker process: consumes its share of the events topic and publishes recommendations."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics | None = None) -> None:
        super().__init__(settings, pipeline, metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lag_recorded_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id="streamrec-worker",
            acks="all",
            linger_ms=settings.producer_linger_ms,
            compression_type=None if settings.compression == "none" else settings.compression,
            max_batch_size=256 * 1024,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.consumer_group,
            client_id="streamrec-worker",
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
            max_poll_interval_ms=int(settings.max_poll_interval_s * 1000),
            max_poll_records=settings.batch_max_events,
            # A fetch that finds no data is held by the broker for up to this long (the embedded broker holds it
            # for about half even when data arrives meanwhile): tie it to the batch wait so it bounds latency.
            fetch_max_wait_ms=max(5, settings.batch_max_wait_ms),
        )
        await self._producer.start()
        try:
            await self._consumer.start()
            self._consumer.subscribe([settings.events_topic], listener=_Rebalance(self))
            await self._loop(stop)
        finally:
            if self._consumer is not None:
                await self._consumer.stop()  # leaves the group so partitions move at once
            await self._producer.stop()

    async def _loop(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        stop_waiter = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                poll = asyncio.ensure_future(
                    self._consumer.getmany(
                        timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_events
                    )
                )
                await asyncio.wait([poll, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    break
                fetched = poll.result()
                if fetched:
                    async with self.batch_lock:
                        await self._process(fetched, stop)
                await self._record_lag()
        finally:
            stop_waiter.cancel()

    async def _process(self, fetched: dict[TopicPartition, list], stop: asyncio.Event) -> None:
        assert self._consumer is not None
        received_at = time.time()
        records = [
            SourceRecord(
                value=message.value,
                key=message.key,
                partition=tp.partition,
                offset=message.offset,
                received_at=received_at,
                topic=tp.topic,
            )
            for tp, messages in fetched.items()
            for message in messages
        ]
        # Off the event loop, so heartbeats keep flowing while torch and FAISS work (they release the GIL).
        result = await asyncio.to_thread(self.pipeline.process, records)
        if not await self._send_until_acknowledged(result, stop):
            return  # stopping with unacknowledged output: leave offsets uncommitted for redelivery
        commit_started = time.perf_counter()
        offsets = {
            TopicPartition(self.settings.events_topic, partition): OffsetAndMetadata(offset, "")
            for partition, offset in result.next_offsets.items()
        }
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced mid-batch; the new owner reprocesses from the last commit.
            log.warning("offset commit failed (%s); events will be redelivered", exc)
        if self.metrics:
            self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - commit_started)
        self.batches_processed += 1

    async def _send_until_acknowledged(self, result: BatchResult, stop: asyncio.Event) -> bool:
        started = time.perf_counter()
        for attempt in itertools.count():
            try:
                await self._send_all(result.messages)
                break
            except KafkaError as exc:
                delay = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
                log.warning("producing batch output failed (%s); retrying in %.1f s", exc, delay)
                if stop.is_set():
                    return False
                await asyncio.sleep(delay)
        self.output_acknowledged(result, time.perf_counter() - started)
        return True

    async def _send_all(self, messages: list[OutgoingMessage]) -> None:
        assert self._producer is not None
        pending = [
            await self._producer.send(
                m.topic, value=m.value, key=m.key, partition=m.partition, headers=m.headers or None
            )
            for m in messages
        ]
        await asyncio.gather(*pending)

    async def _record_lag(self) -> None:
        """Lag per assigned partition from the fetch high watermark (see ``stream/changelog.py`` for why)."""
        if not self.metrics or self._consumer is None:
            return
        now = time.monotonic()
        if now - self._lag_recorded_at < 1.0:
            return
        self._lag_recorded_at = now
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except (KafkaError, IllegalStateError):
                continue  # partition being revoked
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
