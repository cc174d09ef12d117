"""What every runtime shares: the pipeline it drives, the batch lock, state restore on assignment, delivery of a
batch's output with bounded retries, and the failures that stop a worker.

Delivery is at-least-once: a runtime commits a batch's input offsets only after :meth:`BatchRuntime.deliver` has
seen every output message acknowledged. Failures are sorted by what can fix them:

* the broker is unreachable or busy (timeouts, leader changes): the messages not yet acknowledged are sent again
  with backoff, readiness is false meanwhile, and after ``delivery_timeout_s`` the worker stops with
  :class:`WorkerFailed` (exit non-zero, offsets uncommitted: the next owner reprocesses the batch);
* the broker refuses one message for good (too large for the topic): it is replaced by a small reference in the
  dead-letter topic, so one message can never stall a partition;
* anything else (not authorised, an unknown error): the worker stops at once with the broker's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import orjson
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from streamrec.stream.errors import StreamrecError
from streamrec.stream.health import Health
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.results import (
    DETAIL_HEADER,
    MAX_DEAD_LETTER_KEY_BYTES,
    ORIGINAL_SIZE_HEADER,
    REASON_HEADER,
    TRUNCATED_HEADER,
    BatchResult,
    OutgoingMessage,
)
from streamrec.stream.runtime.changelog import RestoreFailed, restore_assigned
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
OUTPUT_TOPIC_HEADER = "streamrec.output_topic"
UNDELIVERABLE_REASON = "output_undeliverable"
#: Refusals that concern one message, not the broker: sending it again can never succeed.
MESSAGE_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)

#: Sends one message and returns the future of its acknowledgement (raises if the client refuses it outright).
SendFn = Callable[[OutgoingMessage], Awaitable[asyncio.Future]]


class WorkerFailed(StreamrecError):
    """The worker cannot go on without risking data: it stops, exits non-zero, and its supervisor restarts it."""

    exit_code = 3


class BatchRuntime:
    """Base of the runtimes. ``batch_lock`` is held while a batch is processed, so rebalances and model swaps
    happen between batches, never inside one."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, metrics: WorkerMetrics | None = None, health: Health | None = None
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health or Health()
        self.batch_lock = asyncio.Lock()
        self.batches_processed = 0
        self.failure: WorkerFailed | None = None
        #: Input partitions whose users are restored: only their records may be processed.
        self.restored_partitions: set[int] = set()
        self._stop: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, process and publish until ``stop`` is set or the worker fails (see :attr:`failure`)."""
        raise NotImplementedError

    # --- failures -------------------------------------------------------------------------------------------
    def fail(self, error: WorkerFailed) -> None:
        """Stop the worker because of ``error``; the first failure is the one reported."""
        if self.failure is None:
            self.failure = error
            log.error("stopping: %s", error)
        self.health.problem("failed", str(error))
        if self._stop is not None:
            self._stop.set()

    # --- partitions -----------------------------------------------------------------------------------------
    async def assigned(self, partitions: Sequence[int], stop: asyncio.Event) -> None:
        """Restore the users of newly assigned partitions; a failed restore stops the worker instead of letting it
        serve those users with empty state (and write the empty states back)."""
        async with self.batch_lock:
            try:
                await restore_assigned(self.settings, self.pipeline, list(partitions), stop)
            except RestoreFailed as exc:
                self.fail(WorkerFailed(str(exc)))
                return
            if stop.is_set():
                return
            self.restored_partitions = set(partitions)
            self.health.resolved("starting")
            self.health.resolved("rebalancing")

    async def revoked(self, partitions: Sequence[int]) -> None:
        """Forget the users of revoked partitions, after the batch in flight (their new owner restores them)."""
        self.health.problem("rebalancing", "the consumer group is rebalancing")
        async with self.batch_lock:
            self.restored_partitions -= set(partitions)
            self.pipeline.drop_partitions(list(partitions))

    def unrestored(self, partitions: set[int]) -> set[int]:
        """Those of ``partitions`` whose users are not restored (revoked, or fenced since they were fetched)."""
        return partitions - self.restored_partitions

    def fenced(self, partitions: set[int], reason: str) -> None:
        """The worker lost ``partitions`` while a batch of theirs was in flight: drop the batch's effect on user
        state. The group's next assignment restores them from the changelog, here or on their new owner."""
        log.warning("not publishing a batch of partitions %s: %s", sorted(partitions), reason)
        self.restored_partitions -= partitions
        self.pipeline.drop_partitions(sorted(partitions))
        if self.metrics:
            self.metrics.batches_fenced.inc()

    # --- delivery -------------------------------------------------------------------------------------------
    async def deliver(self, result: BatchResult, send: SendFn, stop: asyncio.Event) -> bool:
        """Send every message of ``result`` until each is acknowledged; False if stopped first.

        Raises :class:`WorkerFailed` when the output cannot be delivered within ``delivery_timeout_s`` or the broker
        refuses it for a reason retrying cannot fix.
        """
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.delivery_timeout_s
        pending: list[OutgoingMessage] = result.messages
        one_by_one: set[int] = set()  # ids of messages to send alone: their record batch was refused as too large
        references: set[int] = set()  # ids of the dead-letter references standing in for refused messages
        for attempt in itertools.count():
            sending = asyncio.ensure_future(self._send_once(pending, send, one_by_one))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([sending, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not sending.done():
                sending.cancel()
                return False  # stopping with output unacknowledged: offsets stay uncommitted for redelivery
            failures = sending.result()
            if not failures:
                break
            pending, retry_error = self._after_failures(failures, one_by_one, references)
            if retry_error is None:
                continue  # only replacements and isolated resends: no backoff needed
            if self.metrics:
                self.metrics.delivery_failures.inc()
            if time.monotonic() > deadline:
                raise WorkerFailed(
                    f"could not deliver a batch's output for {self.settings.delivery_timeout_s:.0f} s "
                    f"(last error: {_describe(retry_error)}); its events stay uncommitted and will be reprocessed"
                )
            delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
            self.health.problem("delivery", f"output not acknowledged: {_describe(retry_error)}")
            log.warning(
                "delivering %d output messages failed (%s); retrying in %.1f s", len(pending), retry_error, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return False
        self.health.resolved("delivery")
        if self.metrics:
            self.metrics.stage_seconds.labels("produce").observe(time.perf_counter() - started)
            self.metrics.observe_published(result.published, time.time())
            if result.online is not None:
                result.online.record(self.metrics)
        return True

    async def _send_once(
        self, messages: list[OutgoingMessage], send: SendFn, one_by_one: set[int]
    ) -> list[tuple[OutgoingMessage, BaseException]]:
        """Send ``messages`` and wait for every acknowledgement; the messages that failed, with their errors."""
        failures: list[tuple[OutgoingMessage, BaseException]] = []
        waiting: list[tuple[OutgoingMessage, asyncio.Future]] = []
        for message in messages:
            try:
                future = await send(message)
            except Exception as exc:  # refused before sending: too large for the producer, no metadata in time
                failures.append((message, exc))
                continue
            if id(message) in one_by_one:  # alone in its record batch, so a refusal is its own
                acknowledged = await asyncio.gather(future, return_exceptions=True)
                if isinstance(acknowledged[0], BaseException):
                    failures.append((message, acknowledged[0]))
                continue
            waiting.append((message, future))
        results = await asyncio.gather(*(future for _, future in waiting), return_exceptions=True)
        failures += [
            (message, r) for (message, _), r in zip(waiting, results, strict=True) if isinstance(r, BaseException)
        ]
        return failures

    def _after_failures(
        self, failures: list[tuple[OutgoingMessage, BaseException]], one_by_one: set[int], references: set[int]
    ) -> tuple[list[OutgoingMessage], BaseException | None]:
        """What to send next, and the error to back off for (None when every failure was handled without one)."""
        retry: list[OutgoingMessage] = []
        retry_error: BaseException | None = None
        for message, error in failures:
            if isinstance(error, MESSAGE_REFUSALS):
                if id(message) not in one_by_one and not _refused_by_client(error):
                    # A broker refuses a whole record batch: find out which message it was by sending each alone.
                    one_by_one.add(id(message))
                    retry.append(message)
                elif id(message) in references:
                    raise WorkerFailed(
                        f"the broker refuses even a small reference message on {message.topic}: {_describe(error)}"
                    )
                else:
                    reference = self._reference(message, error)
                    references.add(id(reference))
                    retry.append(reference)
            elif _is_retriable(error):
                retry.append(message)
                retry_error = error
            else:
                raise WorkerFailed(f"cannot deliver output to {message.topic}: {_describe(error)}")
        return retry, retry_error

    def _reference(self, message: OutgoingMessage, error: BaseException) -> OutgoingMessage:
        """A small dead letter standing for ``message``, which the broker will never accept."""
        size = len(message.value or b"")
        log.error("%s refused a %d-byte message (%s); dead-lettering a reference instead", message.topic, size, error)
        if self.metrics:
            self.metrics.outputs_undeliverable.labels(message.topic).inc()
        if message.topic == self.settings.dead_letter_topic:
            # A dead letter already truncated keeps the size of the input it stands for.
            size = next((int(v) for k, v in message.headers if k == ORIGINAL_SIZE_HEADER), size)
            headers = [h for h in message.headers if h[0] not in (TRUNCATED_HEADER, ORIGINAL_SIZE_HEADER)]
        else:
            headers = [
                (REASON_HEADER, UNDELIVERABLE_REASON.encode()),
                (DETAIL_HEADER, _describe(error).encode()[:1000]),
                (OUTPUT_TOPIC_HEADER, message.topic.encode()),
            ]
        headers += [(TRUNCATED_HEADER, b"value"), (ORIGINAL_SIZE_HEADER, str(size).encode())]
        reference = orjson.dumps({"refused_by": message.topic, "size": size, "error": _describe(error)[:500]})
        key = None if message.key is None else message.key[:MAX_DEAD_LETTER_KEY_BYTES]
        return OutgoingMessage(self.settings.dead_letter_topic, key, reference, headers=headers)


def _refused_by_client(error: BaseException) -> bool:
    """The producer checks a message against its own ``max_request_size`` before sending anything."""
    return "maximum request size" in str(error)


def _is_retriable(error: BaseException) -> bool:
    """Whether sending again may succeed: the broker is unreachable, slow or moving partitions."""
    if isinstance(error, KafkaError):
        return error.retriable or isinstance(error, KafkaTimeoutError | KafkaConnectionError)
    return isinstance(error, OSError | TimeoutError | asyncio.TimeoutError)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
