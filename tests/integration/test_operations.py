"""Operating streamrec on Apache Kafka: A/B variants, online evaluation, the read path, ``streamrec report`` and the
retraining loop, each through the real broker and real worker processes.

* Two workers serve two variants (the second with its own list length); every recommendation names the variant
  its user's hash gives, and each user's next event is counted against the list they were shown.
* The read path: the worker that owns a user returns the list last published for them; the other answers 421 with
  the partition and the owner's host.
* ``streamrec report`` prints the same variants' hit rates from both workers' metrics and from the topics.
* ``streamrec train --from-topic`` trains on the events topic; ``streamrec retrain`` compares and publishes.

Skipped, with the reason, where Java or the Kafka jars are missing (``bash .ci/fetch-kafka.sh``).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from streamrec.model.artifacts import load_artifacts, resolve_artifact_dir
from streamrec.model.events import Event
from streamrec.stream.app.apache_kafka import ApacheKafka
from streamrec.stream.read_path import partition_of
from streamrec.stream.settings import Settings
from streamrec.stream.variants import VariantAssigner
from tests.integration.conftest import TopicNames, WorkerProcess
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for
from tests.integration.workers import create_topics, launch, streamrec_command, wait_until_ready

pytestmark = pytest.mark.integration

PARTITIONS = 4
VARIANTS = [{"name": "control", "share": 1}, {"name": "short", "share": 1, "overrides": {"top_k": 5}}]
VARIANT_ENV = {"STREAMREC_VARIANTS": json.dumps(VARIANTS), "STREAMREC_EXPLORATION_SHARE": "0", "STREAMREC_TOP_K": "10"}


def _get(worker: WorkerProcess, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return streamrec_command(*args, env=env, timeout_s=300)


def test_variants_online_evaluation_read_path_and_report(
    kafka: ApacheKafka, topics: TopicNames, trained_artifacts: Path, tmp_path: Path
) -> None:
    items = load_artifacts(trained_artifacts).item_ids
    create_topics(kafka.bootstrap, topics, PARTITIONS)
    workers = [
        launch(kafka.bootstrap, trained_artifacts, topics, tmp_path / f"worker-{n}.log", **VARIANT_ENV) for n in (0, 1)
    ]
    users = [f"shopper-{n}" for n in range(24)]
    reader = None
    try:
        for worker in workers:
            wait_until_ready(worker, timeout_s=90)
        deadline = time.monotonic() + 90
        while sum(w.metric_value("streamrec_assigned_partitions") for w in workers) < PARTITIONS:
            assert time.monotonic() < deadline, "partitions never assigned"
            time.sleep(0.5)
        now = time.time()
        produce(kafka.bootstrap, topics.events, [event_message(u, items[n % 40], "view", f"{u}-1", now)
                                                for n, u in enumerate(users)])  # fmt: skip
        reader = TopicReader(kafka.bootstrap, topics.recommendations)
        first = {u: orjson.loads(reader.wait_for(recommendation_for(f"{u}-1"), 60).value) for u in users}
        # Every user's next event: half on the first item they were shown (a hit at rank 1), half elsewhere.
        hits = users[::2]

        def next_item(user: str) -> str:
            shown = [item["item_id"] for item in first[user]["items"]]
            return shown[0] if user in hits else next(item for item in items[100:] if item not in shown)

        follow = [event_message(u, next_item(u), "click", f"{u}-2", now + 5) for u in users]
        produce(kafka.bootstrap, topics.events, follow)
        second = {u: orjson.loads(reader.wait_for(recommendation_for(f"{u}-2"), 60).value) for u in users}

        # The read path, on both workers, for every user.
        answers = {u: [_get(w, f"/recommendations/{u}") for w in workers] for u in users}
        metrics_options = [
            part for w in workers for part in ("--metrics", f"http://127.0.0.1:{w.metrics_port}/metrics")
        ]
        report = _cli("report", *metrics_options, "--json", env=topics.env())
        from_topics = _cli("report", "--from-topics", "--json", "--bootstrap", kafka.bootstrap, env=topics.env())
        evaluated = sum(
            w.metric_value(f'streamrec_online_evaluated_total{{event_type="click",variant="{v}"}}')
            for w in workers
            for v in ("control", "short")
        )
    finally:
        if reader is not None:
            reader.close()
        for worker in workers:
            worker.stop()

    assigner = VariantAssigner(Settings(variants=VARIANTS).variants, "streamrec")
    for user in users:
        variant = assigner.assign(user)
        assert first[user]["variant"] == second[user]["variant"] == variant
        assert len(second[user]["items"]) == (5 if variant == "short" else 10)
    assert {m["variant"] for m in first.values()} == {"control", "short"}
    assert evaluated == len(users)

    for user in users:
        statuses = sorted(status for status, _ in answers[user])
        assert statuses == [200, 421], (user, answers[user])
        (listed,) = [body for status, body in answers[user] if status == 200]
        assert [i["item_id"] for i in listed["items"]] == [i["item_id"] for i in second[user]["items"]]
        (elsewhere,) = [body for status, body in answers[user] if status == 421]
        assert elsewhere["partition"] == partition_of(user, PARTITIONS)
        assert elsewhere["owner"] is None or elsewhere["owner"].startswith("127.0.0.1:")

    assert report.returncode == 0, report.stderr
    by_variant = {row["variant"]: row for row in json.loads(report.stdout)}
    hit_users = {v: sum(1 for u in hits if assigner.assign(u) == v) for v in ("control", "short")}
    for variant in ("control", "short"):
        row = by_variant[variant]
        in_variant = sum(1 for u in users if assigner.assign(u) == variant)
        assert row["evaluated"] == in_variant
        assert row["hit_rate"]["@5"]["rate"] == pytest.approx(hit_users[variant] / in_variant, abs=1e-4)
    assert from_topics.returncode == 0, from_topics.stderr
    topic_rows = {row["variant"]: row for row in json.loads(from_topics.stdout)}
    for variant in ("control", "short"):
        assert topic_rows[variant]["evaluated"] == by_variant[variant]["evaluated"]
        assert topic_rows[variant]["hit_rate"]["@5"] == by_variant[variant]["hit_rate"]["@5"]


def test_training_from_the_events_topic_and_the_retraining_loop(
    kafka: ApacheKafka, topics: TopicNames, shop: tuple[list[Event], list[dict]], tmp_path: Path
) -> None:
    create_topics(kafka.bootstrap, topics, PARTITIONS)
    events = shop[0][:12_000]
    shift = time.time() - 3_600 - events[-1].ts  # the shop's history, moved into the last hour
    messages = [
        event_message(e.user_id, e.item_id, e.event_type.value, f"e{n}", e.ts + shift) for n, e in enumerate(events)
    ]
    produce(kafka.bootstrap, topics.events, [*messages, (b"u", b"{not json")])
    catalog = shop[1]
    produce(kafka.bootstrap, topics.items, [(item["item_id"].encode(), orjson.dumps(item)) for item in catalog])
    env = {
        **topics.env(),
        "STREAMREC_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "STREAMREC_TRAIN__DIM": "16",
        "STREAMREC_TRAIN__MAX_EPOCHS": "3",
        "STREAMREC_TRAIN__N_SEGMENTS": "0",
        "STREAMREC_TRAIN__CONTENT_ENCODER": "hashed",
    }
    root = tmp_path / "models"
    trained = _cli("train", "--from-topic", "--days", "1", "--out", str(root), "--log-level", "WARNING", env=env)
    assert trained.returncode == 0, trained.stderr
    assert f"read {len(messages) + 1} messages" in trained.stdout and "1 skipped" in trained.stdout
    assert f"read {len(catalog)} catalog items" in trained.stdout
    first = resolve_artifact_dir(root)
    manifest = load_artifacts(first).manifest
    assert manifest["data"]["events"] == len(messages)
    assert "content" in manifest  # the catalog topic gave the content projection for new items

    empty = _cli("train", "--from-topic", "--since", "2001-01-01", "--until", "2001-01-02", "--out", str(root), env=env)
    assert empty.returncode == 1 and "no valid event" in empty.stderr

    retrained = _cli("retrain", "--out", str(root), "--days", "1", "--tolerance", "0.5", env=env)
    assert retrained.returncode == 0, retrained.stderr
    assert "published:" in retrained.stdout, retrained.stdout
    assert resolve_artifact_dir(root) != first  # LATEST moved: running workers hot-swap it
