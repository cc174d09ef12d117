import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamrec.model.events import Event, EventType
from streamrec.stream.app.event_files import load_events
from streamrec.stream.app.simulate import DEFAULT_START_TS, simulate_shop, simulate_to_files

Shop = tuple[list[Event], list[dict[str, Any]]]

FUNNEL = (EventType.VIEW, EventType.CLICK, EventType.CART, EventType.BUY)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return simulate_shop(n_users=600, n_items=400, n_events=20_000, seed=3)


def test_same_seed_same_shop_other_seed_other_shop() -> None:
    first = simulate_shop(50, 40, 1_000, seed=11)
    assert simulate_shop(50, 40, 1_000, seed=11) == first
    assert simulate_shop(50, 40, 1_000, seed=12)[0] != first[0]


def test_counts_and_ids(shop: Shop) -> None:
    events, catalog = shop
    assert len(events) == 20_000
    assert len(catalog) == 400
    assert len({e.user_id for e in events}) == 600  # enough events for every user to show up
    assert [e.event_id for e in events[:3]] == ["e0", "e1", "e2"]
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.session_id and e.user_id.startswith("u") and e.item_id.startswith("i") for e in events)


def test_events_are_time_ordered_from_start(shop: Shop) -> None:
    events, _ = shop
    stamps = [e.ts for e in events]
    assert stamps == sorted(stamps)
    assert stamps[0] >= DEFAULT_START_TS and stamps[-1] < DEFAULT_START_TS + 40 * 86_400


def test_funnel_rates_fall_from_view_to_buy(shop: Shop) -> None:
    events, _ = shop
    counts = Counter(e.event_type for e in events)
    views, clicks, carts, buys = (counts[t] for t in FUNNEL)
    assert views > clicks > carts > buys > 0


def test_each_funnel_step_follows_the_previous_on_the_same_item(shop: Shop) -> None:
    events, _ = shop
    reached: dict[tuple[str, str], set[EventType]] = defaultdict(set)
    for event in events:
        step = FUNNEL.index(event.event_type)
        if step:
            assert FUNNEL[step - 1] in reached[event.user_id, event.item_id], event
        reached[event.user_id, event.item_id].add(event.event_type)


def test_users_rarely_buy_an_item_twice(shop: Shop) -> None:
    events, _ = shop
    purchases = Counter((e.user_id, e.item_id) for e in events if e.event_type is EventType.BUY)
    repeats = sum(count > 1 for count in purchases.values())
    assert repeats <= 0.05 * len(purchases)


def test_catalog_matches_events(shop: Shop) -> None:
    events, catalog = shop
    by_id = {record["item_id"]: record for record in catalog}
    assert len(by_id) == len(catalog)
    assert {e.item_id for e in events} <= set(by_id)
    for record in catalog:
        assert set(record) == {"item_id", "title", "category", "price", "available", "ts", "attributes"}
        assert record["price"] > 0 and record["available"] is True
        assert f"category:{record['category']}" in record["attributes"]
        assert record["ts"] <= events[0].ts


def test_popularity_is_skewed_and_sessions_stay_in_a_category(shop: Shop) -> None:
    events, catalog = shop
    views = Counter(e.item_id for e in events if e.event_type is EventType.VIEW)
    top_tenth = sum(count for _, count in views.most_common(len(catalog) // 10))
    assert top_tenth > 0.3 * sum(views.values())  # Zipf: a tenth of the items draws a large share
    category = {record["item_id"]: record["category"] for record in catalog}
    sessions: dict[str, list[str]] = defaultdict(list)
    for event in events:
        sessions[event.session_id or ""].append(category[event.item_id])
    purity = [Counter(c).most_common(1)[0][1] / len(c) for c in sessions.values() if len(c) >= 4]
    assert sum(purity) / len(purity) > 0.7


def test_titles_name_category_specific_products() -> None:
    _, catalog = simulate_shop(10, 300, 100, seed=5, n_categories=30)
    assert len({record["category"] for record in catalog}) == 30
    titles_by_category: dict[str, set[str]] = defaultdict(set)
    for record in catalog:
        titles_by_category[record["category"]].add(record["title"].split()[-2])  # the product noun
    assert titles_by_category["kitchen"].isdisjoint(titles_by_category["audio"])


def test_fewer_events_than_users_and_bad_arguments() -> None:
    events, _ = simulate_shop(100, 10, 30, seed=1)
    assert len(events) == 30 and len({e.user_id for e in events}) == 30
    with pytest.raises(ValueError):
        simulate_shop(0, 10, 10, seed=1)
    with pytest.raises(ValueError):
        simulate_shop(10, 10, 10, seed=1, n_categories=11)


def test_hundred_thousand_events_are_fast() -> None:
    started = time.perf_counter()
    events, _ = simulate_shop(5_000, 2_000, 100_000, seed=0)
    assert len(events) == 100_000
    assert time.perf_counter() - started < 5.0


def test_simulate_to_files_writes_events_and_catalog(tmp_path: Path) -> None:
    events_path, items_path = simulate_to_files(tmp_path / "shop.jsonl", 30, 20, 500, seed=2)
    assert items_path == tmp_path / "shop.items.jsonl"
    assert len(load_events(events_path)) == 500
    records = [orjson.loads(line) for line in items_path.read_bytes().splitlines()]
    assert len(records) == 20 and records[0]["item_id"] == "i0"
