"""Replay an event file into Kafka as a live stream: the load generator of the demo, benchmarks and tests.

JSONL lines go out as they are, *unvalidated*: malformed lines must reach the topic so that the worker's
dead-letter path is exercised by the same files. Other formats (Beauty, Taobao, Diginetica) are loaded with
:func:`streamrec.stream.app.event_files.load_events` and sent as contract JSON.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from tqdm import tqdm

from streamrec.model.datasets import detect_format
from streamrec.stream.app.event_files import load_events
from streamrec.stream.errors import StreamrecError
from streamrec.stream.settings import Settings

log = logging.getLogger(__name__)

MIN_SLEEP_S = 0.002
"""Sleeps shorter than this are skipped and the debt carried forward: at 50,000 events/s a sleep per event would
cost more than the send itself, and the OS cannot sleep that briefly anyway."""


def open_messages(path: Path) -> tuple[Iterator[bytes], int]:
    """The message values to send, in file order, and how many there are (at most, for JSONL).

    JSONL lines are yielded raw (trailing newline removed), valid or not; only blank lines are dropped, since
    they are file layout rather than messages. Any other format is converted event by event to contract JSON.
    """
    if detect_format(path) == "jsonl":
        return _raw_lines(path), _count_lines(path)
    events = load_events(path)
    return (orjson.dumps(event.to_json_dict()) for event in events.events()), len(events)


def _raw_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        for line in handle:
            value = line.rstrip(b"\r\n")
            if value.strip():
                yield value


def message_key(obj: Any) -> bytes | None:
    """The partitioning key: the user id, so one user's events stay ordered on one partition.

    ``None`` (round-robin) for anything without a usable ``user_id``; such a message is headed for the dead
    letters anyway.
    """
    if not isinstance(obj, dict):
        return None
    user_id = obj.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, str | int):
        return None
    return str(user_id).encode()


def is_retimable(ts: Any, min_ts: float) -> bool:
    """Whether a ``ts`` is a plausible event time that retiming may move to now.

    Values the worker would reject - wrong type, not finite, not ISO-8601, or older than ``min_ts`` (deliberate
    out-of-range test cases) - are left alone, so retiming never turns a bad event into a good one.
    """
    if isinstance(ts, bool):
        return False
    if isinstance(ts, int | float):
        return math.isfinite(ts) and ts >= min_ts
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts).timestamp() >= min_ts
        except (ValueError, OverflowError, OSError):
            return False
    return False


def prepare_message(line: bytes, retime: bool, now: float, min_ts: float) -> tuple[bytes | None, bytes]:
    """``(key, value)`` for one line. With ``retime``, a valid ``ts`` becomes ``now`` so that event-time
    latency measures the pipeline rather than the age of the data set; everything else in the line is kept."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, line
    key = message_key(obj)
    if retime and isinstance(obj, dict) and is_retimable(obj.get("ts"), min_ts):
        obj["ts"] = now
        return key, orjson.dumps(obj)
    return key, line


def pacing_delay(sent: int, rate: float | None, elapsed: float) -> float:
    """Seconds to sleep so that ``sent`` messages after ``elapsed`` seconds keep to ``rate`` per second.

    The schedule is absolute (message ``n`` is due at ``n / rate``), a token bucket whose burst is
    :data:`MIN_SLEEP_S` worth of messages: short stalls are caught up and no drift accumulates.
    """
    if rate is None or rate <= 0:
        return 0.0
    ahead = sent / rate - elapsed
    return ahead if ahead >= MIN_SLEEP_S else 0.0


def _count_lines(path: Path) -> int:
    """Lines in a file, for the progress bar's total; counting newlines in 1 MiB blocks takes milliseconds."""
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class _DeliveringProducer:
    """Sends to one topic; on leaving the ``with`` block, waits for every acknowledgement and raises
    :class:`~streamrec.stream.errors.StreamrecError` if any message was not delivered (kafka-python reports failures on
    futures, not by raising).

    The producer waits for every in-sync replica: a message is delivered or reported, never lost.
    """

    def __init__(self, bootstrap: str, topic: str, what: str, client_options: Mapping[str, Any] | None = None) -> None:
        self.topic, self.what = topic, what
        self.sent = 0
        self._failures = 0
        self._first_failure: BaseException | None = None
        self._producer = KafkaProducer(
            bootstrap_servers=[server.strip() for server in bootstrap.split(",") if server.strip()],
            linger_ms=5,
            acks="all",
            **(client_options or {}),
        )

    def send(self, key: bytes | None, value: bytes) -> None:
        self._producer.send(self.topic, key=key, value=value).add_errback(self._failed)
        self.sent += 1

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._first_failure is None:
            self._first_failure = exc

    def __enter__(self) -> _DeliveringProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self._producer.flush()
        finally:
            self._producer.close()
        if exc_type is None and self._failures:
            raise StreamrecError(
                f"{self._failures} of {self.sent} {self.what} were not delivered to topic {self.topic!r}: "
                f"{self._first_failure!r}; check that the topic exists and the broker accepts this client"
            )


def replay(
    events_path: Path,
    bootstrap: str,
    topic: str = "events",
    rate: float | None = None,
    retime: bool = True,
    limit: int | None = None,
    progress: bool = True,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Send the events of ``events_path`` to ``topic``; returns how many were sent.

    ``rate`` caps events per second (``None``: as fast as the producer goes); ``limit`` stops after that many
    messages; ``client_options`` are extra kafka-python producer arguments, such as the TLS and SASL ones of
    :func:`streamrec.stream.runtime.security.kafka_python_options`. Raises ``StreamrecError`` if any message was not
    acknowledged by the brokers.
    """
    events_path = Path(events_path)
    if not events_path.is_file():
        raise ValueError(f"event file not found: {events_path}")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    min_ts = Settings().min_event_ts
    messages, total = open_messages(events_path)
    if limit is not None:
        messages = islice(messages, limit)
        total = min(total, limit)

    with (
        _DeliveringProducer(bootstrap, topic, "messages", client_options) as producer,
        tqdm(total=total, unit="ev", disable=not progress, desc=f"replay -> {topic}") as bar,
    ):
        started = time.monotonic()
        for line in messages:
            delay = pacing_delay(producer.sent, rate, time.monotonic() - started)
            if delay:
                time.sleep(delay)
            producer.send(*prepare_message(line, retime, time.time(), min_ts))
            bar.update(1)
    log.info("replayed %d events from %s to %s", producer.sent, events_path, topic)
    return producer.sent


def publish_catalog(
    catalog_path: Path, bootstrap: str, topic: str = "items", client_options: Mapping[str, Any] | None = None
) -> int:
    """Send catalog records (JSONL, one item per line) to the compacted catalog topic keyed by item id;
    ``client_options`` as for :func:`replay`."""
    catalog_path = Path(catalog_path)
    if not catalog_path.is_file():
        raise ValueError(f"catalog file not found: {catalog_path}")
    with _DeliveringProducer(bootstrap, topic, "catalog records", client_options) as producer:
        for line in _raw_lines(catalog_path):
            try:
                item_id = orjson.loads(line).get("item_id")
            except (orjson.JSONDecodeError, AttributeError):
                item_id = None
            producer.send(None if item_id is None or isinstance(item_id, bool) else str(item_id).encode(), line)
    log.info("published %d catalog records from %s to %s", producer.sent, catalog_path, topic)
    return producer.sent


def read_catalog_jsonl(path: Path) -> list[dict[str, Any]]:
    """Catalog records of a JSONL file (for training's content projection)."""
    return [record for line in _raw_lines(Path(path)) if isinstance(record := orjson.loads(line), dict)]
