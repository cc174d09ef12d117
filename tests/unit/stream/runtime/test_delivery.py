"""Delivering a batch's output (``stream/runtime/base.py``) over a scripted producer: retries, references, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry

from streamrec.stream.health import Health
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.results import ORIGINAL_SIZE_HEADER, REASON_HEADER, TRUNCATED_HEADER, BatchResult, OutgoingMessage
from streamrec.stream.runtime.base import BatchRuntime, WorkerFailed
from streamrec.stream.settings import Settings

SETTINGS = Settings(delivery_timeout_s=0.5)
Verdict = Callable[[OutgoingMessage, int], BaseException | None]


class ScriptedProducer:
    """Acknowledges or fails each message as ``verdict(message, attempt)`` says; records what was delivered."""

    def __init__(self, verdict: Verdict, refuse_before_sending: type[BaseException] | None = None) -> None:
        self.verdict = verdict
        self.attempts: dict[int, int] = {}
        self.delivered: list[OutgoingMessage] = []
        self.refuse_before_sending = refuse_before_sending

    async def send(self, message: OutgoingMessage) -> asyncio.Future:
        attempt = self.attempts.get(id(message), 0)
        self.attempts[id(message)] = attempt + 1
        error = self.verdict(message, attempt)
        if error is not None and isinstance(error, self.refuse_before_sending or ()):
            raise error
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if error is None:
            self.delivered.append(message)
            future.set_result(None)
        else:
            future.set_exception(error)
        return future


def _result(*messages: OutgoingMessage) -> BatchResult:
    return BatchResult(list(messages), [], [], [], {0: 1}, {})


def _runtime(metrics: WorkerMetrics | None = None) -> BatchRuntime:
    return BatchRuntime(SETTINGS, pipeline=None, metrics=metrics, health=Health())  # type: ignore[arg-type]


def _deliver(runtime: BatchRuntime, result: BatchResult, producer: ScriptedProducer, stop: asyncio.Event | None = None):
    return asyncio.run(runtime.deliver(result, producer.send, stop or asyncio.Event()))


def recommendation(key: bytes, size: int = 10) -> OutgoingMessage:
    return OutgoingMessage("recommendations", key, b"x" * size)


def test_transient_failures_are_retried_until_every_message_is_acknowledged() -> None:
    runtime = _runtime(WorkerMetrics(CollectorRegistry()))
    a, b = recommendation(b"a"), recommendation(b"b")
    producer = ScriptedProducer(lambda m, attempt: KafkaConnectionError() if m is b and attempt < 2 else None)
    assert _deliver(runtime, _result(a, b), producer) is True
    assert producer.delivered == [a, b]  # a was not sent again: only what failed is retried
    assert producer.attempts[id(a)] == 1 and producer.attempts[id(b)] == 3
    assert runtime.metrics.delivery_failures._value.get() == 2
    assert runtime.health.problems == ["starting: the worker is starting"]  # the delivery problem was resolved


def test_a_message_the_broker_will_never_take_is_replaced_by_a_reference_in_the_dead_letter_topic() -> None:
    runtime = _runtime()
    big, small = recommendation(b"big", size=5000), recommendation(b"small")
    dead = OutgoingMessage(SETTINGS.dead_letter_topic, b"k", b"y" * 6000, headers=[(REASON_HEADER, b"not_json")])
    # A dead letter the pipeline already truncated from a 9,000-byte input.
    cut = OutgoingMessage(
        SETTINGS.dead_letter_topic,
        b"c",
        b"w" * 3000,
        headers=[(REASON_HEADER, b"payload_too_large"), (TRUNCATED_HEADER, b"value"), (ORIGINAL_SIZE_HEADER, b"9000")],
    )
    # The broker refuses the whole record batch: both messages on the first try, then only the big ones alone.
    producer = ScriptedProducer(
        lambda m, attempt: MessageSizeTooLargeError() if len(m.value or b"") > 1000 or attempt == 0 else None
    )
    assert _deliver(runtime, _result(big, small, dead, cut), producer) is True
    references = [m for m in producer.delivered if m.topic == SETTINGS.dead_letter_topic]
    assert small in producer.delivered and big not in producer.delivered and dead not in producer.delivered
    assert len(references) == 3
    big_ref, dead_ref, cut_ref = (dict(m.headers) for m in references)
    assert big_ref[REASON_HEADER] == b"output_undeliverable" and big_ref["streamrec.output_topic"] == b"recommendations"
    assert big_ref[ORIGINAL_SIZE_HEADER] == b"5000" and big_ref[TRUNCATED_HEADER] == b"value"
    assert dead_ref[REASON_HEADER] == b"not_json" and dead_ref[ORIGINAL_SIZE_HEADER] == b"6000"  # reason kept
    assert cut_ref[ORIGINAL_SIZE_HEADER] == b"9000"  # the input's size, not the truncated copy's
    assert all(len(m.value) < 500 for m in references)


def test_a_message_the_producer_refuses_before_sending_is_replaced_at_once() -> None:
    runtime = _runtime()
    big = OutgoingMessage(SETTINGS.dead_letter_topic, b"k", b"z" * 2000)
    producer = ScriptedProducer(
        lambda m, attempt: (
            MessageSizeTooLargeError("larger than the maximum request size") if len(m.value) > 1000 else None
        ),
        refuse_before_sending=MessageSizeTooLargeError,
    )
    assert _deliver(runtime, _result(big), producer) is True
    assert producer.attempts[id(big)] == 1 and len(producer.delivered) == 1


def test_output_that_keeps_failing_stops_the_worker_after_the_delivery_timeout() -> None:
    runtime = _runtime()
    producer = ScriptedProducer(lambda m, attempt: KafkaTimeoutError())
    with pytest.raises(WorkerFailed, match="could not deliver"):
        _deliver(runtime, _result(recommendation(b"a")), producer)
    assert any(problem.startswith("delivery:") for problem in runtime.health.problems)  # not ready meanwhile


def test_a_refusal_retrying_cannot_fix_stops_the_worker_at_once() -> None:
    producer = ScriptedProducer(lambda m, attempt: TopicAuthorizationFailedError())
    with pytest.raises(WorkerFailed, match="TopicAuthorizationFailedError"):
        _deliver(_runtime(), _result(recommendation(b"a")), producer)
    assert sum(producer.attempts.values()) == 1


def test_a_reference_the_broker_refuses_too_stops_the_worker() -> None:
    producer = ScriptedProducer(lambda m, attempt: MessageSizeTooLargeError("maximum request size"))
    with pytest.raises(WorkerFailed, match="reference"):
        _deliver(_runtime(), _result(recommendation(b"a")), producer)


def test_stopping_during_retries_returns_without_delivering() -> None:
    async def scenario() -> bool:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        producer = ScriptedProducer(lambda m, attempt: KafkaConnectionError())
        runtime = BatchRuntime(Settings(delivery_timeout_s=60), None, None, Health())  # type: ignore[arg-type]
        return await runtime.deliver(_result(recommendation(b"a")), producer.send, stop)

    assert asyncio.run(scenario()) is False
