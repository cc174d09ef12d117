"""Restoring user state from the changelog topic when a worker is assigned input partitions.

The restore reads each changelog partition from the beginning up to the high watermark reported in fetch
responses. ListOffsets (``end_offsets``) is not used: the embedded test broker answers it wrongly when the last
batch holds several records, and the fetch high watermark is what Kafka clients trust for lag anyway.

A restore either completes or fails loudly (:class:`RestoreFailed`), never half-way: a worker that served a
partition with empty state would also write those empty states back and make the loss permanent. What is skipped
is one unreadable record at a time (counted): that user rebuilds from their next events.

Of the records of one user, the one that applied the latest input event wins, not the last one written: a worker
that resumed from a long pause may have written a stale state after the partition's new owner wrote a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streamrec.stream.errors import StreamrecError
from streamrec.stream.runtime.security import aiokafka_options
from streamrec.stream.settings import Settings
from streamrec.stream.user_state import StateRecordError, UserState, decode_state

if TYPE_CHECKING:
    from streamrec.stream.pipeline import Pipeline

log = logging.getLogger(__name__)

RESTORE_FETCH_RECORDS = 10_000


class RestoreFailed(StreamrecError):
    """The state of assigned partitions could not be restored completely."""


@dataclass
class RestoredPartitions:
    """The latest state of every user of each restored partition, and how many records could not be read."""

    users: dict[int, list[UserState]] = field(default_factory=dict)
    skipped_records: int = 0


async def restore_partitions(
    bootstrap_servers: str,
    topic: str,
    partitions: list[int],
    max_recent_items: int,
    timeout_s: float = 120.0,
    stop: asyncio.Event | None = None,
    client_options: dict[str, Any] | None = None,
) -> RestoredPartitions:
    """Read ``partitions`` of the changelog ``topic`` to their end; raises :class:`RestoreFailed` if the topic or a
    partition is missing, the broker does not answer, or ``timeout_s`` passes. Returns early (partly read) only
    when ``stop`` is set: the caller must not serve what it got then."""
    restored = RestoredPartitions(users={p: [] for p in partitions})
    if not partitions:
        return restored
    latest: dict[int, dict[str, UserState]] = {p: {} for p in partitions}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        client_id="streamrec-restore",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **(client_options or {}),
    )
    deadline = time.monotonic() + timeout_s
    try:
        await asyncio.wait_for(consumer.start(), timeout=max(1.0, deadline - time.monotonic()))
        tps = await _existing_partitions(consumer, topic, partitions, deadline)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        pending = set(tps)
        while pending and not (stop is not None and stop.is_set()):
            if time.monotonic() > deadline:
                raise RestoreFailed(
                    f"restoring user state from {topic} partitions {sorted(tp.partition for tp in pending)} "
                    f"took over {timeout_s:.0f} s (restore_timeout_s)"
                )
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=RESTORE_FETCH_RECORDS)
            for tp, records in batches.items():
                for record in records:
                    if not _apply(latest[tp.partition], record, max_recent_items):
                        restored.skipped_records += 1
                        log.warning(
                            "skipped an unreadable state record at %s/%d@%d", topic, tp.partition, record.offset
                        )
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
    except KafkaError as exc:
        raise RestoreFailed(f"restoring user state from {topic} failed: {type(exc).__name__}: {exc}") from exc
    except TimeoutError as exc:
        raise RestoreFailed(f"restoring user state from {topic}: the broker did not answer in time") from exc
    finally:
        await consumer.stop()
    restored.users = {p: list(users.values()) for p, users in latest.items()}
    return restored


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    """The partitions of ``topic`` according to the broker now, or None if it does not exist.

    ``consumer.partitions_for_topic`` only knows topics the client already tracks, and Apache Kafka answers a
    metadata request for no topics with none (the embedded broker answers with all), so the cluster's full
    metadata is fetched instead.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return cluster.partitions_for_topic(topic)


async def _existing_partitions(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int], deadline: float
) -> list[TopicPartition]:
    """The changelog partitions to read, checked against the broker's metadata first: assigning a partition that
    does not exist would make the restore wait for data that can never come."""
    existing = await asyncio.wait_for(topic_partitions(consumer, topic), timeout=max(1.0, deadline - time.monotonic()))
    if existing is None:
        raise RestoreFailed(
            f"the state topic {topic} does not exist (a broker that lost its data?); restart the worker to "
            "recreate it, or create it with as many partitions as the events topic"
        )
    missing = sorted(set(partitions) - existing)
    if missing:
        raise RestoreFailed(
            f"the state topic {topic} has no partition {missing[0]} (it has {len(existing)}); it needs as many "
            "partitions as the events topic"
        )
    return [TopicPartition(topic, p) for p in partitions]


def _apply(users: dict[str, UserState], record: Any, max_recent_items: int) -> bool:
    """Fold one changelog record into ``users``; False for a record that cannot be read."""
    if record.key is None:
        return False
    if record.value is None:  # a tombstone: the user was forgotten (or evicted)
        users.pop(record.key.decode("utf-8", "replace"), None)
        return True
    try:
        state = decode_state(record.value, max_recent_items)
    except StateRecordError:
        return False
    held = users.get(state.user_id)
    if held is None or state.last_offset >= held.last_offset:
        users[state.user_id] = state
    return True


async def restore_assigned(
    settings: Settings, pipeline: Pipeline, partitions: list[int], stop: asyncio.Event | None = None
) -> None:
    """Restore the users of newly assigned input partitions into ``pipeline`` (partitions it holds are kept).

    Raises :class:`RestoreFailed`; if ``stop`` is set meanwhile, restores nothing.
    """
    started = time.monotonic()
    held = set(pipeline.store.partitions())
    restored = await restore_partitions(
        settings.bootstrap_servers,
        settings.state_topic,
        [p for p in partitions if p not in held],
        settings.max_recent_items,
        timeout_s=settings.restore_timeout_s,
        stop=stop,
        client_options=aiokafka_options(settings),
    )
    if stop is not None and stop.is_set():
        return
    for partition, states in restored.users.items():
        pipeline.restore_state(partition, states)
    pipeline.metrics.assigned_partitions.set(len(partitions))
    pipeline.metrics.state_records_skipped.inc(restored.skipped_records)
    log.info(
        "partitions assigned: %s; restored %d users in %.2f s%s",
        sorted(partitions),
        sum(len(states) for states in restored.users.values()),
        time.monotonic() - started,
        f" ({restored.skipped_records} unreadable state records skipped)" if restored.skipped_records else "",
    )
