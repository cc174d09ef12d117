"""A worker process on the real broker: events in with kafka-python, recommendations and dead letters read back."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest

from streamrec.stream.app.broker import EmbeddedBroker
from tests.integration.conftest import TopicNames
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "stream" / "schemas"
K = 20
PERSONAL = {"ann", "covisitation", "item_knn"}  # candidate sources of the personalised ranking
TRENDING = {"trending", "trending_in", "trending_segment"}


def _category_items(catalog_categories: dict[str, str], known: set[str], rank: int = 0) -> tuple[str, list[str]]:
    """The ``rank``-th largest category among items the model knows, and its items."""
    counts = Counter(cat for item, cat in catalog_categories.items() if item in known)
    category = counts.most_common()[rank][0]
    return category, sorted(i for i, c in catalog_categories.items() if c == category and i in known)


def _share(recommendation: dict, category: str, catalog_categories: dict[str, str]) -> float:
    items = recommendation["items"]
    return sum(catalog_categories.get(i["item_id"]) == category for i in items) / len(items)


def _closeness(artifacts_dir: Path):
    """Mean cosine similarity between items and the centroid of a user's items, in the served embedding space."""
    from streamrec.model.artifacts import load_artifacts

    artifacts = load_artifacts(artifacts_dir)
    unit = artifacts.item_embeddings / np.linalg.norm(artifacts.item_embeddings, axis=1, keepdims=True)

    def closeness(items: list[str], touched: list[str]) -> float:
        centroid = unit[[artifacts.row_of[i] for i in touched]].mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        return float((unit[[artifacts.row_of[i] for i in items]] @ centroid).mean())

    return closeness


def _known_items(artifacts: Path) -> set[str]:
    from streamrec.model.artifacts import load_artifacts

    return set(load_artifacts(artifacts).item_ids)


def test_recommendations_follow_the_user_and_bad_input_is_dead_lettered(
    broker: EmbeddedBroker,
    start_worker,
    topics: TopicNames,
    trained_artifacts: Path,
    catalog_categories: dict[str, str],
) -> None:
    worker = start_worker()
    known = _known_items(trained_artifacts)
    category, items = _category_items(catalog_categories, known)
    browsed, bought = items[:5], items[5]

    user = "it-user-1"
    now = time.time()
    journey = [event_message(user, item, "view", f"{user}-v{n}", now + n) for n, item in enumerate(browsed)]
    journey.append(event_message(user, browsed[0], "click", f"{user}-c", now + 6))
    journey.append(event_message(user, bought, "buy", f"{user}-buy", now + 7))
    other_category, other_items = _category_items(catalog_categories, known, rank=1)
    other_user = [
        event_message("it-user-2", item, "view", f"u2-v{n}", now + n) for n, item in enumerate(other_items[:5])
    ]
    cold_user_event = event_message("it-cold", "never-seen-item", "view", "cold-1", now)
    bad = [
        (b"u-bad", b"this is not json"),
        (b"u-bad", orjson.dumps({"item_id": "i1", "event_type": "view", "ts": now})),
        (b"u-bad", orjson.dumps({"user_id": "u-bad", "item_id": "i1", "event_type": "purchase", "ts": now})),
        (b"u-bad", b'{"user_id": "u-bad", "pad": "' + b"x" * 40_000 + b'"}'),
        (b"u-bad", orjson.dumps({"user_id": "u-bad", "item_id": "i1", "event_type": "view", "ts": 12.0})),
        (b"someone-else", orjson.dumps({"user_id": "u-bad", "item_id": "i1", "event_type": "view", "ts": now})),
    ]
    expected_reasons = {
        "not_json",
        "missing_field",
        "unknown_event_type",
        "payload_too_large",
        "timestamp_out_of_range",
        "key_mismatch",
    }
    produce(broker.bootstrap, topics.events, [*journey, *other_user, *bad, cold_user_event])

    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    dead_letters = TopicReader(broker.bootstrap, topics.dead_letters)
    try:
        after_buy = orjson.loads(recommendations.wait_for(recommendation_for(f"{user}-buy"), timeout_s=60).value)
        other = orjson.loads(recommendations.wait_for(recommendation_for("u2-v4")).value)
        cold = orjson.loads(recommendations.wait_for(recommendation_for("cold-1")).value)
        rejected = dead_letters.wait_for_count(len(bad))
    finally:
        recommendations.close()
        dead_letters.close()

    schema = json.loads((SCHEMAS / "recommendation.schema.json").read_text())
    jsonschema.validate(after_buy, schema)
    jsonschema.validate(cold, schema)

    # Output contract: K items, trigger echoed, the bought and the just-touched item never recommended.
    recommended = [item["item_id"] for item in after_buy["items"]]
    assert after_buy["user_id"] == user
    assert len(recommended) == K == len(set(recommended))
    assert after_buy["trigger"] == {"event_id": f"{user}-buy", "item_id": bought, "event_type": "buy", "ts": now + 7}
    assert bought not in recommended
    # Seven events: the personalised ranking leads; context trending may fill a few lower slots (the blend).
    assert after_buy["items"][0]["source"] in PERSONAL
    assert sum(item["source"] in PERSONAL for item in after_buy["items"]) >= K // 2
    assert all(item["reason"] and item["reason_code"] for item in after_buy["items"])
    assert after_buy["model_version"] == trained_artifacts.name

    # Each user's interest vector moved toward the region of what they touched: in the model's embedding space,
    # their recommendations lie closer to their own items than the catalog does, and closer than the other
    # user's recommendations do; their category is over-represented against its catalog share.
    closeness = _closeness(trained_artifacts)
    touched1, touched2 = [*browsed, bought], other_items[:5]
    recs1, recs2 = ([i["item_id"] for i in rec["items"]] for rec in (after_buy, other))
    own1, cross1, catalog1 = (closeness(r, touched1) for r in (recs1, recs2, sorted(known)))
    own2, cross2, catalog2 = (closeness(r, touched2) for r in (recs2, recs1, sorted(known)))
    assert own1 > catalog1 + 0.1 and own2 > catalog2 + 0.1, (own1, catalog1, own2, catalog2)
    assert own1 > cross1 and own2 > cross2, (own1, cross1, own2, cross2)
    assert (own1 - cross1) + (own2 - cross2) > 0.1, (own1, cross1, own2, cross2)
    assert _share(after_buy, category, catalog_categories) > len(items) / len(known)
    assert _share(other, other_category, catalog_categories) > len(other_items) / len(known)

    # A user with no known history gets real-time trending items, which exist because of the journey above.
    assert len(cold["items"]) > 0
    assert {item["source"] for item in cold["items"]} <= TRENDING
    assert "never-seen-item" not in {item["item_id"] for item in cold["items"]}

    # Every bad message reached the dead-letter topic unchanged, with a machine-readable reason.
    reasons = {dict(r.headers)["streamrec.reason"].decode() for r in rejected}
    assert reasons == expected_reasons
    assert {r.value for r in rejected} == {value for _, value in bad}

    # The worker is still alive and counted all of it.
    assert worker.process.poll() is None
    assert worker.metric_value('streamrec_events_invalid_total{reason="not_json"}') == 1.0
    assert worker.metric_value('streamrec_events_consumed_total{event_type="view"}') == len(browsed) + 5 + 1
    assert worker.metric_value('streamrec_events_consumed_total{event_type="buy"}') == 1.0
    assert worker.metric_value('streamrec_recommendations_published_total{kind="personalized",variant="default"}') >= 1
    assert worker.metric_value('streamrec_event_to_recommendation_seconds_count{clock="event_time"}') >= 2
    assert worker.metric_value("streamrec_index_items") == len(known)


