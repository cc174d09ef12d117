"""The default runtime: a bare aiokafka consume → process → produce → commit loop over micro-batches.

Delivery is at-least-once: a batch's input offsets are committed only after every message it produced
(recommendations, dead letters, state updates) is acknowledged by the broker (see ``stream/runtime/base.py`` for
retries and what stops a worker). Uncommitted input is redelivered to whichever worker owns the partition next, and
user state skips events it has already applied.

**Fencing.** A worker paused past its session timeout (SIGSTOP, a long GC, a VM pause) is no longer a member of
the group, but does not know it until it talks to the coordinator. Before publishing a batch it therefore asks:
it commits the offsets its batch *started* from, under its group generation. The coordinator refuses that commit
from a member it has expelled, and the worker then drops the batch unpublished, together with what the batch did to
its users' state; the partitions' new owner processes those events from the committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from streamrec.stream.events import SourceRecord
from streamrec.stream.results import BatchResult, OutgoingMessage
from streamrec.stream.runtime.base import RETRY_BACKOFF_S, BatchRuntime, WorkerFailed
from streamrec.stream.runtime.security import aiokafka_options

log = logging.getLogger(__name__)

BROKER_REQUEST_TIMEOUT_S = 5.0  # bound on one ownership check, commit or offsets lookup
LAG_INTERVAL_S = 1.0
END_OFFSETS_INTERVAL_S = 2.0  # also how often the broker's reachability is checked for readiness


class _Rebalance(ConsumerRebalanceListener):
    """Drops revoked partitions' users and restores newly assigned ones before their events are processed."""

    def __init__(self, worker: KafkaWorker, stop: asyncio.Event) -> None:
        self.worker = worker
        self.stop = stop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batch still being acknowledged commits before its partitions move, so its owner-to-be skips it.
        await self.worker.settle()
        await self.worker.revoked(self.worker.events_partitions(revoked))
        self.worker.forget_lag(revoked)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.worker.assigned(self.worker.events_partitions(assigned), self.stop)


