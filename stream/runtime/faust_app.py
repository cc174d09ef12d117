"""The faust-streaming runtime: the same :class:`~streamrec.stream.pipeline.Pipeline`, driven by a faust agent.

Faust brings agents, rebalancing and offset management, at a per-event cost measured in ``bench/`` to be many
times that of the bare aiokafka loop, which is why ``kafka`` is the default runtime. Choose ``faust`` to embed
streamrec in an existing faust application.

Design choices:

* The agent consumes micro-batches with ``take_events`` and acknowledges them only after every message the
  batch produced is acknowledged by the broker, so faust commits offsets at least once.
* User state is not a faust ``Table``: it uses streamrec's own changelog topic, restored in the
  ``on_partitions_assigned`` signal (faust table recovery trusts ListOffsets, which the embedded broker answers
  wrongly, losing the last update of a partition). Both runtimes therefore share one state format.
* ``processing_guarantee`` stays at-least-once; redelivered events are not applied twice to user state.
* Delivery retries, dead-letter references and failures are shared with the default runtime
  (``stream/runtime/base.py``). What this runtime lacks is the default runtime's fencing of a paused worker
  (faust commits offsets itself, so the worker cannot confirm ownership before publishing): after a pause past the
  session timeout it may publish one stale batch. Restores keep the newest state of each user, so state never goes
  backwards on the next assignment.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator

import faust
from faust.types import TP

from streamrec.stream.events import SourceRecord
from streamrec.stream.health import Health
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.results import OutgoingMessage
from streamrec.stream.runtime.base import BatchRuntime, WorkerFailed
from streamrec.stream.runtime.security import faust_credentials
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)


class FaustWorker(BatchRuntime):
    """Runs the pipeline as a faust agent inside the caller's event loop."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics | None = None, health: Health | None = None
    ) -> None:
        super().__init__(settings, pipeline, metrics, health)
        # faust makes a data directory for local tables, by default in the working directory; streamrec keeps no
        # faust table, so the directory is private and removed when the worker stops.
        self._datadir = tempfile.TemporaryDirectory(prefix="streamrec-faust-")
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        settings = self.settings
        app = faust.App(
            settings.consumer_group,
            broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=False,
            web_bind="127.0.0.1",
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.heartbeat_interval_s,
            broker_max_poll_interval=settings.max_poll_interval_s,
            broker_max_poll_records=settings.batch_max_events,
            consumer_auto_offset_reset=settings.auto_offset_reset,
            producer_linger=settings.producer_linger_ms / 1000,
            producer_acks=-1,
            topic_partitions=settings.topic_partitions,
            topic_allow_declare=False,  # streamrec.topics creates the topics with the right configs
            stream_buffer_maxsize=max(4096, 2 * settings.batch_max_events),
            # faust would wait on stop and on rebalance for every event taken to be acknowledged, forever for a batch
            # that is never acknowledged; the revocation handler waits for the batch in flight itself.
            stream_wait_empty=False,
            broker_credentials=faust_credentials(settings),
            datadir=self._datadir.name,
        )
        events = app.topic(settings.events_topic, key_type=bytes, value_type=bytes, allow_empty=True)
        app.agent(events, name=f"{settings.consumer_group}-pipeline")(self._agent)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        return app

    async def _on_assigned(self, sender: object, assigned: set[TP], **_: object) -> None:
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.settings.events_topic)
        assert self._stop is not None
        await self.assigned(partitions, self._stop)

    async def _on_revoked(self, sender: object, revoked: set[TP], **_: object) -> None:
        await self.revoked([tp.partition for tp in revoked if tp.topic == self.settings.events_topic])

    async def _agent(self, stream: faust.StreamT) -> AsyncIterator[None]:
        within = max(self.settings.batch_max_wait_ms, 1) / 1000
        async for events in stream.take_events(self.settings.batch_max_events, within=within):
            received_at = time.time()
            records = [
                SourceRecord(
                    value=event.message.value,
                    key=event.message.key,
                    partition=event.message.partition,
                    offset=event.message.offset,
                    received_at=received_at,
                    topic=event.message.topic,
                )
                for event in events
            ]
            delivered = False
            async with self.batch_lock:
                unrestored = self.unrestored({record.partition for record in records})
                if unrestored:
                    self.fail(WorkerFailed(f"events of partitions {sorted(unrestored)} arrived before their state"))
                if self.failure is None:
                    result = await asyncio.to_thread(self.pipeline.process, records)
                    try:
                        delivered = await self.deliver(result, self._send, self._stop or asyncio.Event())
                    except WorkerFailed as exc:
                        self.fail(exc)
                if delivered and self.failure is None:
                    self.batches_processed += 1
            if not delivered or self.failure is not None:
                # The worker is stopping or has failed (and stops): never acknowledge these events, so they stay
                # uncommitted and are redelivered. Parked outside the batch lock, so a revocation is not held up;
                # the app's stop cancels this agent (stream_wait_empty is off: no waiting for these acks).
                await asyncio.Event().wait()
            yield None  # faust acknowledges the batch, and later commits it, once the agent asks for the next

    async def _send(self, message: OutgoingMessage) -> asyncio.Future:
        return await self.app.producer.send(
            message.topic,
            message.key,
            message.value,
            message.partition,
            timestamp=None,
            headers=message.headers or None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Start the faust app in the running loop and stop it when ``stop`` is set.

        The app is started directly, not through ``mode.Worker``: a Worker's ``start()`` only returns once it is
        stopped (``daemon=True``), and it replaces the caller's SIGTERM/SIGINT handlers with its own, so ``stop``
        was never set and the process did not exit on SIGTERM. ``app.start()`` returns once the first partition
        assignment is done, so it is raced against ``stop``.
        """
        self._stop = stop
        starting = asyncio.ensure_future(self.app.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raise if the app failed to start
                await stop.wait()
        finally:
            stopping.cancel()
            if not starting.done():
                starting.cancel()
            # Bounded: faust's stop flushes the producer, which waits without end for output the broker cannot
            # take (a deleted topic, a broker gone); those events were never acknowledged and are redelivered.
            bound = self.settings.shutdown_timeout_s / 3
            try:
                await asyncio.wait_for(self.app.stop(), bound)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("faust did not stop within %.1f s; leaving its clients", bound)
            self._datadir.cleanup()
