"""Scenario *pill*: one oversized but valid-looking event ahead of 40 users' events on a single partition.

Whatever the worker does with the pill, every later user queues behind it: the measure is how many of them are
answered, how soon, and what the dead-letter topic holds. On the embedded broker the pill is 1.2 MB raw; on Apache
Kafka it is gzip-compressed (over 1 MiB uncompressed, a few KB on the wire) and the dead-letter topic accepts at
most 100 KB, so even the worker's cut-down copy of the pill is refused and must become a small reference.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from _reliability_common import Answers, Launcher, Model, Topics, by_label, event_message, produce, read_topic, value

LATER_USERS = 40
PARTITIONS = 1  # every later user is behind the pill
DEAD_LETTER_LIMIT = 102_400  # the Apache Kafka dead-letter topic's max.message.bytes


def run(broker: str, bootstrap: str, launcher: Launcher, model: Model, compressed: bool) -> dict[str, Any]:
    topics = Topics.fresh(f"pill-{broker}")
    limit = {"max.message.bytes": str(DEAD_LETTER_LIMIT)} if compressed else None
    topics.create(bootstrap, PARTITIONS, dead_letter_config=limit)
    worker = launcher.start(f"pill-{broker}", bootstrap, topics, PARTITIONS)
    answers = Answers(bootstrap, topics.recommendations)
    try:
        worker.wait_ready()
        now = time.time()
        pad = "ab" * 750_000 if compressed else "x" * 1_200_000
        pill = orjson.dumps(
            {"user_id": "pill", "item_id": model.item_ids[0], "event_type": "view", "ts": now, "pad": pad}
        )
        later = [
            event_message(f"pill-later-{n}", f"later-{n}", model.item_ids[n + 1], "view", now)
            for n in range(LATER_USERS)
        ]
        options: dict[str, Any] = {"max_request_size": 4 << 20}
        if compressed:
            options["compression_type"] = "gzip"
        produce(bootstrap, topics.events, [(b"pill", pill), *later], **options)
        produced_at = time.monotonic()
        event_ids = [f"pill-later-{n}" for n in range(LATER_USERS)]
        unanswered = answers.wait_for(event_ids, timeout_s=90)
        answered_at = [answers.first_seen[e] for e in event_ids if e in answers.first_seen]
        samples = worker.scrape()
        alive, ready = worker.alive(), worker.readiness()
        exit_code, _ = worker.terminate()
    finally:
        answers.close()
    dead_letters = read_topic(bootstrap, topics.dead_letters)
    return {
        "broker": broker,
        "pill_bytes": len(pill),
        "compressed": compressed,
        "dead_letter_topic_limit": DEAD_LETTER_LIMIT if compressed else None,
        "later_users": LATER_USERS,
        "later_users_answered": LATER_USERS - len(unanswered),
        "seconds_to_last_answer": round(max(answered_at) - produced_at, 2) if answered_at else None,
        "dead_letters": [describe(record) for record in dead_letters],
        "delivery_failures_total": value(samples, "streamrec_delivery_failures_total"),
        "outputs_undeliverable_total": sum(
            by_label(samples, "streamrec_outputs_undeliverable_total", "topic").values()
        ),
        "events_invalid": {r: c for r, c in by_label(samples, "streamrec_events_invalid_total", "reason").items() if c},
        "worker_alive": alive,
        "readyz": ready,
        "exit_code": exit_code,
    }


def describe(record: Any) -> dict[str, Any]:
    """A dead letter's size and headers (the detail shortened)."""
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or []}
    if "streamrec.detail" in headers:
        headers["streamrec.detail"] = headers["streamrec.detail"][:80]
    return {"value_bytes": len(record.value or b""), "headers": headers}
