"""Producing to and reading from the real broker in tests, with kafka-python, every loop bounded in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def produce(
    bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], **producer_options: Any
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, **producer_options)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def event_message(user: str, item: str, kind: str, event_id: str, ts: float | None = None) -> tuple[bytes, bytes]:
    body = {"event_id": event_id, "user_id": user, "item_id": item, "event_type": kind, "ts": ts or time.time()}
    return user.encode(), orjson.dumps(body)


class TopicReader:
    """Reads a whole topic from the beginning, keeping every record seen so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 30
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            raise TimeoutError(f"topic {topic} never appeared")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def wait_for(self, predicate: Callable[[ConsumerRecord], bool], timeout_s: float = 30.0) -> ConsumerRecord:
        deadline = time.monotonic() + timeout_s
        checked = 0
        while True:
            for record in self.records[checked:]:
                if predicate(record):
                    return record
            checked = len(self.records)
            if time.monotonic() > deadline:
                break
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)  # keep the whole batch: later waits may look for its other records
        seen = [(r.key, r.value[:120]) for r in self.records[-5:]]
        raise TimeoutError(f"no matching record on {self.topic} within {timeout_s} s; last seen: {seen}")

    def wait_for_count(self, count: int, timeout_s: float = 30.0) -> list[ConsumerRecord]:
        deadline = time.monotonic() + timeout_s
        while len(self.records) < count and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(batch)
        if len(self.records) < count:
            raise TimeoutError(f"{len(self.records)} of {count} records on {self.topic} within {timeout_s} s")
        return self.records

    def close(self) -> None:
        self.consumer.close()


def recommendation_for(event_id: str) -> Callable[[ConsumerRecord], bool]:
    return lambda record: record.value is not None and orjson.loads(record.value)["trigger"]["event_id"] == event_id
