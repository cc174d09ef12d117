"""Reading a time range of a topic, once, from every partition: what ``streamrec report`` and ``streamrec train
--from-topic`` read.

The end of the range is fixed when reading starts (each partition's end offset then, raised once to the high
watermark of the first fetch: a broker whose ListOffsets answer lags, as the embedded one's does, would otherwise
cut the range short), so a busy topic cannot keep the reader going forever; the start is found with the broker's
time index (``offsets_for_times``). Records come
back partition by partition, each with its broker timestamp; callers that need one order sort by their own time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings

POLL_TIMEOUT_MS = 500
#: A range whose partitions make no progress for this long has stalled (a broker gone, a partition offline).
STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TopicRecord:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    partition: int
    offset: int


def read_range(
    settings: Settings,
    topic: str,
    since_s: float | None = None,
    until_s: float | None = None,
    max_records: int | None = None,
) -> Iterator[TopicRecord]:
    """Records of ``topic`` with a broker timestamp in [``since_s``, ``until_s``) (epoch seconds; None: open).

    Raises :class:`StreamrecError` when the topic does not exist or reading stalls for ``STALL_TIMEOUT_S``.
    """
    from kafka import KafkaConsumer, TopicPartition

    from streamrec.stream.runtime.security import kafka_python_options

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        # A start that retention has deleted meanwhile reads from what is left, not from the end.
        auto_offset_reset="earliest",
        request_timeout_ms=30_000,
        **kafka_python_options(settings),
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise StreamrecError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = consumer.end_offsets(assigned)
        starts = consumer.beginning_offsets(assigned)
        if since_s is not None:
            found = consumer.offsets_for_times({tp: int(since_s * 1000) for tp in assigned})
            starts = {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in assigned}
        settled: set[TopicPartition] = set()  # partitions whose end has been checked against a fetch
        if until_s is not None:  # the range ends where the time index says; no later record is read
            found = consumer.offsets_for_times({tp: int(until_s * 1000) for tp in assigned})
            for tp in assigned:
                if found.get(tp) is not None:
                    ends[tp] = min(ends[tp], found[tp].offset)
                    settled.add(tp)
        remaining = {tp for tp in assigned if starts[tp] < ends[tp]}
        for tp in assigned:
            consumer.seek(tp, starts[tp])
        yielded = 0
        last_progress = time.monotonic()
        until_ms = None if until_s is None else int(until_s * 1000)
        while remaining:
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            if batches:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise StreamrecError(
                    f"reading {topic} stalled for {STALL_TIMEOUT_S:.0f} s with "
                    f"{len(remaining)} partition(s) unfinished; is the broker reachable?"
                )
            for tp, records in batches.items():
                if tp not in settled and consumer.highwater(tp) is not None:
                    ends[tp] = max(ends[tp], consumer.highwater(tp))
                    settled.add(tp)
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    if until_ms is None or record.timestamp < until_ms:
                        yield TopicRecord(record.key, record.value, record.timestamp, tp.partition, record.offset)
                        yielded += 1
                        if max_records is not None and yielded >= max_records:
                            return
            for tp in list(remaining):  # also partitions this poll returned nothing from (their end reached)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()


def catalog_from_topic(settings: Settings, max_records: int | None = None) -> list[dict[str, Any]]:
    """The catalog topic's items as they stand now (the latest record per item; removed items left out): what
    training needs to fit the content projection that lets workers embed new items."""
    latest: dict[bytes, dict[str, Any] | None] = {}
    for message in read_range(settings, settings.items_topic, max_records=max_records):
        if message.key is None:
            continue
        if message.value is None:
            latest[message.key] = None
            continue
        try:
            record = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue  # workers skip it too (and count it in streamrec_catalog_rejected_total)
        if isinstance(record, dict) and record.get("item_id"):
            latest[message.key] = record
    return [record for record in latest.values() if record is not None]
