"""The default runtime's batch step over a fake consumer and producer: fencing, unrestored partitions, lag."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry

from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.health import Health
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.runtime.kafka_loop import KafkaWorker
from streamrec.stream.settings import Settings

TOPIC = "events"


@dataclass
class Message:
    key: bytes
    value: bytes
    offset: int


class FakeConsumer:
    def __init__(self, partitions: list[int]) -> None:
        self.assigned = {TopicPartition(TOPIC, p) for p in partitions}
        self.commits: list[dict[TopicPartition, int]] = []
        self.expelled = False
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.highwaters: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets) -> None:
        if self.expelled:
            raise CommitFailedError("the group has already rebalanced")
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    async def end_offsets(self, tps):
        return {tp: self.highwaters.get(tp, 0) - 2 for tp in tps}  # ListOffsets answering short, as Tansu does

    async def committed(self, tp):
        return 3


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic, value=None, key=None, partition=None, headers=None) -> asyncio.Future:
        self.sent.append((topic, key))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _worker(artifacts: ModelArtifacts, partitions: list[int]) -> tuple[KafkaWorker, FakeConsumer, FakeProducer]:
    settings = Settings(events_topic=TOPIC, top_k=5, exploration_share=0.0, delivery_timeout_s=1)
    metrics = WorkerMetrics(CollectorRegistry())
    worker = KafkaWorker(settings, Pipeline(settings, artifacts, metrics), metrics, Health())
    consumer, producer = FakeConsumer(partitions), FakeProducer()
    worker._consumer, worker._producer = consumer, producer  # type: ignore[assignment]
    worker._committed, worker._end_offsets, worker._end_offsets_at = {}, {}, 0.0
    worker.restored_partitions = set(partitions)
    return worker, consumer, producer


def _events(artifacts: ModelArtifacts, users: list[str], first_offset: int) -> list[Message]:
    now = time.time()
    return [
        Message(
            user.encode(),
            orjson.dumps({"user_id": user, "item_id": artifacts.item_ids[n], "event_type": "view", "ts": now}),
            first_offset + n,
        )
        for n, user in enumerate(users)
    ]


def _process(worker: KafkaWorker, fetched) -> None:
    async def step() -> None:
        async with worker.batch_lock:
            await worker._process(fetched, asyncio.Event())
            await worker.settle()

    asyncio.run(step())


def test_an_owned_batch_is_published_then_committed(artifacts: ModelArtifacts) -> None:
    worker, consumer, producer = _worker(artifacts, [0])
    tp = TopicPartition(TOPIC, 0)
    _process(worker, {tp: _events(artifacts, ["u1", "u2"], first_offset=10)})
    assert {topic for topic, _ in producer.sent} == {"recommendations", "streamrec.user-state"}
    # first the ownership check at the batch's start, then the commit past its end
    assert consumer.commits == [{tp: 10}, {tp: 12}]
    assert worker.pipeline.store.get(0, "u1") is not None


def test_a_worker_expelled_from_its_group_publishes_nothing_and_drops_the_batchs_state(
    artifacts: ModelArtifacts,
) -> None:
    worker, consumer, producer = _worker(artifacts, [0, 1])
    earlier = TopicPartition(TOPIC, 1)
    _process(worker, {earlier: _events(artifacts, ["u9"], first_offset=0)})
    producer.sent.clear()
    consumer.expelled = True  # e.g. paused past the session timeout: the coordinator gave its partitions away
    tp = TopicPartition(TOPIC, 0)
    _process(worker, {tp: _events(artifacts, ["u1", "u2"], first_offset=10)})
    assert producer.sent == []
    assert worker.pipeline.store.get(0, "u1") is None  # the new owner holds these users now
    assert 0 not in worker.restored_partitions
    assert worker.metrics.batches_fenced._value.get() == 1
    assert worker.pipeline.store.get(1, "u9") is not None  # untouched partitions wait for the rebalance


def test_a_batch_of_reassigned_partitions_is_not_published(artifacts: ModelArtifacts) -> None:
    worker, consumer, producer = _worker(artifacts, [0])
    tp = TopicPartition(TOPIC, 0)
    consumer.assigned = set()  # revoked while the batch was processed
    _process(worker, {tp: _events(artifacts, ["u1"], first_offset=10)})
    assert producer.sent == [] and consumer.commits == []


def test_records_of_unrestored_partitions_are_put_back_not_processed(artifacts: ModelArtifacts) -> None:
    worker, consumer, _ = _worker(artifacts, [0, 1])
    worker.restored_partitions = {0}
    restored, pending = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    _process(
        worker,
        {restored: _events(artifacts, ["u1"], first_offset=4), pending: _events(artifacts, ["u2"], first_offset=7)},
    )
    assert consumer.seeks == [(pending, 7)]
    assert worker.pipeline.store.get(1, "u2") is None and worker.pipeline.store.get(0, "u1") is not None
    assert consumer.commits[-1] == {restored: 5}


def test_lag_is_the_log_end_minus_the_committed_offset_and_revoked_series_go(artifacts: ModelArtifacts) -> None:
    worker, consumer, _ = _worker(artifacts, [0])
    tp = TopicPartition(TOPIC, 0)
    consumer.highwaters[tp] = 50

    def lag() -> float | None:
        return worker.metrics.registry.get_sample_value(
            "streamrec_consumer_lag_messages", {"topic": TOPIC, "partition": "0"}
        )

    asyncio.run(worker._record_lag())
    assert lag() == 47  # committed 3 (from the group), end 50: no batch needed for the gauge to move
    _process(worker, {tp: _events(artifacts, ["u1"], first_offset=3)})
    asyncio.run(worker._record_lag())
    assert lag() == 46
    worker.forget_lag([tp])
    assert lag() is None


class HeldProducer(FakeProducer):
    """Acknowledges nothing until released, like a broker that is slow to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.unacknowledged: list[asyncio.Future] = []

    async def send(self, topic, value=None, key=None, partition=None, headers=None) -> asyncio.Future:
        self.sent.append((topic, key))
        future = asyncio.get_running_loop().create_future()
        self.unacknowledged.append(future)
        return future

    def acknowledge(self) -> None:
        for future in self.unacknowledged:
            future.set_result(None)
        self.unacknowledged.clear()


