"""Restoring user state from the changelog topic when a worker is assigned input partitions.

The restore reads each changelog partition from the beginning up to the high watermark reported in fetch
responses. ListOffsets (``end_offsets``) is not used: the embedded test broker answers it wrongly when the last
batch holds several records, and the fetch high watermark is what Kafka clients trust for lag anyway.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.settings import Settings
from stream.user_state import UserState, decode_state

if TYPE_CHECKING:
    from stream.pipeline import Pipeline

log = logging.getLogger(__name__)


async def restore_partitions(
    bootstrap_servers: str,
    topic: str,
    partitions: list[int],
    max_recent_items: int,
    timeout_s: float = 300.0,
) -> dict[int, list[UserState]]:
    """The latest state of every user in each changelog partition (last record per key wins)."""
    if not partitions:
        return {}
    latest: dict[int, dict[str, UserState]] = {p: {} for p in partitions}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        client_id="streamrec-restore",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        pending = set(tps)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {topic} partitions {partitions} took over {timeout_s} s")
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
            for tp, records in batches.items():
                for record in records:
                    if record.value is None:  # a tombstone: the user was deleted
                        latest[tp.partition].pop(record.key.decode(), None)
                        continue
                    try:
                        state = decode_state(record.value, max_recent_items)
                    except (ValueError, KeyError, TypeError):
                        log.warning("skipping unreadable state record %s/%d@%d", topic, tp.partition, record.offset)
                        continue
                    latest[tp.partition][state.user_id] = state
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return {p: list(users.values()) for p, users in latest.items()}


async def restore_assigned(settings: Settings, pipeline: Pipeline, partitions: list[int]) -> None:
    """Restore the users of newly assigned input partitions into ``pipeline`` (partitions it holds are kept)."""
    started = time.monotonic()
    held = set(pipeline.store.partitions())
    restored = await restore_partitions(
        settings.bootstrap_servers,
        settings.state_topic,
        [p for p in partitions if p not in held],
        settings.max_recent_items,
    )
    for partition, states in restored.items():
        pipeline.restore_state(partition, states)
    if pipeline.metrics:
        pipeline.metrics.assigned_partitions.set(len(partitions))
    log.info(
        "partitions assigned: %s; restored %d users in %.2f s",
        sorted(partitions),
        sum(len(states) for states in restored.values()),
        time.monotonic() - started,
    )
