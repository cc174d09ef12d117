"""What production does to a worker, on the embedded broker: poison pills, a corrupt changelog, erasure, a broker
that goes away or comes back empty. Events go in with kafka-python; recommendations, dead letters and state are
read back from the topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamrec.stream.app.broker import EmbeddedBroker
from streamrec.stream.settings import Settings
from tests.integration.conftest import TopicNames
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for
from tests.integration.workers import launch, readiness, wait_until_ready

pytestmark = pytest.mark.integration

LATER_USERS = 40


def _known_items(trained_artifacts: Path) -> list[str]:
    from streamrec.model.artifacts import load_artifacts

    return load_artifacts(trained_artifacts).item_ids


def test_an_oversized_event_is_dead_lettered_cut_down_and_later_users_are_answered(
    broker: EmbeddedBroker, start_worker, topics: TopicNames, trained_artifacts: Path
) -> None:
    """A 1.2 MB event the broker accepts once stalled its partition for good: its dead-letter copy was larger than a
    producer request may be, and the batch was retried forever."""
    worker = start_worker(STREAMREC_TOPIC_PARTITIONS="1")  # every later user queues behind the pill
    items = _known_items(trained_artifacts)
    now = time.time()
    pill = orjson.dumps(
        {"user_id": "pill", "item_id": items[0], "event_type": "view", "ts": now, "pad": "x" * 1_200_000}
    )
    later = [event_message(f"later-{n}", items[n + 1], "view", f"later-{n}", now) for n in range(LATER_USERS)]
    produce(broker.bootstrap, topics.events, [(b"pill", pill), *later], max_request_size=4 * 1024 * 1024)

    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    dead_letters = TopicReader(broker.bootstrap, topics.dead_letters)
    try:
        for n in range(LATER_USERS):
            recommendations.wait_for(recommendation_for(f"later-{n}"), timeout_s=60)
        (dead,) = dead_letters.wait_for_count(1)
    finally:
        recommendations.close()
        dead_letters.close()
    headers = dict(dead.headers)
    assert headers["streamrec.reason"] == b"payload_too_large"
    assert headers["streamrec.truncated"] == b"value"
    assert headers["streamrec.original_size"] == str(len(pill)).encode()
    assert dead.value == pill[: Settings().dead_letter_max_bytes]
    assert headers["streamrec.source"] == f"{topics.events}/0/0".encode()
    assert worker.metric_value('streamrec_events_invalid_total{reason="payload_too_large"}') == 1.0
    assert worker.metric_value("streamrec_delivery_failures_total") == 0.0


def test_unreadable_state_records_cost_one_user_each_not_the_whole_restore(
    broker: EmbeddedBroker, start_worker, topics: TopicNames, trained_artifacts: Path
) -> None:
    """One changelog record with the value ``[]`` made the restore raise: every user came back empty, and their
    empty states were written back over the good ones."""
    items = _known_items(trained_artifacts)
    first = start_worker()
    users = [f"restored-{n}" for n in range(30)]
    now = time.time()
    produce(
        broker.bootstrap,
        topics.events,
        [event_message(u, items[n], "buy", f"{u}-buy", now) for n, u in enumerate(users)],
    )
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    try:
        for user in users:
            recommendations.wait_for(recommendation_for(f"{user}-buy"), timeout_s=60)
        assert first.stop() == 0
        # Corrupt records beside the good ones, on every partition the users live on.
        produce(
            broker.bootstrap,
            topics.state,
            [(b"broken-user", b"[]"), (b"broken-2", b"{not json"), (users[0].encode(), b'{"format": 2}')],
        )
        second = start_worker()
        wait_until_ready(second)
        assert second.metric_value("streamrec_users_restored_total") == len(users)
        assert second.metric_value("streamrec_state_records_skipped_total") == 3.0
        # A restored user still has their purchase: it is never recommended to them again.
        produce(broker.bootstrap, topics.events, [event_message(users[1], items[40], "view", "after-restore", now + 5)])
        after = orjson.loads(recommendations.wait_for(recommendation_for("after-restore"), timeout_s=60).value)
    finally:
        recommendations.close()
    assert items[1] not in {item["item_id"] for item in after["items"]}
    assert after["items"][0]["source"] in {"ann", "covisitation", "item_knn"}


def test_forget_erases_a_user_from_memory_the_changelog_and_the_recommendations(
    broker: EmbeddedBroker, start_worker, topics: TopicNames, trained_artifacts: Path
) -> None:
    items = _known_items(trained_artifacts)
    worker = start_worker()
    now = time.time()
    user = "to-be-forgotten"
    produce(
        broker.bootstrap,
        topics.events,
        [event_message(user, items[n], "buy", f"f-{n}", now + n) for n in range(3)]
        + [event_message("bystander", items[5], "view", "b-1", now)],
    )
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    state = TopicReader(broker.bootstrap, topics.state)
    try:
        recommendations.wait_for(recommendation_for("f-2"), timeout_s=60)
        forget = subprocess.run(
            [sys.executable, "-m", "streamrec.stream.app.cli", "forget", "--user", user,
             "--bootstrap", broker.bootstrap, "--request-id", "gdpr-7"],
            env={**os.environ, "STREAMREC_EVENTS_TOPIC": topics.events},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert forget.returncode == 0, forget.stderr
        assert forget.stdout.strip() == f"sent 1 forget command to {topics.events}"
        tombstone = recommendations.wait_for(lambda r: r.key == user.encode() and r.value is None)
        state.wait_for(lambda r: r.key == user.encode() and r.value is None)
        assert worker.metric_value("streamrec_users_forgotten_total") == 1.0
        # The user comes back: a new, empty history, not the old one.
        produce(broker.bootstrap, topics.events, [event_message(user, items[9], "view", "back", now + 10)])
        back = recommendations.wait_for(recommendation_for("back"), timeout_s=30)
        latest = state.wait_for(
            lambda r: r.key == user.encode() and r.value is not None and r.offset > tombstone.offset
        )
    finally:
        recommendations.close()
        state.close()
    fresh = orjson.loads(latest.value)
    assert fresh["n_events"] == 1 and fresh["bought"] == []
    assert {item["item_id"] for item in orjson.loads(back.value)["items"]} & set(items[:3])  # purchases may show again


# --- a broker of our own: these tests stop and restart it -----------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    running = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield running
    running.stop()


def test_a_broker_that_comes_back_empty_makes_the_worker_exit_for_its_supervisor(
    own_broker: EmbeddedBroker, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    """The embedded broker keeps nothing across a restart. The worker once waited 300 s restoring a state topic that
    no longer existed, swallowed the timeout, rejoined and waited again, deaf to SIGTERM."""
    worker = launch(own_broker.bootstrap, trained_artifacts, topics, tmp_path / "worker.log")
    try:
        wait_until_ready(worker)
        own_broker.stop()
        deadline = time.monotonic() + 15
        while readiness(worker)[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        status, reasons = readiness(worker)
        assert status == 503 and "cannot reach Kafka" in reasons
        own_broker.start()
        worker.process.wait(timeout=60)
        assert worker.process.returncode == 3
        stderr_tail = worker.log_path.read_text().strip().splitlines()[-1]
        assert stderr_tail.startswith("streamrec: error:") and "state topic" in stderr_tail

        # What a supervisor does next: start it again. It recreates the topics and serves.
        again = launch(own_broker.bootstrap, trained_artifacts, topics, tmp_path / "again.log")
        wait_until_ready(again)
        produce(own_broker.bootstrap, topics.events, [event_message("u-after", "x", "view", "after", time.time())])
        reader = TopicReader(own_broker.bootstrap, topics.recommendations)
        try:
            reader.wait_for(recommendation_for("after"), timeout_s=60)
        finally:
            reader.close()
        assert again.stop() == 0
    finally:
        worker.stop(signal.SIGKILL)


def test_with_the_broker_gone_the_worker_logs_little_and_stops_at_once_on_sigterm(
    own_broker: EmbeddedBroker, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    worker = launch(own_broker.bootstrap, trained_artifacts, topics, tmp_path / "worker.log")
    try:
        wait_until_ready(worker)
        lines_before = len(worker.log_path.read_text().splitlines())
        own_broker.stop()
        time.sleep(10)
        lines_during = len(worker.log_path.read_text().splitlines()) - lines_before
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        worker.stop(signal.SIGKILL)
    assert lines_during < 60, f"{lines_during} log lines in 10 s without a broker"
    assert worker.process.returncode == 0
    assert took < Settings().shutdown_timeout_s
