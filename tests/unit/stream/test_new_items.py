"""Learn new items: a live item's row moves from its text toward the ranker states of the users who pick it."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.shoppers import ShopperProjection
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.events import SourceRecord
from streamrec.stream.item_table import ItemTable
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.new_items import NewItemLearner
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.settings import Settings

NOW = time.time()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _identity(dim: int) -> ShopperProjection:
    """A map that takes the shoppers' mean state for the row."""
    return ShopperProjection(np.eye(dim), np.zeros(dim), np.zeros(dim), target_norm=1.0)


def test_a_model_without_a_shoppers_map_keeps_live_rows_where_their_text_put_them(artifacts: ModelArtifacts) -> None:
    table = ItemTable(artifacts, max_live_items=10)
    row = table.add("new", np.ones(table.dim, dtype=np.float32))
    learner = NewItemLearner(table, None, prior=1.0, learning_events=32)
    assert not learner.learns("new")
    learner.observe(["new"], np.ones((1, table.dim), dtype=np.float32))
    assert learner.refresh() == 0 and table.row_of["new"] == row


def test_a_live_row_moves_at_each_doubling_of_its_events_up_to_the_limit(artifacts: ModelArtifacts) -> None:
    table = ItemTable(artifacts, max_live_items=100)
    content = np.zeros(table.dim, dtype=np.float32)
    content[0] = 1.0
    first = table.add("new", content)
    table.set_available("new", False)  # withdrawn: moving it must not bring it back
    learner = NewItemLearner(table, _identity(table.dim), prior=1.0, learning_events=6)
    state = np.zeros(table.dim, dtype=np.float32)
    state[1] = 3.0
    rows = []
    for _ in range(8):
        learner.observe(["new"], state[None, :])
        learner.refresh()
        rows.append(table.row_of["new"])
    # Moves at 1, 2, 4 and the limit 6; nothing after it (the next training learns the item).
    assert rows == [first + 1, first + 2, first + 2, first + 3, first + 3, first + 4, first + 4, first + 4]
    assert learner.events_of("new") == 6
    assert not any(table.index.is_available(row) for row in range(first, first + 5))
    row = table.embeddings[table.row_of["new"]]
    assert _cosine(row, state) > 0.95 and table.content_of["new"] is content  # six shoppers against one prior
    assert not learner.learns(table.item_ids[0])  # trained items keep their learned rows


def test_no_row_is_moved_past_the_live_row_limit_nor_for_a_nonfinite_state(artifacts: ModelArtifacts) -> None:
    table = ItemTable(artifacts, max_live_items=1)
    row = table.add("new", np.ones(table.dim, dtype=np.float32))
    learner = NewItemLearner(table, _identity(table.dim), prior=1.0, learning_events=4)
    learner.observe(["new"], np.full((1, table.dim), np.nan, dtype=np.float32))
    assert learner.events_of("new") == 0
    learner.observe(["new"], np.ones((1, table.dim), dtype=np.float32))
    assert learner.refresh() == 0 and table.row_of["new"] == row and table.index.is_available(row)


def _new_item_like(artifacts_shop, category: str, item_id: str) -> CatalogItem:
    template = next(r for r in artifacts_shop[1] if r["category"] == category)
    return CatalogItem(item_id, template["title"], category, 9.0, True, NOW, tuple(template["attributes"]))


