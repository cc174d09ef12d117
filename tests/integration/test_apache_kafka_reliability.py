"""Where the broker's own semantics matter, on a real Apache Kafka node: a broker restart with durable logs, a
worker paused past its session, a compressed poison pill the broker refuses to dead-letter whole, and erasure
under compaction. Skipped, with the reason, where Java or the Kafka jars are missing (``bash .ci/fetch-kafka.sh``)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka.admin import KafkaAdminClient

from streamrec.stream.app.apache_kafka import ApacheKafka
from streamrec.stream.app.forget import send_forget
from streamrec.stream.runtime.changelog import restore_partitions
from streamrec.stream.settings import Settings
from tests.integration.conftest import TopicNames
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for
from tests.integration.workers import create_topics, launch, wait_until_ready

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _items(trained_artifacts: Path) -> list[str]:
    from streamrec.model.artifacts import load_artifacts

    return load_artifacts(trained_artifacts).item_ids


def _restored_states(bootstrap: str, topic: str) -> dict[str, dict]:
    """Every user's state as a worker restoring the changelog now would see it."""
    restored = asyncio.run(restore_partitions(bootstrap, topic, list(range(PARTITIONS)), 50, timeout_s=60))
    return {state.user_id: state for states in restored.users.values() for state in states}


def test_a_broker_restart_with_durable_logs_loses_nothing_and_needs_no_worker_restart(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    items = _items(trained_artifacts)
    create_topics(kafka.bootstrap, topics, PARTITIONS)
    worker = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "worker.log")
    recommendations = None
    try:
        wait_until_ready(worker)
        now = time.time()
        produce(kafka.bootstrap, topics.events, [event_message("loyal", items[3], "buy", "before", now)])
        recommendations = TopicReader(kafka.bootstrap, topics.recommendations)
        recommendations.wait_for(recommendation_for("before"), timeout_s=60)
        kafka.restart()
        users = [f"after-{n}" for n in range(20)]
        produce(
            kafka.bootstrap,
            topics.events,
            [event_message(u, items[n + 10], "view", u, now + 5) for n, u in enumerate(users)]
            + [event_message("loyal", items[4], "view", "loyal-after", now + 6)],
        )
        for user in users:
            recommendations.wait_for(recommendation_for(user), timeout_s=120)
        after = orjson.loads(recommendations.wait_for(recommendation_for("loyal-after"), timeout_s=60).value)
        assert worker.process.poll() is None  # recovered in place
        wait_until_ready(worker, timeout_s=30)
    finally:
        if recommendations is not None:
            recommendations.close()
        worker.stop()
    assert items[3] not in {item["item_id"] for item in after["items"]}  # the purchase survived with the state


def test_a_worker_paused_past_its_session_loses_no_event_and_never_rewinds_state(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    """A worker stopped past its session timeout (SIGSTOP, a long GC, a VM pause) once published its in-flight
    batch with stale state after its partitions had moved: users lost events for good."""
    items = _items(trained_artifacts)
    create_topics(kafka.bootstrap, topics, PARTITIONS)
    paused = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "paused.log")
    other = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "other.log")
    users = [f"pause-{n}" for n in range(200)]
    sent: Counter[str] = Counter()
    last_event: dict[str, str] = {}
    stop_producing = threading.Event()

    def keep_producing() -> None:
        n = 0
        while not stop_producing.is_set():
            batch = []
            for _ in range(50):
                user = users[n % len(users)]
                batch.append(event_message(user, items[n % 200], "view", f"{user}-{n}", time.time()))
                sent[user] += 1
                last_event[user] = f"{user}-{n}"
                n += 1
            produce(kafka.bootstrap, topics.events, batch)
            time.sleep(0.05)

    producer = threading.Thread(target=keep_producing, daemon=True)
    try:
        wait_until_ready(paused)
        wait_until_ready(other)
        producer.start()
        time.sleep(4)
        paused.process.send_signal(signal.SIGSTOP)
        time.sleep(8)  # four session timeouts: the group gives its partitions to the other worker
        paused.process.send_signal(signal.SIGCONT)
        time.sleep(6)
        stop_producing.set()
        producer.join(timeout=30)
        recommendations = TopicReader(kafka.bootstrap, topics.recommendations)
        try:
            for event_id in last_event.values():
                recommendations.wait_for(recommendation_for(event_id), timeout_s=120)
        finally:
            recommendations.close()
        assert paused.stop() == 0 and other.stop() == 0
        states = _restored_states(kafka.bootstrap, topics.state)
    finally:
        stop_producing.set()
        paused.process.send_signal(signal.SIGCONT)
        paused.stop(signal.SIGKILL)
        other.stop(signal.SIGKILL)
    lost = {user: sent[user] - states[user].n_events for user in users if states[user].n_events != sent[user]}
    assert not lost, f"{len(lost)} users' restored state lacks events: {dict(list(lost.items())[:5])}"