def test_the_next_batch_is_processed_while_the_last_is_acknowledged_and_published_after_its_commit(
    artifacts: ModelArtifacts,
) -> None:
    worker, consumer, _ = _worker(artifacts, [0])
    producer = HeldProducer()
    worker._producer = producer  # type: ignore[assignment]
    tp = TopicPartition(TOPIC, 0)

    async def scenario() -> None:
        async with worker.batch_lock:
            await worker._process({tp: _events(artifacts, ["u1"], first_offset=10)}, asyncio.Event())
        await asyncio.sleep(0.01)
        first_batch = len(producer.sent)
        assert first_batch > 0 and consumer.commits == [{tp: 10}]  # published, not acknowledged: not committed

        second = asyncio.create_task(
            worker._process({tp: _events(artifacts, ["u2"], first_offset=11)}, asyncio.Event())
        )
        for _ in range(400):  # bounded: processing runs in a thread
            if worker.pipeline.store.get(0, "u2") is not None:
                break
            await asyncio.sleep(0.025)
        # The second batch is processed (its user's state is there) but waits for the first batch's commit.
        assert worker.pipeline.store.get(0, "u2") is not None
        assert not second.done() and len(producer.sent) == first_batch and consumer.commits == [{tp: 10}]
        producer.acknowledge()
        await asyncio.wait_for(second, 5)
        await asyncio.sleep(0.01)
        assert consumer.commits == [{tp: 10}, {tp: 11}, {tp: 11}]  # first batch committed, then the ownership check
        assert len(producer.sent) > first_batch
        producer.acknowledge()
        await worker.settle()
        assert consumer.commits[-1] == {tp: 12}

    asyncio.run(scenario())
