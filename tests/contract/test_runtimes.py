"""The contract both runtimes keep, over a fake consumer and producer (no broker).

A batch's input is acknowledged (the kafka runtime commits its next offsets; faust is asked for the next batch,
which acknowledges and later commits this one) only after the broker acknowledged every message of its output; a
send that fails for a reason retrying can fix is retried until it is acknowledged; a batch whose output cannot be
delivered is never acknowledged, so its events are redelivered after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.health import Health
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.results import OutgoingMessage
from streamrec.stream.runtime.base import WorkerFailed
from streamrec.stream.settings import Settings

TOPIC = "events"
SETTINGS = Settings(events_topic=TOPIC, top_k=5, exploration_share=0.0, delivery_timeout_s=1.5)


@dataclass
class Ledger:
    """What happened, in order: every acknowledged output message and every acknowledgement of input."""

    entries: list[tuple[str, object]] = field(default_factory=list)
    attempts: int = 0

    def acknowledged_outputs(self) -> int:
        return sum(1 for kind, _ in self.entries if kind == "output")

    def input_acknowledged_after_all_output(self, expected_outputs: int) -> bool:
        kinds = [kind for kind, _ in self.entries]
        return "input" in kinds and kinds.index("input") >= expected_outputs == self.acknowledged_outputs()


class FakeBroker:
    """Acknowledges sends, except that ``refuse(message, attempt)`` may fail an attempt (retriably)."""

    def __init__(self, ledger: Ledger, refuse: Callable[[OutgoingMessage, int], bool]) -> None:
        self.ledger, self.refuse = ledger, refuse
        self._attempts: dict[tuple, int] = {}

    async def send(self, message: OutgoingMessage) -> asyncio.Future:
        key = (message.topic, message.key, message.value)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        self.ledger.attempts += 1
        future = asyncio.get_running_loop().create_future()
        if self.refuse(message, attempt):
            future.set_exception(KafkaConnectionError("broker unreachable"))
        else:
            self.ledger.entries.append(("output", message.topic))
            future.set_result(None)
        return future


def _events(artifacts: ModelArtifacts, users: list[str]) -> list[tuple[bytes, bytes, int]]:
    """(key, value, offset) of one view per user, offsets from 10."""
    now = time.time()
    values = [
        {"user_id": user, "item_id": artifacts.item_ids[n], "event_type": "view", "ts": now}
        for n, user in enumerate(users)
    ]
    return [
        (user.encode(), orjson.dumps(value), 10 + n) for n, (user, value) in enumerate(zip(users, values, strict=True))
    ]


class RuntimeContract:
    """Subclasses run one batch through their runtime and say whether its input was acknowledged in time."""

    def run_batch(
        self, artifacts: ModelArtifacts, events: list[tuple[bytes, bytes, int]], broker: FakeBroker, ledger: Ledger
    ) -> None:
        raise NotImplementedError

    def test_input_is_acknowledged_only_after_every_output_message(self, artifacts: ModelArtifacts) -> None:
        ledger = Ledger()
        self.run_batch(
            artifacts, _events(artifacts, ["u1", "u2", "u3"]), FakeBroker(ledger, lambda m, a: False), ledger
        )
        # three recommendations and three state records
        assert ledger.input_acknowledged_after_all_output(6), ledger.entries

    def test_failed_sends_are_retried_until_acknowledged(self, artifacts: ModelArtifacts) -> None:
        ledger = Ledger()
        broker = FakeBroker(ledger, lambda message, attempt: message.topic == "recommendations" and attempt < 2)
        self.run_batch(artifacts, _events(artifacts, ["u1", "u2"]), broker, ledger)
        assert ledger.input_acknowledged_after_all_output(4), ledger.entries
        assert ledger.attempts > 4  # the refused ones were sent again

    def test_a_batch_that_cannot_be_delivered_is_never_acknowledged(self, artifacts: ModelArtifacts) -> None:
        ledger = Ledger()
        broker = FakeBroker(ledger, lambda message, attempt: message.topic == "recommendations")
        self.run_batch(artifacts, _events(artifacts, ["u1"]), broker, ledger)
        assert ("input", True) not in ledger.entries and all(kind != "input" for kind, _ in ledger.entries)


class TestKafkaRuntime(RuntimeContract):
    def run_batch(
        self, artifacts: ModelArtifacts, events: list[tuple[bytes, bytes, int]], broker: FakeBroker, ledger: Ledger
    ) -> None:
        from streamrec.stream.runtime.kafka_loop import KafkaWorker

        tp = TopicPartition(TOPIC, 0)

        @dataclass
        class Message:
            key: bytes
            value: bytes
            offset: int

        class Consumer:
            def assignment(self) -> set[TopicPartition]:
                return {tp}

            async def commit(self, offsets) -> None:
                committed = {t: meta.offset for t, meta in offsets.items()}
                # The batch's start offsets are committed first (the ownership check): not an acknowledgement.
                if committed[tp] > events[0][2]:
                    ledger.entries.append(("input", committed))

        worker = KafkaWorker(SETTINGS, Pipeline(SETTINGS, artifacts), None, Health())
        worker._consumer = Consumer()  # type: ignore[assignment]
        worker._send = broker.send  # type: ignore[method-assign]
        worker._committed, worker._end_offsets, worker._end_offsets_at = {}, {}, 0.0
        worker.restored_partitions = {0}

        async def step() -> None:
            async with worker.batch_lock:
                await worker._process({tp: [Message(k, v, o) for k, v, o in events]}, asyncio.Event())
            await worker.settle()  # the batch's delivery and commit overlap the next poll: wait for them
            if worker.failure is not None:
                raise worker.failure

        with contextlib.suppress(WorkerFailed):  # a batch it gave up on: the worker exits without committing
            asyncio.run(step())


class TestFaustRuntime(RuntimeContract):
    def run_batch(
        self, artifacts: ModelArtifacts, events: list[tuple[bytes, bytes, int]], broker: FakeBroker, ledger: Ledger
    ) -> None:
        pytest.importorskip("faust")
        from streamrec.stream.runtime.faust_app import FaustWorker

        @dataclass
        class FaustMessage:
            key: bytes
            value: bytes
            offset: int
            partition: int = 0
            topic: str = TOPIC

        @dataclass
        class FaustEvent:
            message: FaustMessage

        class Stream:
            async def take_events(self, n: int, within: float):
                yield [FaustEvent(FaustMessage(k, v, o)) for k, v, o in events]
                # faust acknowledges the batch when the agent asks for the next one
                ledger.entries.append(("input", True))
                await asyncio.Event().wait()

        worker = FaustWorker(SETTINGS, Pipeline(SETTINGS, artifacts), None, Health())
        worker._send = broker.send  # type: ignore[method-assign]
        worker.restored_partitions = {0}

        async def step() -> None:
            worker._stop = asyncio.Event()
            agent = worker._agent(Stream())
            await agent.__anext__()  # the batch is processed and delivered, or the agent parks for good
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(agent.__anext__(), 0.5)  # asks for the next batch: the acknowledgement

        try:
            asyncio.run(asyncio.wait_for(step(), SETTINGS.delivery_timeout_s + 3))
        except TimeoutError:
            assert worker.failure is not None  # parked on a batch it could not deliver: never acknowledged