def _catalogued(
    artifacts: ModelArtifacts, shop, new: CatalogItem, **settings: object
) -> tuple[Pipeline, WorkerMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    pipeline = Pipeline(Settings(top_k=20, random_seed=0, **settings), artifacts, metrics)
    items = [
        CatalogItem(
            r["item_id"], r["title"], r["category"], r["price"], r["available"], r["ts"], tuple(r["attributes"])
        )
        for r in shop[1]
    ]
    pipeline.apply_catalog([*items, new], pipeline.text_vectors([*items, new]))
    # A running shop: enough warm users for the population's mean state the rows are told apart from.
    records = [
        SourceRecord(
            orjson.dumps({"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type.value, "ts": e.ts}),
            e.user_id.encode(),
            1,
            offset,
            received_at=NOW,
        )
        for offset, e in enumerate(shop[0][:4_000])
    ]
    for begin in range(0, len(records), 40):
        pipeline.process(records[begin : begin + 40], now=NOW)
    return pipeline, metrics


def _shoppers_of(pipeline: Pipeline, shop, item_id: str, category: str, users: int) -> None:
    """``users`` shoppers who browse three items of ``category`` and then pick ``item_id``."""
    peers = [r["item_id"] for r in shop[1] if r["category"] == category]
    offset = 0
    for user in range(users):
        for item in [*peers[user % 5 : user % 5 + 3], item_id]:
            offset += 1
            body = {"user_id": f"s{user}", "item_id": item, "event_type": "view", "ts": NOW - 1_000 + offset}
            record = SourceRecord(orjson.dumps(body), f"s{user}".encode(), 0, offset, received_at=NOW)
            assert not pipeline.process([record], now=NOW).dead_letters


@pytest.mark.parametrize("learning_events", [32, 0])
def test_a_new_items_shoppers_pull_its_row_from_its_text_to_what_they_browse(
    artifacts: ModelArtifacts, shop, learning_events: int
) -> None:
    categories = sorted({r["category"] for r in shop[1]})
    text_of, bought_with = categories[0], categories[1]
    new = _new_item_like(shop, text_of, "new-1")
    pipeline, metrics = _catalogued(artifacts, shop, new, new_item_learning_events=learning_events)
    first_row = pipeline.items.row_of["new-1"]
    _shoppers_of(pipeline, shop, "new-1", bought_with, users=16)

    items = pipeline.items
    row = items.embeddings[items.row_of["new-1"]]
    trained = items.embeddings[: items.n_trained]
    in_category = {c: [items.row_of[r["item_id"]] for r in shop[1] if r["category"] == c] for c in categories}
    toward = {c: _cosine(row, trained[rows].mean(axis=0)) for c, rows in in_category.items()}
    moves = metrics.live_item_moves._value.get()
    if learning_events == 0:
        assert items.row_of["new-1"] == first_row and moves == 0
        assert toward[text_of] > toward[bought_with]  # still where its text put it
        return
    assert moves == 5  # at 1, 2, 4, 8 and 16 shoppers
    assert items.row_of["new-1"] == first_row + 5 and not items.index.is_available(first_row)
    assert toward[bought_with] > toward[text_of]  # its shoppers, not its title, now say what it is
    assert pipeline.primary.model.new_items.events_of("new-1") == 16


def test_a_shoppers_view_click_and_buy_of_a_new_item_count_once(artifacts: ModelArtifacts, shop) -> None:
    categories = sorted({r["category"] for r in shop[1]})
    new = _new_item_like(shop, categories[0], "new-1")
    pipeline, _ = _catalogued(artifacts, shop, new)
    peers = [r["item_id"] for r in shop[1] if r["category"] == categories[1]]
    funnel = [(peers[0], "view"), (peers[1], "view"), ("new-1", "view"), ("new-1", "click"), ("new-1", "buy")]
    for offset, (item, kind) in enumerate(funnel, start=1):
        body = {"user_id": "f", "item_id": item, "event_type": kind, "ts": NOW - 100 + offset}
        pipeline.process([SourceRecord(orjson.dumps(body), b"f", 2, offset, received_at=NOW)], now=NOW)
    two = [SourceRecord(orjson.dumps({"user_id": "g", "item_id": i, "event_type": k, "ts": NOW - 50 + o}), b"g", 2,
                        10 + o, received_at=NOW) for o, (i, k) in enumerate(funnel)]  # fmt: skip
    pipeline.process(two, now=NOW)  # the same funnel in one batch
    assert pipeline.primary.model.new_items.events_of("new-1") == 2