def test_a_compressed_poison_pill_whose_dead_letter_the_broker_refuses_becomes_a_reference(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    """Compressed, a 1.5 MB event fits the broker's limit; its dead-letter copy (cut to 256 KiB) still exceeds the
    dead-letter topic's own 100 KB limit. The worker must replace it by a reference, not retry it forever."""
    items = _items(trained_artifacts)
    create_topics(kafka.bootstrap, topics, PARTITIONS, dead_letters={"max.message.bytes": "102400"})
    worker = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "worker.log")
    try:
        wait_until_ready(worker)
        now = time.time()
        pill = orjson.dumps(
            {"user_id": "pill", "item_id": items[0], "event_type": "view", "ts": now, "pad": "ab" * 750_000}
        )
        later = [event_message(f"later-{n}", items[n + 1], "view", f"later-{n}", now) for n in range(20)]
        produce(
            kafka.bootstrap,
            topics.events,
            [(b"pill", pill), *later],
            compression_type="gzip",
            max_request_size=4 * 1024 * 1024,
        )
        recommendations = TopicReader(kafka.bootstrap, topics.recommendations)
        dead_letters = TopicReader(kafka.bootstrap, topics.dead_letters)
        try:
            for n in range(20):
                recommendations.wait_for(recommendation_for(f"later-{n}"), timeout_s=60)
            (reference,) = dead_letters.wait_for_count(1)
        finally:
            recommendations.close()
            dead_letters.close()
        headers = dict(reference.headers)
        assert headers["streamrec.reason"] == b"payload_too_large"  # the original rejection, kept
        assert headers["streamrec.original_size"] == str(len(pill)).encode()  # the input's, not the cut copy's
        assert headers["streamrec.source"].startswith(f"{topics.events}/".encode())
        assert len(reference.value) < 1000
        assert worker.metric_value(f'streamrec_outputs_undeliverable_total{{topic="{topics.dead_letters}"}}') == 1.0
    finally:
        worker.stop()


def test_forgotten_users_leave_the_compacted_changelog(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    items = _items(trained_artifacts)
    # Small segments and an eager cleaner, so compaction happens within the test.
    compaction = {"segment.ms": "1000", "min.cleanable.dirty.ratio": "0.001", "delete.retention.ms": "1000"}
    create_topics(kafka.bootstrap, topics, PARTITIONS, state=compaction)
    worker = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "worker.log")
    user = "erase-me"
    try:
        wait_until_ready(worker)
        now = time.time()
        produce(
            kafka.bootstrap, topics.events, [event_message(user, items[n], "buy", f"e-{n}", now + n) for n in range(5)]
        )
        recommendations = TopicReader(kafka.bootstrap, topics.recommendations)
        try:
            recommendations.wait_for(recommendation_for("e-4"), timeout_s=60)
        finally:
            recommendations.close()
        send_forget([user], Settings(bootstrap_servers=kafka.bootstrap, events_topic=topics.events))
        deadline = time.monotonic() + 90
        remaining = None
        n = 0
        while time.monotonic() < deadline:
            # Other users' events roll the segments, so that the cleaner can compact the one holding the user.
            produce(
                kafka.bootstrap, topics.events, [event_message(f"roll-{n}", items[7], "view", f"roll-{n}", time.time())]
            )
            n += 1
            remaining = _records_of(kafka.bootstrap, topics.state, user)
            if remaining == [None] or remaining == []:
                break
            time.sleep(1)
    finally:
        worker.stop()
    assert remaining in ([None], []), f"still in the changelog: {len(remaining or [])} records of {user}"


def _records_of(bootstrap: str, topic: str, user: str) -> list[bytes | None]:
    reader = TopicReader(bootstrap, topic)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            polled = reader.consumer.poll(timeout_ms=200)
            if not polled:
                break
            for batch in polled.values():
                reader.records.extend(batch)
        return [record.value for record in reader.records if record.key == user.encode()]
    finally:
        reader.close()


@pytest.mark.parametrize("runtime", ["kafka", "faust"])
def test_sigterm_stops_a_worker_whose_batch_cannot_be_delivered_within_seconds(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path, runtime: str
) -> None:
    """The faust runtime once parked a batch it could not deliver while holding the batch lock, and faust waited
    on stop for that batch to be acknowledged: the process ignored SIGTERM until the shutdown watchdog killed it."""
    items = _items(trained_artifacts)
    create_topics(kafka.bootstrap, topics, PARTITIONS)
    worker = launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / "worker.log", STREAMREC_RUNTIME=runtime)
    try:
        wait_until_ready(worker)
        now = time.time()
        produce(kafka.bootstrap, topics.events, [event_message("u1", items[1], "view", "first", now)])
        recommendations = TopicReader(kafka.bootstrap, topics.recommendations)
        try:
            recommendations.wait_for(recommendation_for("first"), timeout_s=60)
        finally:
            recommendations.close()
        # With the recommendations topic gone (and not re-created: this broker does not create topics on use),
        # the next batch's output waits for a partition that never comes.
        admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        try:
            admin.delete_topics([topics.recommendations], timeout_ms=30_000)
        finally:
            admin.close()
        produce(kafka.bootstrap, topics.events, [event_message("u2", items[2], "view", "stalled", now + 1)])
        deadline = time.monotonic() + 30
        while worker.metric_value("streamrec_messages_consumed_total") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.metric_value("streamrec_messages_consumed_total") >= 2, "the second event never arrived"
        time.sleep(1.0)  # its delivery is now retrying
        worker.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = worker.process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert code == 0, worker.log_path.read_text()[-3000:]  # 3 if the shutdown watchdog had to end it
    assert took < Settings().shutdown_timeout_s, f"took {took:.1f} s to stop"
