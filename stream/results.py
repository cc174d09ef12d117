"""What a batch produces: typed messages for the runtime to send, and the bookkeeping it needs afterwards.

Nothing here knows Kafka: a runtime turns an :class:`OutgoingMessage` into a produce request. Dead letters carry
their reason and their source in headers (the README's event contract lists them).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamrec.stream.events import SourceRecord
from streamrec.stream.rejection import InvalidEvent

REASON_HEADER = "streamrec.reason"
DETAIL_HEADER = "streamrec.detail"
SOURCE_HEADER = "streamrec.source"
TRUNCATED_HEADER = "streamrec.truncated"
ORIGINAL_SIZE_HEADER = "streamrec.original_size"
MAX_DEAD_LETTER_KEY_BYTES = 1_024  # keys are user ids (at most max_id_length characters) in every valid message


if TYPE_CHECKING:
    from streamrec.stream.online_eval import OnlineTally


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message for the runtime to produce. ``partition`` None lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PublishedRecommendation:
    """Bookkeeping for the latency metrics, resolved once the broker acknowledges the message."""

    kind: str
    event_ts: float
    received_at: float
    variant: str = "default"


@dataclass
class BatchResult:
    """Everything a runtime must do after a batch: send ``messages``, then commit ``next_offsets``."""

    recommendations: list[OutgoingMessage]
    dead_letters: list[OutgoingMessage]
    state_updates: list[OutgoingMessage]
    published: list[PublishedRecommendation]
    next_offsets: dict[int, int]  # input partition -> offset to commit (last processed + 1)
    stage_seconds: dict[str, float]
    forgotten: list[str] = field(default_factory=list)  # users erased by a `forget` command in this batch
    shared: list[OutgoingMessage] = field(default_factory=list)  # this batch's additions to the shared aggregates
    online: OnlineTally | None = None  # the online evaluation's counts: recorded once the batch is delivered

    @property
    def messages(self) -> list[OutgoingMessage]:
        return [*self.recommendations, *self.dead_letters, *self.state_updates, *self.shared]


def dead_letter(record: SourceRecord, rejection: InvalidEvent, topic: str, max_bytes: int) -> OutgoingMessage:
    """The rejected message with its reason. A payload over ``max_bytes`` is cut, so that no input the broker
    accepted can make a dead letter too large to deliver and stall its partition."""
    headers = [
        (REASON_HEADER, rejection.reason.encode()),
        (DETAIL_HEADER, rejection.detail.encode("utf-8", "replace")[:1000]),
        (SOURCE_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode()),
    ]
    key, value = record.key, record.value
    if value is not None and len(value) > max_bytes:
        headers += [(TRUNCATED_HEADER, b"value"), (ORIGINAL_SIZE_HEADER, str(len(value)).encode())]
        value = value[:max_bytes]
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
        headers.append((TRUNCATED_HEADER, b"key"))
        key = key[:MAX_DEAD_LETTER_KEY_BYTES]
    return OutgoingMessage(topic, key, value, headers=headers)


class StageClock:
    """Seconds spent in each named stage of one batch (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
