"""The live catalog on the event path, without a broker: new items, availability, categories, explanations."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.events import SourceRecord
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.settings import Settings

NOW = time.time()


def catalog_items(records: list[dict]) -> list[CatalogItem]:
    return [
        CatalogItem(
            r["item_id"], r["title"], r["category"], r["price"], r["available"], r["ts"], tuple(r["attributes"])
        )
        for r in records
    ]


@pytest.fixture
def pipeline(artifacts: ModelArtifacts, shop) -> Pipeline:
    pipeline = Pipeline(Settings(top_k=20, random_seed=0), artifacts)
    items = catalog_items(shop[1])
    pipeline.apply_catalog(items, pipeline.text_vectors(items))
    return pipeline


class Stream:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.offset = 0

    def send(self, user: str, item: str, kind: str = "view", **extra) -> dict:
        self.offset += 1
        body = {"user_id": user, "item_id": item, "event_type": kind, "ts": NOW - 100 + self.offset, **extra}
        record = SourceRecord(orjson.dumps(body), user.encode(), 0, self.offset, received_at=NOW)
        (message,) = self.pipeline.process([record], now=NOW).recommendations
        return orjson.loads(message.value)


def category_items(shop, category: str) -> list[str]:
    return [r["item_id"] for r in shop[1] if r["category"] == category]


def test_a_new_item_is_indexed_from_its_content_and_reaches_a_user_of_its_category(pipeline: Pipeline, shop) -> None:
    template = shop[1][0]
    peers = category_items(shop, template["category"])
    new = CatalogItem("new-1", template["title"], template["category"], 9.0, True, NOW, tuple(template["attributes"]))
    changes = pipeline.apply_catalog([new], pipeline.text_vectors([new]))
    assert changes == {"new": 1}
    assert pipeline.items.row_of["new-1"] == pipeline.items.n_trained  # the first live row
    assert len(pipeline.items.index) == pipeline.items.n_trained + 1
    stream = Stream(pipeline)
    for item in peers[1:6]:
        rec = stream.send("fan", item)
    shown = {i["item_id"]: i for i in rec["items"]}
    assert "new-1" in shown
    assert shown["new-1"]["explore"] is True and shown["new-1"]["reason_code"] == "explore"
    # Its embedding lies in the category's part of the space: it is retrieved for this user, not by chance.
    assert pipeline.category_of("new-1") == template["category"]


def test_an_item_marked_unavailable_disappears_at_once_and_returns_when_restocked(pipeline: Pipeline, shop) -> None:
    stream = Stream(pipeline)
    rec = stream.send("u1", shop[1][3]["item_id"])
    first = rec["items"][0]["item_id"]
    record = next(r for r in shop[1] if r["item_id"] == first)
    (held,) = catalog_items([record])
    withdrawn = CatalogItem(held.item_id, held.title, held.category, held.price, False, NOW, held.attributes)
    assert pipeline.apply_catalog([withdrawn], {}) == {"availability": 1}
    assert pipeline.items.index.n_unavailable == 1
    assert first not in {i["item_id"] for i in stream.send("u1", shop[1][3]["item_id"])["items"]}
    restocked = CatalogItem(held.item_id, held.title, held.category, held.price, True, NOW + 1, held.attributes)
    pipeline.apply_catalog([restocked], {})
    assert pipeline.items.index.n_unavailable == 0
    pipeline.remove_catalog_item(first)  # a tombstone on the topic
    assert first not in {i["item_id"] for i in stream.send("u2", shop[1][3]["item_id"])["items"]}


def test_a_first_event_gets_trending_items_of_its_category_explained(pipeline: Pipeline, shop) -> None:
    stream = Stream(pipeline)
    category = shop[1][0]["category"]
    peers = category_items(shop, category)
    for n in range(6):  # other shoppers make one item of the category trend
        stream.send(f"other{n}", peers[2], "buy")
    rec = stream.send("newcomer", peers[0])
    codes = {i["item_id"]: i["reason_code"] for i in rec["items"]}
    assert codes.get(peers[2]) == f"trending_in:{category}"
    assert all(i["reason"] for i in rec["items"])


def test_deny_lists_and_request_exclusions_are_applied(artifacts: ModelArtifacts, shop) -> None:
    items = [r["item_id"] for r in shop[1]]
    settings = Settings(
        top_k=20, exploration_share=0, deny_items=items[:50], tenant_deny_items={"shop-b": items[50:100]}
    )
    stream = Stream(Pipeline(settings, artifacts))
    for n in range(20):
        stream.send(f"w{n}", items[n % 120], "buy")  # everything trends
    plain = {i["item_id"] for i in stream.send("a", items[200])["items"]}
    tenant = {i["item_id"] for i in stream.send("b", items[200], context={"tenant": "shop-b"})["items"]}
    request = stream.send("c", items[200], context={"exclude_items": sorted(plain)})["items"]
    assert plain and not plain & set(items[:50])
    assert tenant and not tenant & set(items[:100])
    assert request and not {i["item_id"] for i in request} & plain


def test_a_model_swap_keeps_items_added_live(pipeline: Pipeline, artifacts: ModelArtifacts, shop) -> None:
    template = shop[1][5]
    new = CatalogItem("new-2", template["title"], template["category"], 1.0, True, NOW, tuple(template["attributes"]))
    pipeline.apply_catalog([new], pipeline.text_vectors([new]))
    pipeline.use_model(artifacts)
    assert "new-2" in pipeline.items.row_of and pipeline.items.n_live == 1


def test_category_caps_and_diversity_change_the_list(artifacts: ModelArtifacts, shop, catalog_categories) -> None:
    def served(**knobs) -> list[str]:
        pipeline = Pipeline(Settings(top_k=10, exploration_share=0, **knobs), artifacts)
        items = catalog_items(shop[1])
        pipeline.apply_catalog(items, {})
        stream = Stream(pipeline)
        for item in category_items(shop, shop[1][0]["category"])[:5]:
            rec = stream.send("u", item)
        return [i["item_id"] for i in rec["items"]]

    capped = served(max_per_category=2)
    counts: dict[str, int] = {}
    for item in capped:
        counts[catalog_categories[item]] = counts.get(catalog_categories[item], 0) + 1
    assert len(capped) == 10 and max(counts.values()) <= 2
    assert served(diversity_weight=0.7) != served()


def test_a_content_vector_is_as_long_as_the_projection_is_trustworthy(pipeline: Pipeline, shop) -> None:
    template = shop[1][7]
    new = CatalogItem("new-3", template["title"], template["category"], 1.0, True, NOW, tuple(template["attributes"]))
    pipeline.apply_catalog([new], pipeline.text_vectors([new]))
    projection = pipeline.artifacts.content
    cosine = projection.quality["holdout_cosine"]
    assert 0 < cosine < 1
    vector = pipeline.items.embeddings[pipeline.items.row_of["new-3"]]
    assert np.linalg.norm(vector) == pytest.approx(projection.target_norm * cosine, rel=1e-4)


def test_item_clusters_stand_in_for_categories_without_a_catalog(artifacts: ModelArtifacts) -> None:
    # No catalog applied. The personal sources propose a handful of items, so that the cluster's trending item below
    # reaches the list through its cluster, not because it also resembles the item viewed.
    settings = Settings(top_k=20, exploration_share=0, n_candidates=5, covisitation_candidates=0, item_knn_candidates=0)
    pipeline = Pipeline(settings, artifacts)
    item = artifacts.item_ids[4]
    cluster = artifacts.segments.item_cluster[artifacts.row_of[item]]
    assert pipeline.category_of(item) == f"cluster-{cluster}"
    members = [i for i in artifacts.item_ids if i != item and pipeline.category_of(i) == f"cluster-{cluster}"]
    embeddings = pipeline.items.unit_embeddings
    similarity = embeddings[[pipeline.items.row_of[i] for i in members]] @ embeddings[pipeline.items.row_of[item]]
    peer = members[int(np.argmin(similarity))]  # the cluster's member least like the item viewed
    stream = Stream(pipeline)
    for n in range(5):
        stream.send(f"buyer{n}", peer, "buy")
    first = stream.send("newcomer", item)
    codes = {i["item_id"]: i["reason_code"] for i in first["items"]}
    assert codes.get(peer) == f"trending_in:cluster-{cluster}"
    assert first["segment"] is not None  # one known item places the user in a segment


def test_a_projection_with_field_columns_places_a_new_item_from_its_record(artifacts: ModelArtifacts, shop) -> None:
    from dataclasses import replace

    from streamrec.model.content import ContentProjection, item_text, load_encoder

    trained = [record for record in shop[1] if record["item_id"] in artifacts.row_of]
    encoder = load_encoder("hashed-512")
    text = encoder.encode([item_text(record) for record in trained])
    rows = artifacts.item_embeddings[[artifacts.row_of[record["item_id"]] for record in trained]]
    with_fields = ContentProjection.fit(text, rows, encoder.name, records=trained, max_field_values=500)
    assert len(with_fields.fields) > 0
    pipeline = Pipeline(Settings(top_k=20, random_seed=0), replace(artifacts, content=with_fields))
    template = trained[0]
    new = CatalogItem("new-4", template["title"], template["category"], 5.0, True, NOW, tuple(template["attributes"]))
    pipeline.apply_catalog([new], pipeline.text_vectors([new]))
    # The worker reads the item's category and attributes into the projection's field columns, as training did.
    expected = with_fields.served_rows(encoder.encode([item_text(new.content())]), [new.content()])[0]
    served = pipeline.items.embeddings[pipeline.items.row_of["new-4"]]
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    learned = artifacts.item_embeddings[artifacts.row_of[template["item_id"]]]
    assert float(served @ learned) / (np.linalg.norm(served) * np.linalg.norm(learned)) > 0.3
