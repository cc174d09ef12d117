"""The live catalog on the real broker: items published during a run reach users, withdrawn ones vanish."""

from __future__ import annotations

import time

import orjson
import pytest

from streamrec.stream.app.broker import EmbeddedBroker
from streamrec.stream.runtime.topics import ensure_topics
from streamrec.stream.settings import Settings
from tests.integration.conftest import TopicNames
from tests.integration.kafka_io import TopicReader, event_message, produce, recommendation_for

pytestmark = pytest.mark.integration

CATALOG_DEADLINE_S = 10.0  # from publishing a catalog record to the worker serving it


def _create_topics(broker: EmbeddedBroker, topics: TopicNames) -> None:
    ensure_topics(
        Settings(
            bootstrap_servers=broker.bootstrap,
            topic_partitions=4,
            **{f"{name}_topic": getattr(topics, name) for name in ("events", "recommendations", "state", "items")},
            dead_letter_topic=topics.dead_letters,
        )
    )


def _catalog_message(record: dict) -> tuple[bytes, bytes]:
    return record["item_id"].encode(), orjson.dumps(record)


def _wait_for_metric(worker, series: str, at_least: float, timeout_s: float) -> float:
    """Seconds until ``series`` reaches ``at_least``; fails the test past ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if worker.metric_value(series) >= at_least:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{series} stayed below {at_least} for {timeout_s} s")


def test_catalog_updates_during_a_run(broker: EmbeddedBroker, start_worker, topics: TopicNames, shop) -> None:
    catalog = shop[1]
    _create_topics(broker, topics)
    produce(broker.bootstrap, topics.items, [_catalog_message(record) for record in catalog])
    worker = start_worker(STREAMREC_RANDOM_SEED="0", STREAMREC_EXPLORATION_SHARE="0.05")
    _wait_for_metric(worker, "streamrec_catalog_items", len(catalog), timeout_s=30)

    template = catalog[0]
    category = template["category"]
    peers = [r["item_id"] for r in catalog if r["category"] == category]
    now = time.time()
    recommendations = TopicReader(broker.bootstrap, topics.recommendations)
    try:
        # A brand-new user's very first event is answered with what trends in that category right now.
        produce(
            broker.bootstrap,
            topics.events,
            [event_message(f"buyer-{n}", peers[2], "buy", f"b-{n}", now + n) for n in range(5)]
            + [event_message("newcomer", peers[0], "view", "new-1", now + 6)],
        )
        first = orjson.loads(recommendations.wait_for(recommendation_for("new-1"), timeout_s=60).value)
        codes = {item["item_id"]: item["reason_code"] for item in first["items"]}
        assert codes.get(peers[2]) == f"trending_in:{category}"

        # A user browsing the category; then a new item of that category is published to the catalog.
        produce(
            broker.bootstrap,
            topics.events,
            [event_message("fan", item, "view", f"fan-{n}", now + 10 + n) for n, item in enumerate(peers[3:8])],
        )
        recommendations.wait_for(recommendation_for("fan-4"))
        new_item = {**template, "item_id": "brand-new-item", "ts": now + 20, "available": True}
        produce(broker.bootstrap, topics.items, [_catalog_message(new_item)])
        indexed_after = _wait_for_metric(worker, "streamrec_live_items", 1, CATALOG_DEADLINE_S)
        produce(broker.bootstrap, topics.events, [event_message("fan", peers[8], "view", "fan-new", now + 21)])
        after_new = orjson.loads(recommendations.wait_for(recommendation_for("fan-new")).value)
        shown = {item["item_id"]: item for item in after_new["items"]}
        assert "brand-new-item" in shown, f"not recommended {indexed_after:.1f} s after publishing"
        assert shown["brand-new-item"]["explore"] is True

        # An item withdrawn from sale is never recommended again.
        withdrawn_id = next(item["item_id"] for item in after_new["items"] if not item["explore"])
        withdrawn = {**next(r for r in catalog if r["item_id"] == withdrawn_id), "available": False, "ts": now + 30}
        produce(broker.bootstrap, topics.items, [_catalog_message(withdrawn)])
        _wait_for_metric(worker, 'streamrec_catalog_updates_total{change="availability"}', 1, CATALOG_DEADLINE_S)
        produce(broker.bootstrap, topics.events, [event_message("fan", peers[9], "view", "fan-gone", now + 31)])
        after_withdrawal = orjson.loads(recommendations.wait_for(recommendation_for("fan-gone")).value)
    finally:
        recommendations.close()
    assert withdrawn_id not in {item["item_id"] for item in after_withdrawal["items"]}
    assert worker.metric_value("streamrec_index_unavailable_items") == 1
    assert worker.metric_value('streamrec_items_recommended_total{reason="explore"}') >= 1
