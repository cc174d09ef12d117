"""Scenario *crash*: a shop's event stream replayed while the worker is SIGKILLed mid-stream and restarted.

Two runs on fresh topics of the same broker get the same events in the same order: a clean run (events preloaded,
one worker) and a run whose worker is killed ``kills`` times while the events are sent at a steady rate, a new
worker being started at once each time (what a supervisor does). Afterwards every user's state is read back from
the changelog with ``restore_partitions`` (``streamrec.stream.runtime.changelog``), as the next worker would
restore it, and compared.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from _reliability_common import (
    SHOP_ITEMS,
    Answers,
    Launcher,
    Message,
    Model,
    PacedProducer,
    ScenarioFailed,
    TopicReader,
    Topics,
    Worker,
    produce,
    read_topic,
    restored_states,
    wait_until,
)

PARTITIONS = 4
#: The fields of a user's state that depend only on the events applied: what must not change with a crash.
#: (``shown`` and exposure depend on how events were batched, which a crash changes by design.)
COMPARED_FIELDS = ("n_events", "recent", "bought", "vector", "vector_ts")


@dataclass(frozen=True)
class CrashConfig:
    users: int
    events: int
    kills: int
    stream_s: float  # how long the killed run's events take to send
    seed: int = 23


@dataclass(frozen=True)
class ShopStream:
    messages: list[Message]
    last_event: dict[str, str]  # user -> event id of their last event
    sent: Counter[str]  # user -> events sent


def shop_stream(config: CrashConfig) -> ShopStream:
    """A simulated shop's events (the model's items, their own event times), keyed by user."""
    from streamrec.stream.app.simulate import simulate_shop

    events, _catalog = simulate_shop(config.users, SHOP_ITEMS, config.events, config.seed)
    messages: list[Message] = []
    last_event: dict[str, str] = {}
    sent: Counter[str] = Counter()
    for event in events:
        body = event.to_json_dict()
        body["event_id"] = f"crash-{event.event_id}"
        messages.append((event.user_id.encode(), orjson.dumps(body)))
        last_event[event.user_id] = body["event_id"]
        sent[event.user_id] += 1
    return ShopStream(messages, last_event, sent)


def run(broker: str, bootstrap: str, launcher: Launcher, model: Model, config: CrashConfig) -> dict[str, Any]:
    stream = shop_stream(config)
    clean = clean_run(broker, bootstrap, launcher, stream)
    killed = killed_run(broker, bootstrap, launcher, stream, config)
    same_input = clean.pop("input_order") == killed.pop("input_order")
    states_clean, states_killed = clean.pop("states"), killed.pop("states")
    clean["n_events_wrong"] = wrong_counts(states_clean, stream.sent)
    killed["n_events_wrong"] = wrong_counts(states_killed, stream.sent)
    return {
        "broker": broker,
        "users": len(stream.last_event),
        "events": len(stream.messages),
        "same_input_order": same_input,
        "clean": clean,
        "killed": killed,
        "comparison": compare_states(states_clean, states_killed),
        "model": model.version,
    }


def clean_run(broker: str, bootstrap: str, launcher: Launcher, stream: ShopStream) -> dict[str, Any]:
    """The reference: every event preloaded, one worker that is never disturbed."""
    topics = Topics.fresh(f"crash-clean-{broker}")
    topics.create(bootstrap, PARTITIONS)
    produce(bootstrap, topics.events, stream.messages)
    started = time.monotonic()
    worker = launcher.start(f"crash-clean-{broker}", bootstrap, topics, PARTITIONS)
    answers = Answers(bootstrap, topics.recommendations)
    try:
        worker.wait_ready()
        unanswered = answers.wait_for(stream.last_event.values(), timeout_s=120)
        seconds = time.monotonic() - started
        code, _ = worker.terminate()
    finally:
        answers.close()
    return {
        "unanswered_users": len(unanswered),
        "seconds": round(seconds, 1),
        "exit_code": code,
        "states": restored_states(bootstrap, topics.state, PARTITIONS),
        "input_order": input_order(bootstrap, topics.events),
    }


class CommitWindow:
    """Tells, while the worker is frozen, whether the broker holds state it wrote for events whose input offsets
    are not committed yet: a kill then forces the next worker to reprocess events its users' states already hold.

    It reads the changelog to its end (every record carries the input offset of the last event it applied) and the
    group's committed offsets; a partition whose latest state record is at or past its committed offset is exposed.
    """

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.state = TopicReader(bootstrap, topics.state)
        self.applied: dict[int, int] = {}  # partition -> highest input offset applied in a state record
        self._seen = 0  # state records folded into `applied`
        # A consumer of the workers' group that never subscribes: it only reads the group's committed offsets.
        self.offsets = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False)
        self.inputs = [TopicPartition(topics.events, p) for p in range(PARTITIONS)]

    def exposed_events(self) -> int:
        """Events applied to written state beyond the committed offsets, summed over partitions."""
        self.state.read_to_end(timeout_s=10)
        for record in self.state.records[self._seen :]:
            if record.value is not None:
                self.applied[record.partition] = max(
                    self.applied.get(record.partition, -1), orjson.loads(record.value)["last_offset"]
                )
        self._seen = len(self.state.records)
        exposed = 0
        for tp in self.inputs:
            committed = self.offsets.committed(tp) or 0
            exposed += max(0, self.applied.get(tp.partition, -1) + 1 - committed)
        return exposed

    def close(self) -> None:
        self.state.close()
        self.offsets.close()


def kill_in_commit_window(worker: Worker, window: CommitWindow, timeout_s: float = 20.0) -> dict[str, Any]:
    """SIGKILL the worker at a moment when its written state is ahead of its committed offsets.

    Freeze it (SIGSTOP), look; if the moment is not exposed, thaw it (SIGCONT) and look again a few milliseconds
    later. Freezes last a few tens of milliseconds, far below the session timeout. After ``timeout_s`` it is killed
    wherever it is, and the report says so."""
    rng = random.Random(len(worker.name))
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        attempts += 1
        worker.process.send_signal(signal.SIGSTOP)
        time.sleep(0.03)  # requests already on the wire reach the broker
        exposed = window.exposed_events()
        if exposed or time.monotonic() > deadline:
            worker.kill()
            return {"attempts": attempts, "exposed_events": exposed}
        worker.process.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.05))


def killed_run(
    broker: str, bootstrap: str, launcher: Launcher, stream: ShopStream, config: CrashConfig
) -> dict[str, Any]:
    """The same events sent at a steady rate; the worker is SIGKILLed ``kills`` times and replaced at once.

    The stream starts with the first worker, so every incarnation (the first while it loads its model, the others
    while they restart) finds a backlog. Each is killed once it has processed something, at a moment when the
    broker holds state it wrote for events whose offsets are not committed (:func:`kill_in_commit_window`): the
    moment where an at-least-once worker could lose or double-count a batch."""
    topics = Topics.fresh(f"crash-killed-{broker}")
    topics.create(bootstrap, PARTITIONS)
    n = len(stream.messages)
    answers = Answers(bootstrap, topics.recommendations)
    producer = PacedProducer(bootstrap, topics.events, stream.messages, rate=n / config.stream_s)
    kills: list[dict[str, Any]] = []
    window = CommitWindow(bootstrap, topics)
    try:
        worker = launcher.start(f"crash-{broker}-0", bootstrap, topics, PARTITIONS)
        producer.start()
        for k in range(config.kills):
            worker.wait_ready(timeout_s=90)
            restored = worker.metric("streamrec_users_restored_total")
            if not wait_until(lambda w=worker: consumed(w) > 0, timeout_s=60, interval_s=0.02):
                raise ScenarioFailed(f"worker {worker.name} processed nothing within 60 s")
            at_event, streaming = producer.sent, producer.is_alive()
            kill = kill_in_commit_window(worker, window)
            killed_at = time.monotonic()
            kills.append(
                {
                    "at_event": at_event,
                    "stream_still_running": streaming,
                    "users_restored_by_killed_worker": int(restored),
                    **kill,
                }
            )
            worker = launcher.start(f"crash-{broker}-{k + 1}", bootstrap, topics, PARTITIONS)
            kills[-1]["kill_to_ready_s"] = round(worker.wait_ready(timeout_s=90) + worker.started_at - killed_at, 2)
        last_restored = int(worker.metric("streamrec_users_restored_total"))
        producer.join(timeout=config.stream_s + 120)
        if producer.error is not None:
            raise ScenarioFailed(f"producing the stream failed: {producer.error!r}")
        unanswered = answers.wait_for(stream.last_event.values(), timeout_s=120)
        answers.update(500)
        code, _ = worker.terminate()
    finally:
        producer.halt.set()
        answers.close()
        window.close()
    return {
        "kills": kills,
        "users_restored_by_last_worker": last_restored,
        "unanswered_users": len(unanswered),
        "events_answered_more_than_once": sum(1 for c in answers.count.values() if c > 1),
        "state_records_for_already_applied_events": repeated_positions(read_topic(bootstrap, topics.state)),
        "final_exit_code": code,
        "states": restored_states(bootstrap, topics.state, PARTITIONS),
        "input_order": input_order(bootstrap, topics.events),
    }


def repeated_positions(records: list[Any]) -> int:
    """Changelog records that do not advance their user's input position: written for a batch redelivered after
    a kill whose events that user's state had already applied (and skipped). Without redelivery every record of a
    user moves ``last_offset`` forward."""
    from streamrec.stream.user_state import decode_state

    highest: dict[str, int] = {}
    repeated = 0
    for record in records:
        if record.value is None:
            continue
        state = decode_state(record.value, 50)
        if state.last_offset <= highest.get(state.user_id, -1):
            repeated += 1
        highest[state.user_id] = max(highest.get(state.user_id, -1), state.last_offset)
    return repeated


def consumed(worker: Any) -> float:
    try:
        return worker.metric("streamrec_messages_consumed_total")
    except OSError:
        return 0.0


def input_order(bootstrap: str, topic: str) -> dict[int, list[str]]:
    """Event ids per partition in offset order: both runs must have fed the workers the same sequence."""
    order: dict[int, list[str]] = {}
    for record in read_topic(bootstrap, topic):
        order.setdefault(record.partition, []).append(orjson.loads(record.value)["event_id"])
    return order


def compare_states(clean: dict[str, Any], killed: dict[str, Any]) -> dict[str, Any]:
    """Users whose deterministic state differs between the runs, by field, and the largest vector difference."""
    users = set(clean) | set(killed)
    by_field: Counter[str] = Counter()
    differing: list[str] = []
    max_vector_diff = 0.0
    for user in sorted(users):
        a, b = clean.get(user), killed.get(user)
        if a is None or b is None:
            by_field["missing"] += 1
            differing.append(user)
            continue
        fields = [name for name in COMPARED_FIELDS if not same_field(getattr(a, name), getattr(b, name))]
        if a.vector is not None and b.vector is not None and a.vector.shape == b.vector.shape:
            max_vector_diff = max(max_vector_diff, float(np.max(np.abs(a.vector - b.vector))))
        by_field.update(fields)
        if fields:
            differing.append(user)
    return {
        "users_compared": len(users),
        "users_differing": len(differing),
        "differing_by_field": dict(by_field),
        "examples": differing[:5],
        "max_abs_vector_difference": max_vector_diff,
    }


def same_field(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):  # purchases: an insertion-ordered set, order included
        return list(a.items()) == list(b.items())
    if isinstance(a, deque | list) and isinstance(b, deque | list):
        return [tuple_of(x) for x in a] == [tuple_of(x) for x in b]
    return a == b


def tuple_of(item: Any) -> Any:
    """A recent item as a plain tuple (its dataclass has slots, so compare field by field)."""
    if hasattr(item, "item_id"):
        return (item.item_id, item.event_type, item.ts)
    return item


def wrong_counts(states: dict[str, Any], sent: Counter[str]) -> int:
    """Users whose restored ``n_events`` is not the number of events they sent (lost or counted twice)."""
    return sum(1 for user, count in sent.items() if user not in states or states[user].n_events != count)