def test_state_and_uncommitted_events_survive_a_killed_worker(
    broker: EmbeddedBroker,
    start_worker,
    topics: TopicNames,
    trained_artifacts: Path,
    catalog_categories: dict[str, str],
) -> None:
    known = _known_items(trained_artifacts)
    _, items = _category_items(catalog_categories, known)
    user = "it-restart"
    first = start_worker()
    now = time.time()
    produce(
        broker.bootstrap,
        topics.events,
        [event_message(user, item, "click", f"r-{n}", now + n) for n, item in enumerate(items[:4])],
    )
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    try:
        before = orjson.loads(recommendations.wait_for(recommendation_for("r-3"), timeout_s=60).value)
        favourite = before["items"][0]["item_id"]  # what the model most wants to show this user
        produce(broker.bootstrap, topics.events, [event_message(user, favourite, "buy", "r-buy", now + 10)])
        recommendations.wait_for(recommendation_for("r-buy"))
        first.stop(signal.SIGKILL)

        # Produced while no worker runs: must not be lost.
        produce(broker.bootstrap, topics.events, [event_message(user, items[0], "view", "r-after", now + 20)])
        second = start_worker()
        after = orjson.loads(recommendations.wait_for(recommendation_for("r-after"), timeout_s=60).value)
    finally:
        recommendations.close()

    assert favourite not in {item["item_id"] for item in after["items"]}  # the purchase was restored
    assert second.metric_value("streamrec_users_restored_total") >= 1
    assert after["items"][0]["source"] in PERSONAL  # the restored history still drives the list


def test_faust_runtime_serves_the_same_pipeline(
    broker: EmbeddedBroker, start_worker, topics: TopicNames, trained_artifacts: Path, catalog_categories
) -> None:
    known = _known_items(trained_artifacts)
    _, items = _category_items(catalog_categories, known)
    worker = start_worker(STREAMREC_RUNTIME="faust")
    now = time.time()
    produce(
        broker.bootstrap,
        topics.events,
        [
            event_message("faust-user", items[0], "view", "f-1", now),
            event_message("faust-user", items[1], "buy", "f-2", now + 1),
            (b"faust-user", b"{broken"),
        ],
    )
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    dead_letters = TopicReader(broker.bootstrap, topics.dead_letters)
    try:
        rec = orjson.loads(recommendations.wait_for(recommendation_for("f-2"), timeout_s=60).value)
        (rejected,) = dead_letters.wait_for_count(1)
    finally:
        recommendations.close()
        dead_letters.close()
    assert len(rec["items"]) == K
    assert items[1] not in {i["item_id"] for i in rec["items"]}
    assert dict(rejected.headers)["streamrec.reason"] == b"not_json"
    assert worker.stop() == 0  # SIGTERM stops a faust worker cleanly
    assert not list(worker.log_path.parent.glob("*-data"))  # faust's data directory is not left behind