class KafkaWorker(BatchRuntime):
    """One worker process: consumes its share of the events topic and publishes recommendations."""

    _consumer: AIOKafkaConsumer | None = None
    _producer: AIOKafkaProducer | None = None
    #: The last batch's delivery and commit, overlapping the next batch's poll and processing.
    _finishing: asyncio.Task | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set once a stopping worker gives up on the last batch's acknowledgements (they stay uncommitted).
        self._abandon = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._committed: dict[TopicPartition, int] = {}
        self._end_offsets: dict[TopicPartition, int] = {}
        self._end_offsets_at = 0.0
        settings = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id="streamrec-worker",
            acks="all",
            linger_ms=settings.producer_linger_ms,
            compression_type=None if settings.compression == "none" else settings.compression,
            max_batch_size=256 * 1024,
            max_request_size=settings.producer_max_request_bytes,
            **aiokafka_options(settings),
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
            **aiokafka_options(settings),
        )
        lag = asyncio.create_task(self._record_lag_until(stop))
        try:
            await self._producer.start()
            await self._consumer.start()
            self._consumer.subscribe([settings.events_topic], listener=_Rebalance(self, stop))
            await self._loop(stop)
        except KafkaError as exc:
            self.fail(WorkerFailed(f"Kafka at {settings.bootstrap_servers}: {type(exc).__name__}: {exc}"))
        finally:
            lag.cancel()
            # Leaving the group moves the partitions at once; bounded, as the broker may be gone. aiokafka's stop()
            # can end in CancelledError when it cancels its own fetches.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._consumer.stop(), self.settings.shutdown_timeout_s / 2)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._producer.stop(), self.settings.shutdown_timeout_s / 2)

    def events_partitions(self, tps: list[TopicPartition]) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == self.settings.events_topic)

    async def _loop(self, stop: asyncio.Event) -> None:
        """Poll, process, publish; a batch's acknowledgements and commit overlap the next batch's poll and processing.

        At-least-once holds: a batch's offsets are committed only once its output is acknowledged, and the next
        batch publishes only after that commit (so outputs stay in order per key and commits never go backwards).
        """
        assert self._consumer is not None
        stop_waiter = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                poll = asyncio.ensure_future(
                    self._consumer.getmany(
                        timeout_ms=self.settings.batch_max_wait_ms, max_records=self.settings.batch_max_events
                    )
                )
                finishing = [self._finishing] if self._finishing is not None else []
                await asyncio.wait([poll, stop_waiter, *finishing], return_when=asyncio.FIRST_COMPLETED)
                if finishing and finishing[0].done():
                    await self.settle()  # a delivery that failed stops the worker now, not at the next batch
                if not stop.is_set() and not poll.done():
                    await asyncio.wait([poll, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set() or not poll.done():
                    poll.cancel()
                    break
                fetched = poll.result()
                if fetched:
                    async with self.batch_lock:
                        await self._process(fetched, stop)
            # Stopping: the batch in flight still gets its acknowledgements and commit, for a bounded time.
            if self._finishing is not None:
                await asyncio.wait([self._finishing], timeout=self.settings.shutdown_timeout_s / 4)
                self._abandon.set()
                await self.settle()
        finally:
            stop_waiter.cancel()
            if self._finishing is not None:
                self._finishing.cancel()

    async def settle(self) -> None:
        """Wait until the batch being acknowledged is committed, or given up (a delivery that cannot succeed stops
        the worker: see :meth:`fail`)."""
        finishing, self._finishing = self._finishing, None
        if finishing is None:
            return
        try:
            await finishing
        except WorkerFailed as exc:
            self.fail(exc)

    async def _process(self, fetched: dict[TopicPartition, list], stop: asyncio.Event) -> None:
        assert self._consumer is not None
        if self.failure is not None:
            return
        fetched = self._restored_only(fetched)
        if not fetched:
            return
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
        # Off the event loop, so heartbeats keep flowing while torch and FAISS work (they release the GIL); the
        # previous batch's acknowledgements and commit meanwhile go on in the event loop.
        result = await asyncio.to_thread(self.pipeline.process, records)
        await self.settle()
        started_from = {tp: messages[0].offset for tp, messages in fetched.items()}
        lost = await self._ownership_lost(started_from, stop)
        if lost is not None:
            self.fenced({tp.partition for tp in fetched}, lost)
            return
        self._finishing = asyncio.create_task(self._finish(result))

    async def _finish(self, result: BatchResult) -> None:
        """Publish a batch, wait for every acknowledgement, then commit its offsets."""
        if not await self.deliver(result, self._send, self._abandon):
            return  # stopping with unacknowledged output: leave offsets uncommitted for redelivery
        await self._commit(
            {TopicPartition(self.settings.events_topic, p): offset for p, offset in result.next_offsets.items()}
        )
        self.batches_processed += 1

    def _restored_only(self, fetched: dict[TopicPartition, list]) -> dict[TopicPartition, list]:
        """Records of partitions whose users are restored. Others were fetched just before their partition was
        revoked or fenced: they are put back (seek), to be read again once the group settles."""
        assert self._consumer is not None
        stale = self.unrestored({tp.partition for tp in fetched})
        if not stale:
            return fetched
        assignment = self._consumer.assignment()
        for tp, messages in fetched.items():
            if tp.partition in stale and tp in assignment:
                self._consumer.seek(tp, messages[0].offset)
        return {tp: messages for tp, messages in fetched.items() if tp.partition not in stale}

    async def _ownership_lost(self, started_from: dict[TopicPartition, int], stop: asyncio.Event) -> str | None:
        """None when the group coordinator confirms this worker still owns the batch's partitions, else why not.

        The confirmation is a commit of the offsets the batch started from (moving nothing forward) under this
        member's generation. While the coordinator cannot be reached the check is retried, for at most
        ``delivery_timeout_s``.
        """
        assert self._consumer is not None
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in started_from.items()}
        deadline = time.monotonic() + self.settings.delivery_timeout_s
        for attempt in itertools.count():
            if not set(started_from) <= self._consumer.assignment():
                return "its partitions were reassigned while it was processed"
            try:
                await asyncio.wait_for(self._consumer.commit(offsets), BROKER_REQUEST_TIMEOUT_S)
                return None
            except (CommitFailedError, IllegalStateError) as exc:
                return f"the consumer group no longer counts this worker as their owner ({exc})"
            except (KafkaError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise WorkerFailed(
                        f"could not confirm partition ownership with the group coordinator for "
                        f"{self.settings.delivery_timeout_s:.0f} s ({type(exc).__name__}: {exc})"
                    ) from exc
                self.health.problem("delivery", f"group coordinator unreachable: {type(exc).__name__}")
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return "the worker is stopping"
        raise AssertionError("unreachable")

    async def _send(self, message: OutgoingMessage) -> asyncio.Future:
        assert self._producer is not None
        return await self._producer.send(
            message.topic,
            value=message.value,
            key=message.key,
            partition=message.partition,
            headers=message.headers or None,
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                self._consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}),
                BROKER_REQUEST_TIMEOUT_S,
            )
            self._committed.update(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced after the output went out; the new owner skips the events state already holds.
            log.warning("offset commit failed (%s); events will be redelivered", exc)
        except (KafkaError, TimeoutError) as exc:
            # Commits are cumulative: the next batch's commit covers these offsets.
            log.warning("offset commit failed (%s: %s); the next batch's commit will cover it", type(exc).__name__, exc)
        if self.metrics:
            self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - started)

    # --- consumer lag ---------------------------------------------------------------------------------------
    async def _record_lag_until(self, stop: asyncio.Event) -> None:
        """Lag per assigned partition, every second, whatever the batches are doing: the log end (the larger of the
        fetch high watermark and ListOffsets, which the embedded broker answers a little short) minus the committed
        offset. A worker stalled on a batch shows its lag growing, not a stale zero."""
        while not stop.is_set():
            try:
                await self._record_lag()
                self.health.resolved("broker")
            except (KafkaError, TimeoutError) as exc:
                self.health.problem("broker", f"cannot reach Kafka at {self.settings.bootstrap_servers} ({exc!r})")
            except IllegalStateError:
                pass  # a partition was revoked meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_INTERVAL_S)

    async def _record_lag(self) -> None:
        consumer = self._consumer
        if self.metrics is None or consumer is None:
            return
        assignment = [tp for tp in consumer.assignment() if tp.topic == self.settings.events_topic]
        if not assignment:
            return
        now = time.monotonic()
        if now - self._end_offsets_at > END_OFFSETS_INTERVAL_S:
            self._end_offsets_at = now
            self._end_offsets.update(await asyncio.wait_for(consumer.end_offsets(assignment), END_OFFSETS_INTERVAL_S))
        for tp in assignment:
            if tp not in self._committed:
                committed = await asyncio.wait_for(consumer.committed(tp), BROKER_REQUEST_TIMEOUT_S)
                if committed is None:
                    beginning = await asyncio.wait_for(consumer.beginning_offsets([tp]), BROKER_REQUEST_TIMEOUT_S)
                    committed = beginning[tp]
                self._committed[tp] = committed
            end = max(consumer.highwater(tp) or 0, self._end_offsets.get(tp, 0))
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - self._committed[tp]))

    def forget_lag(self, revoked: list[TopicPartition]) -> None:
        """Drop the lag series of partitions this worker no longer owns: their new owner reports them."""
        for tp in revoked:
            self._committed.pop(tp, None)
            self._end_offsets.pop(tp, None)
            if self.metrics:
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
