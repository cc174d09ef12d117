"""Scenario *pause*: two workers share a group on Apache Kafka; one is frozen (SIGSTOP) for four session timeouts
while events keep coming, then thawed (SIGCONT), a few times over (where the freeze lands in the worker's batch
cycle is chance, and each landing spot tests something else).

The frozen worker is expelled from the group; its partitions move to the other worker, which restores their users
from the changelog. On waking, the frozen worker still holds a batch it fetched before the pause: it must drop it
("fencing", ``stream/runtime/kafka_loop.py``) rather than publish state older than what the new owner wrote.
Measured: users whose restored state lacks events, changelog records that went backwards, and the batches the
frozen worker dropped.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from typing import Any

from _reliability_common import (
    SESSION_TIMEOUT_S,
    Answers,
    Launcher,
    Model,
    ScenarioFailed,
    Topics,
    Worker,
    event_message,
    new_producer,
    read_topic,
    restored_states,
    wait_until,
)

PARTITIONS = 4
FENCED_LINE = "not publishing a batch"
REFUSED_COMMIT = "offset commit failed (CommitFailedError"
_ASSIGNED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*partitions assigned: \[([\d, ]*)\]")


class SteadyProducer(threading.Thread):
    """Batches of 50 events over ``users``, one every 50 ms, each flushed before it is counted as sent."""

    def __init__(self, bootstrap: str, topic: str, users: list[str], items: list[str]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.users, self.items = bootstrap, topic, users, items
        self.sent: Counter[str] = Counter()
        self.last_event: dict[str, str] = {}
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = new_producer(self.bootstrap)
        n = 0
        try:
            while not self.halt.is_set():
                batch = []
                for _ in range(50):
                    user = self.users[n % len(self.users)]
                    batch.append(
                        (
                            user,
                            f"{user}-{n}",
                            event_message(f"{user}-{n}", user, self.items[n % 200], "view", time.time()),
                        )
                    )
                    n += 1
                for _user, _event_id, (key, value) in batch:
                    producer.send(self.topic, key=key, value=value)
                producer.flush(timeout=60)
                for user, event_id, _message in batch:
                    self.sent[user] += 1
                    self.last_event[user] = event_id
                time.sleep(0.05)
        except BaseException as exc:  # checked by the scenario after join()
            self.error = exc
        finally:
            producer.close(timeout=10)


def run(
    bootstrap: str, launcher: Launcher, model: Model, users: int, pauses: int, before_s: float, after_s: float
) -> dict[str, Any]:
    pause_s = 4 * SESSION_TIMEOUT_S
    topics = Topics.fresh("pause")
    topics.create(bootstrap, PARTITIONS)
    paused = launcher.start("pause-paused", bootstrap, topics, PARTITIONS)
    other = launcher.start("pause-other", bootstrap, topics, PARTITIONS)
    paused.wait_ready()
    other.wait_ready()
    names = [f"pause-{n}" for n in range(users)]
    producer = SteadyProducer(bootstrap, topics.events, names, model.item_ids)
    answers = Answers(bootstrap, topics.recommendations)
    cycles: list[dict[str, Any]] = []
    try:
        producer.start()
        for _ in range(pauses):
            time.sleep(before_s)
            cycles.append(pause_once(paused, other, pause_s))
        time.sleep(after_s)
        producer.halt.set()
        producer.join(timeout=60)
        if producer.error is not None:
            raise ScenarioFailed(f"producing failed: {producer.error!r}")
        unanswered = answers.wait_for(producer.last_event.values(), timeout_s=120)
        fenced_metric = paused.metric("streamrec_batches_fenced_total")
        codes = {"paused": paused.terminate()[0], "other": other.terminate()[0]}
    finally:
        producer.halt.set()
        answers.close()
    fenced_lines = sum(1 for line in paused.log_lines() if FENCED_LINE in line)
    # A batch that passed its ownership check just before a freeze is delivered on waking; only its offset commit
    # is then refused, and the worker logs it.
    refused_commits = sum(1 for line in paused.log_lines() if REFUSED_COMMIT in line)
    states = restored_states(bootstrap, topics.state, PARTITIONS)
    lacking = {u: n - states[u].n_events for u, n in producer.sent.items() if u not in states or states[u].n_events < n}
    doubled = sum(1 for u, n in producer.sent.items() if u in states and states[u].n_events > n)
    backwards = backwards_records(read_topic(bootstrap, topics.state), cycles)
    return {
        "users": users,
        "events_sent": sum(producer.sent.values()),
        "pauses": pauses,
        "pause_s": pause_s,
        "session_timeout_s": SESSION_TIMEOUT_S,
        "cycles": cycles,
        "users_lacking_events": len(lacking),
        "events_lacking": sum(lacking.values()),
        "users_counted_twice": doubled,
        "users_unanswered": len(unanswered),
        "changelog": backwards,
        "batches_fenced_metric": fenced_metric,
        "fenced_log_lines": fenced_lines,
        "published_then_commit_refused_log_lines": refused_commits,
        "exit_codes": codes,
    }


def pause_once(paused: Worker, other: Worker, pause_s: float) -> dict[str, Any]:
    """Freeze ``paused`` for ``pause_s`` once it serves partitions again; what it held and how soon they moved."""
    if not wait_until(lambda: paused.readiness() == 200 and paused.metric("streamrec_assigned_partitions") > 0, 60):
        raise ScenarioFailed("the paused worker did not get partitions back within 60 s")
    held = last_assignment(paused)
    stopped_at, stopped_wall = time.monotonic(), time.time()
    paused.process.send_signal(signal.SIGSTOP)
    takeover_s = wait_takeover(other, stopped_at + pause_s)
    time.sleep(max(0.0, stopped_at + pause_s - time.monotonic()))
    paused.process.send_signal(signal.SIGCONT)
    return {"held_partitions": held, "stopped_wall": stopped_wall, "other_served_all_after_s": takeover_s}


def wait_takeover(other: Worker, deadline: float) -> float | None:
    """Seconds from the freeze until the other worker owns every partition (its gauge), or None by ``deadline``."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            if other.metric("streamrec_assigned_partitions") >= PARTITIONS and other.readiness() == 200:
                return round(time.monotonic() - started, 2)
        except OSError:
            pass
        time.sleep(0.2)
    return None


