"""Scenario *fuzz*: a stream where most messages are malformed, each in a known way, mixed with valid events.

Every message is generated with the dead-letter reason the event contract (README, "Event contract") gives for it,
or none for a valid event. After one worker has read them all, the bench counts the events topic, the dead-letter
topic and the worker's counters, and checks each dead letter's ``streamrec.reason`` header against the reason
expected for the message its ``streamrec.source`` header points to.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from _reliability_common import Answers, Launcher, Model, ScenarioFailed, Topics, by_label, produce, read_topic, value

PARTITIONS = 4
VALID_USERS = 500


@dataclass(frozen=True)
class FuzzMessage:
    key: bytes | None
    value: bytes | None
    kind: str
    reason: str | None  # the dead-letter reason the contract gives; None for a valid event
    user: str | None = None  # a valid event's user id, as the worker reads it
    event_id: str | None = None


class Generator:
    """Builds one message of each kind; ``rng`` makes the whole stream reproducible from a seed."""

    def __init__(self, rng: random.Random, items: list[str], now: float) -> None:
        self.rng, self.items, self.now = rng, items, now
        self.n = 0

    def body(self) -> dict[str, Any]:
        """A valid event of a known user and item, up to an hour old."""
        self.n += 1
        return {
            "event_id": f"fz-{self.n}",
            "user_id": f"fz-u{self.rng.randrange(VALID_USERS)}",
            "item_id": self.rng.choice(self.items),
            "event_type": self.rng.choice(["view", "view", "view", "click", "cart", "buy"]),
            "ts": round(self.now - self.rng.uniform(0, 3600), 3),
            "session_id": f"s-{self.rng.randrange(1000)}",
        }

    def keyed(self, body: dict[str, Any], kind: str, reason: str | None) -> FuzzMessage:
        user = str(body["user_id"])
        valid = reason is None
        return FuzzMessage(
            user.encode(),
            orjson.dumps(body),
            kind,
            reason,
            user if valid else None,
            body["event_id"] if valid else None,
        )

    def raw(self, value: bytes | None, kind: str, reason: str, key: bytes | None = b"fz-raw") -> FuzzMessage:
        return FuzzMessage(key, value, kind, reason)

    # --- malformed, each with its contract reason ---------------------------------------------------------
    def random_bytes(self) -> FuzzMessage:
        # A first byte of 0x80+ can start neither JSON nor UTF-8 text: never a valid document by chance.
        size = self.rng.randint(1, 300)
        return self.raw(
            bytes([self.rng.randint(0x80, 0xFF)]) + self.rng.randbytes(size - 1), "random bytes", "not_json"
        )

    def truncated_json(self) -> FuzzMessage:
        whole = orjson.dumps(self.body())
        return self.raw(whole[: self.rng.randint(1, len(whole) - 1)], "truncated JSON", "not_json")

    def invalid_utf8(self) -> FuzzMessage:
        body = orjson.dumps(self.body())
        return self.raw(
            body.replace(b'"user_id":"', b'"user_id":"\xff\xfe', 1), "invalid UTF-8 in a string", "not_json"
        )

    def trailing_garbage(self) -> FuzzMessage:
        tail = self.rng.choice([b"garbage", b"}", b"{}", b"\x00"])
        return self.raw(orjson.dumps(self.body()) + tail, "JSON followed by garbage", "not_json")

    def deep_nesting(self) -> FuzzMessage:
        depth = self.rng.randint(1100, 4000)  # orjson stops at a depth of 1024
        return self.raw(b"[" * depth + b"]" * depth, "nesting deeper than the parser allows", "not_json")

    def infinite_number(self) -> FuzzMessage:
        body = orjson.dumps(self.body()).replace(b'"ts":', b'"ts":1e400,"was":', 1)
        return self.raw(body, "number overflowing a double", "not_json")

    def non_object(self) -> FuzzMessage:
        value = self.rng.choice(
            [b"[1,2,3]", b'"an event"', b"42", b"null", b"true", b"[]", orjson.dumps([self.body()])]
        )
        return self.raw(value, "JSON that is not an object", "not_an_object")

    def empty_value(self) -> FuzzMessage:
        return self.raw(b"", "empty value", "empty_payload")

    def null_value(self) -> FuzzMessage:
        return self.raw(None, "null value (a tombstone)", "empty_payload")

    def oversized(self) -> FuzzMessage:
        body = self.body()
        body["pad"] = "x" * self.rng.randint(16_400, 40_000)  # over max_payload_bytes (16 KiB)
        return self.raw(orjson.dumps(body), "oversized payload", "payload_too_large", key=body["user_id"].encode())

    def missing_field(self) -> FuzzMessage:
        body = self.body()
        name = self.rng.choice(["user_id", "item_id", "event_type", "ts"])
        if self.rng.random() < 0.3:
            body[name] = None  # null counts as missing
        else:
            del body[name]
        return self.raw(orjson.dumps(body), "missing field", "missing_field", key=b"fz-u1")

    def wrong_type(self) -> FuzzMessage:
        body = self.body()
        name = self.rng.choice(["user_id", "item_id", "event_id", "session_id", "context"])
        if name == "context":
            body[name] = self.rng.choice(["mobile", [1, 2], 3])
        else:
            body[name] = self.rng.choice([[1], {"id": 1}, 1.5, True, False])
        key = body["user_id"].encode() if isinstance(body["user_id"], str) else b"fz-u1"
        return self.raw(orjson.dumps(body), "wrong type", "invalid_type", key=key)

    def huge_number_id(self) -> FuzzMessage:
        body = orjson.dumps(self.body())
        user = body.split(b'"user_id":', 1)[1].split(b",", 1)[0]
        number = b"1" + b"0" * self.rng.randint(20, 300)  # beyond 64 bits: the parser reads a float
        return self.raw(body.replace(user, number, 1), "user id a number beyond 64 bits", "invalid_type", key=number)

    def empty_id(self) -> FuzzMessage:
        body = self.body()
        name = self.rng.choice(["user_id", "item_id"])
        body[name] = self.rng.choice(["", "   ", "\t"])
        return self.raw(orjson.dumps(body), "empty id", "empty_id", key=str(body["user_id"]).encode())

    def huge_id(self) -> FuzzMessage:
        body = self.body()
        name = self.rng.choice(["user_id", "item_id", "event_id"])
        body[name] = "h" * self.rng.randint(257, 5000)  # over max_id_length (256)
        return self.raw(orjson.dumps(body), "id over 256 characters", "id_too_long", key=body["user_id"].encode())

    def control_characters(self) -> FuzzMessage:
        body = self.body()
        name = self.rng.choice(["user_id", "item_id"])
        bad = self.rng.choice(["\x00", "\x1b[31m", "\u202e", "\u200b", "\ufeff", "\x7f", "\u2028", "\n"])
        # Inside the id: the validator strips surrounding whitespace first, and "\n" or "\u2028" count as such.
        at = self.rng.randint(1, len(body[name]) - 1)
        body[name] = body[name][:at] + bad + body[name][at:]
        return self.raw(
            orjson.dumps(body),
            "control or format character in an id",
            "invalid_characters",
            key=body["user_id"].encode(),
        )

    def unknown_event_type(self) -> FuzzMessage:
        body = self.body()
        body["event_type"] = self.rng.choice(["purchase", "VIEW", "", "like", 3, ["view"]])
        return self.raw(orjson.dumps(body), "unknown event type", "unknown_event_type", key=body["user_id"].encode())

    def bad_timestamp(self) -> FuzzMessage:
        body = self.body()
        body["ts"] = self.rng.choice(["yesterday", "2026-13-45T00:00:00", "", True, [1], {"s": 1}, "1e9"])
        return self.raw(orjson.dumps(body), "unreadable timestamp", "invalid_timestamp", key=body["user_id"].encode())

    def timestamp_out_of_range(self) -> FuzzMessage:
        body = self.body()
        body["ts"] = self.rng.choice([-1, 0, 946_684_799, self.now + 10 * 86_400, "1999-12-31T23:59:59", 1e15])
        return self.raw(
            orjson.dumps(body),
            "timestamp before 2000 or days ahead",
            "timestamp_out_of_range",
            body["user_id"].encode(),
        )

    def key_mismatch(self) -> FuzzMessage:
        return self.raw(orjson.dumps(self.body()), "key is another user", "key_mismatch", key=b"someone-else")

    def unknown_command(self) -> FuzzMessage:
        user = f"fz-u{self.rng.randrange(VALID_USERS)}"
        value = orjson.dumps({"command": self.rng.choice(["explode", "FORGET", ""]), "user_id": user})
        return self.raw(value, "unknown command", "unknown_command", key=user.encode())

    def command_key_mismatch(self) -> FuzzMessage:
        # A `forget` keyed by another user must not erase anyone: it may not reach the user's partition.
        user = f"fz-u{self.rng.randrange(VALID_USERS)}"
        value = orjson.dumps({"command": "forget", "user_id": user})
        return self.raw(value, "forget command keyed by another user", "key_mismatch", key=b"someone-else")

    # --- valid variants -----------------------------------------------------------------------------------
    def valid(self) -> FuzzMessage:
        return self.keyed(self.body(), "valid event", None)

    def valid_integer_ids(self) -> FuzzMessage:
        body = self.body()
        body["user_id"] = 10_000 + self.rng.randrange(VALID_USERS)  # integer ids are read as strings
        body["item_id"] = self.rng.randrange(1000)
        return self.keyed(body, "valid: integer ids", None)

    def valid_iso_timestamp(self) -> FuzzMessage:
        body = self.body()
        body["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(body["ts"]))
        return self.keyed(body, "valid: ISO-8601 time", None)

    def valid_without_key(self) -> FuzzMessage:
        body = self.body()
        body["user_id"] = f"fz-nokey-{self.n}"  # unkeyed: its own user, as its partition is the client's choice
        return FuzzMessage(None, orjson.dumps(body), "valid: no key", None, body["user_id"], body["event_id"])

    def valid_extra_fields(self) -> FuzzMessage:
        body = self.body()
        body.update(context={"device": "tv", "tenant": "t1"}, referrer="https://example.com/?q=é", price=9.99)
        body["item_id"] = self.rng.choice([body["item_id"], f"new-item-{self.rng.randrange(50)}"])  # unknown item
        return self.keyed(body, "valid: extra fields, unknown item", None)

    def valid_u64_id(self) -> FuzzMessage:
        body = self.body()
        body["user_id"] = 18_446_744_073_709_551_615  # the largest integer the parser keeps exact
        return self.keyed(body, "valid: 64-bit integer user id", None)


MALFORMED: list[Callable[[Generator], FuzzMessage]] = [
    Generator.random_bytes,
    Generator.truncated_json,
    Generator.invalid_utf8,
    Generator.trailing_garbage,
    Generator.deep_nesting,
    Generator.infinite_number,
    Generator.non_object,
    Generator.empty_value,
    Generator.null_value,
    Generator.oversized,
    Generator.missing_field,
    Generator.wrong_type,
    Generator.huge_number_id,
    Generator.empty_id,
    Generator.huge_id,
    Generator.control_characters,
    Generator.unknown_event_type,
    Generator.bad_timestamp,
    Generator.timestamp_out_of_range,
    Generator.key_mismatch,
    Generator.unknown_command,
    Generator.command_key_mismatch,
]
VALID: list[tuple[Callable[[Generator], FuzzMessage], float]] = [
    (Generator.valid, 0.75),
    (Generator.valid_integer_ids, 0.05),
    (Generator.valid_iso_timestamp, 0.05),
    (Generator.valid_without_key, 0.05),
    (Generator.valid_extra_fields, 0.05),
    (Generator.valid_u64_id, 0.05),
]


def generate(n: int, malformed_share: float, items: list[str], seed: int = 5) -> list[FuzzMessage]:
    rng = random.Random(seed)
    gen = Generator(rng, items, time.time())
    builders, weights = zip(*VALID, strict=True)
    out = []
    for _ in range(n):
        if rng.random() < malformed_share:
            out.append(rng.choice(MALFORMED)(gen))
        else:
            out.append(rng.choices(builders, weights)[0](gen))
    return out


def run(
    broker: str, bootstrap: str, launcher: Launcher, model: Model, n: int, malformed_share: float
) -> dict[str, Any]:
    messages = generate(n, malformed_share, model.item_ids)
    topics = Topics.fresh(f"fuzz-{broker}")
    topics.create(bootstrap, PARTITIONS)
    # Preloaded, so that the worker reads the stream as one backlog, batches mixing good and bad messages.
    metadata = produce(bootstrap, topics.events, [(m.key, m.value) for m in messages], max_request_size=4 << 20)
    expected_at = {(md.partition, md.offset): m for md, m in zip(metadata, messages, strict=True)}
    worker = launcher.start(f"fuzz-{broker}", bootstrap, topics, PARTITIONS)
    answers = Answers(bootstrap, topics.recommendations)
    try:
        worker.wait_ready()
        seconds = wait_consumed(worker, n, timeout_s=180)
        last_event = {m.user: m.event_id for m in messages if m.reason is None}
        unanswered = answers.wait_for(last_event.values(), timeout_s=60)
        samples = worker.scrape()
        alive, ready = worker.alive(), worker.readiness()
        exit_code, _ = worker.terminate()
    finally:
        answers.close()
    dead_letters = read_topic(bootstrap, topics.dead_letters)
    events_in_topic = len(read_topic(bootstrap, topics.events))
    return {
        "broker": broker,
        "sent": n,
        "sent_valid": sum(1 for m in messages if m.reason is None),
        "sent_malformed": sum(1 for m in messages if m.reason is not None),
        "kinds": dict(Counter(m.kind for m in messages)),
        "events_topic_records": events_in_topic,
        "dead_letter_records": len(dead_letters),
        "metrics": {
            "messages_consumed": value(samples, "streamrec_messages_consumed_total"),
            "events_consumed": sum(by_label(samples, "streamrec_events_consumed_total", "event_type").values()),
            "events_invalid": {
                r: c for r, c in by_label(samples, "streamrec_events_invalid_total", "reason").items() if c
            },
        },
        "check": check_dead_letters(dead_letters, expected_at, topics.events),
        "seconds_to_consume_all": round(seconds, 2),
        "valid_users": len(last_event),
        "valid_users_unanswered": len(unanswered),
        "worker_alive": alive,
        "readyz": ready,
        "exit_code": exit_code,
    }


def wait_consumed(worker: Any, n: int, timeout_s: float) -> float:
    """Seconds from the worker's readiness until its consumed counter reaches ``n``."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            raise ScenarioFailed(f"the worker died during the fuzz stream: {worker.last_line()}")
        if worker.metric("streamrec_messages_consumed_total") >= n:
            return time.monotonic() - started
        time.sleep(0.2)
    raise ScenarioFailed(f"the worker consumed fewer than {n} messages within {timeout_s:.0f} s")