def assignments(worker: Worker) -> list[tuple[float, list[int]]]:
    """(wall time, partitions) of each "partitions assigned" line of the worker's log."""
    out = []
    for line in worker.log_lines():
        match = _ASSIGNED.match(line)
        if match:
            at = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
            out.append((at, [int(p) for p in match[3].split(",") if p.strip()]))
    return out


def last_assignment(worker: Worker) -> list[int]:
    history = assignments(worker)
    return history[-1][1] if history else []


def backwards_records(records: list[Any], cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """Changelog records whose ``last_offset`` is lower than an earlier record of the same user (in the partition's
    order), and what compaction would keep.

    A record carries no writer id; it is attributed to the paused worker when it was created (its CreateTime,
    set when the worker handed it to its producer) before the freeze, on a partition that worker held, yet appended
    after a record created more than a session timeout after the freeze: only a frozen process holds a record back
    that long. Compaction keeps each user's last record by position, not the one with the highest ``last_offset``
    that a restore reading the whole log picks, so the users whose last record is older than an earlier one are
    the users a compacted changelog would restore without some of their events."""
    from streamrec.stream.user_state import StateRecordError, decode_state

    highest: dict[str, int] = {}
    last: dict[str, int] = {}  # user -> last_offset of their last record (what compaction keeps)
    newest_created: dict[int, int] = {}  # partition -> latest CreateTime appended so far
    total = from_paused = unreadable = 0
    lag: list[float] = []  # how far the backward records fell behind, in input offsets
    for record in records:
        if record.value is None:
            continue
        try:
            state = decode_state(record.value, 50)
        except StateRecordError:
            unreadable += 1
            continue
        previous = highest.get(state.user_id, -1)
        if state.last_offset < previous:
            total += 1
            lag.append(previous - state.last_offset)
            if any(held_back(record, cycle, newest_created) for cycle in cycles):
                from_paused += 1
        highest[state.user_id] = max(previous, state.last_offset)
        last[state.user_id] = state.last_offset
        newest_created[record.partition] = max(newest_created.get(record.partition, 0), record.timestamp)
    return {
        "records": len(records),
        "went_backwards": total,
        "went_backwards_attributed_to_paused_worker": from_paused,
        "max_input_offsets_behind": max(lag, default=0),
        "users_whose_last_record_is_stale": sum(1 for user, offset in last.items() if offset < highest[user]),
        "unreadable": unreadable,
    }


def held_back(record: Any, cycle: dict[str, Any], newest_created: dict[int, int]) -> bool:
    """Created before the freeze on a partition the frozen worker held, appended after a record created once the
    group had expelled it."""
    stopped_ms = cycle["stopped_wall"] * 1000
    expelled_ms = stopped_ms + SESSION_TIMEOUT_S * 1000
    return (
        record.partition in cycle["held_partitions"]
        and record.timestamp < stopped_ms
        and newest_created.get(record.partition, 0) > expelled_ms
    )