def check_dead_letters(records: list[Any], expected_at: dict[tuple[int, int], FuzzMessage], topic: str) -> dict:
    """Match every dead letter to its source message and compare reasons; count what is missing or extra."""
    seen: Counter[tuple[int, int]] = Counter()
    wrong_reason: Counter[str] = Counter()
    valid_dead_lettered = unknown_source = 0
    by_reason: Counter[str] = Counter()
    for record in records:
        headers = {k: v for k, v in record.headers or []}
        reason = headers.get("streamrec.reason", b"").decode()
        by_reason[reason] += 1
        source = headers.get("streamrec.source", b"").decode().rsplit("/", 2)
        position = (int(source[1]), int(source[2])) if len(source) == 3 and source[0] == topic else None
        message = expected_at.get(position) if position else None
        if message is None:
            unknown_source += 1
            continue
        seen[position] += 1
        if message.reason is None:
            valid_dead_lettered += 1
        elif message.reason != reason:
            wrong_reason[f"{message.kind}: expected {message.reason}, got {reason}"] += 1
    malformed = [p for p, m in expected_at.items() if m.reason is not None]
    expected_by_reason = Counter(m.reason for m in expected_at.values() if m.reason is not None)
    return {
        "malformed_not_dead_lettered": sum(1 for p in malformed if not seen[p]),
        "dead_lettered_with_wrong_reason": sum(wrong_reason.values()),
        "wrong_reason_examples": dict(wrong_reason.most_common(5)),
        "valid_dead_lettered": valid_dead_lettered,
        "dead_lettered_twice": sum(1 for c in seen.values() if c > 1),
        "dead_letters_without_source": unknown_source,
        "expected_by_reason": dict(sorted(expected_by_reason.items())),
        "dead_letters_by_reason": dict(sorted(by_reason.items())),
    }
