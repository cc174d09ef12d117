"""The whole event path without a broker: raw records in, messages out."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import orjson
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import ItemKNNModel
from streamrec.stream.catalog import CatalogItem
from streamrec.stream.events import SourceRecord
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.results import ORIGINAL_SIZE_HEADER, REASON_HEADER, SOURCE_HEADER, TRUNCATED_HEADER
from streamrec.stream.settings import Settings
from streamrec.stream.user_state import decode_state

NOW = time.time()
PERSONAL = {"ann", "covisitation", "item_knn"}  # candidate sources of the personalised ranking
TRENDING = {"trending", "trending_in", "trending_segment"}


@pytest.fixture
def pipeline(artifacts: ModelArtifacts) -> Pipeline:
    return Pipeline(Settings(top_k=10, n_candidates=50, exploration_share=0.0, random_seed=0), artifacts)


class Records:
    """Builds source records with increasing offsets, as a partition would deliver them."""

    def __init__(self) -> None:
        self.offset = 0

    def raw(self, value: bytes | None, key: bytes | None = None, partition: int = 0) -> SourceRecord:
        self.offset += 1
        return SourceRecord(value, key, partition, self.offset, received_at=NOW)

    def event(self, user: str, item: str, kind: str = "view", ts: float = NOW, partition: int = 0, **extra):
        body = {"user_id": user, "item_id": item, "event_type": kind, "ts": ts, **extra}
        return self.raw(orjson.dumps(body), user.encode(), partition)


def recommendations(result) -> dict[str, dict]:
    return {m.key.decode(): orjson.loads(m.value) for m in result.recommendations}


def test_bad_records_are_dead_lettered_with_reasons_and_good_ones_still_served(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    item = artifacts.item_ids[0]
    batch = [
        records.raw(b"{oops"),
        records.event("u1", item, "view", event_id="e1"),
        records.raw(orjson.dumps({"user_id": "u2", "item_id": "x", "event_type": "like", "ts": NOW}), b"u2"),
    ]
    result = pipeline.process(batch, now=NOW)
    assert [dict(m.headers)[REASON_HEADER] for m in result.dead_letters] == [b"not_json", b"unknown_event_type"]
    assert [m.value for m in result.dead_letters] == [batch[0].value, batch[2].value]
    assert list(recommendations(result)) == ["u1"]
    assert result.next_offsets == {0: batch[-1].offset + 1}  # dead letters count as processed


def test_one_recommendation_per_user_per_batch_answering_the_latest_event(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    a, b, c = artifacts.item_ids[:3]
    batch = [
        records.event("u1", a, "view", ts=NOW - 3, event_id="first"),
        records.event("u1", b, "buy", ts=NOW - 2, event_id="second"),
        records.event("u2", c, "cart", ts=NOW - 1, event_id="other"),
    ]
    recs = recommendations(pipeline.process(batch, now=NOW))
    assert recs["u1"]["trigger"]["event_id"] == "second"
    assert recs["u2"]["trigger"]["event_id"] == "other"
    for user, rec in recs.items():
        assert len(rec["items"]) == 10
        ids = [i["item_id"] for i in rec["items"]]
        assert len(set(ids)) == 10
        assert rec["trigger"]["item_id"] not in ids
        assert rec["model_version"] == artifacts.version, user
    assert b not in {i["item_id"] for i in recs["u1"]["items"]}


def test_purchases_stay_excluded_in_later_batches(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    first = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[5], "click")], now=NOW))
    favourite = first["u1"]["items"][0]["item_id"]
    pipeline.process([records.event("u1", favourite, "buy")], now=NOW)
    later = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[5], "view")], now=NOW))
    assert favourite not in {i["item_id"] for i in later["u1"]["items"]}


def test_user_without_known_items_gets_trending(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    popular = artifacts.item_ids[7]
    warmup = [records.event(f"w{n}", popular, "buy") for n in range(5)]
    pipeline.process(warmup, now=NOW)
    rec = recommendations(pipeline.process([records.event("newbie", "unknown-item")], now=NOW))["newbie"]
    first = rec["items"][0]
    assert (first["item_id"], first["reason_code"], first["source"], first["explore"]) == (
        popular,
        "trending",
        "trending",
        False,
    )
    assert "unknown-item" not in {i["item_id"] for i in rec["items"]}


def test_redelivered_events_are_not_applied_twice(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    event = records.event("u1", artifacts.item_ids[0], "buy")
    pipeline.process([event], now=NOW)
    state = pipeline.store.get(0, "u1")
    assert state is not None
    vector = state.vector.copy()
    again = pipeline.process([event], now=NOW)  # e.g. the commit was lost and the broker redelivers
    assert state.n_events == 1
    np.testing.assert_array_equal(state.vector, vector)
    assert len(again.recommendations) == 1  # the redelivered event is still answered


def test_state_updates_go_to_the_input_partition_and_restore(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    result = pipeline.process([records.event("u9", artifacts.item_ids[1], "cart", partition=3)], now=NOW)
    (update,) = result.state_updates
    assert (update.topic, update.key, update.partition) == (Settings().state_topic, b"u9", 3)
    restored = decode_state(update.value, max_recent_items=50)
    fresh = Pipeline(Settings(top_k=10, n_candidates=50), artifacts)
    fresh.restore_state(3, [restored])
    assert fresh.store.get(3, "u9").n_events == 1
    fresh.drop_partitions([3])
    assert fresh.store.get(3, "u9") is None


def test_a_failing_ranker_degrades_to_trending_instead_of_losing_the_batch(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    pipeline.process([records.event("w", artifacts.item_ids[2], "buy")], now=NOW)

    class Broken:
        def score(self, *_):
            raise RuntimeError("boom")

    pipeline.primary.model.ranker = Broken()
    rec = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[3], "view")], now=NOW))["u1"]
    assert rec["items"] and {i["source"] for i in rec["items"]} <= TRENDING


def test_co_visitation_learned_from_the_stream_adds_candidates(artifacts) -> None:
    a, b = artifacts.item_ids[10], artifacts.item_ids[11]

    def served_after_a(covisitation: int) -> dict:
        # The stream's co-visitation alone: without the model's item-kNN source and blend.
        plain = replace(artifacts, item_knn=None, blend_weight=0.0)
        settings = Settings(
            top_k=10,
            n_candidates=1,
            covisitation_candidates=covisitation,
            cold_start_prior_events=0,
            exploration_share=0,
        )
        pipeline = Pipeline(settings, plain)
        records = Records()
        for n in range(20):  # other shoppers go from a to b
            pipeline.process([records.event(f"s{n}", a, "view", ts=NOW - 60)], now=NOW)
            pipeline.process([records.event(f"s{n}", b, "view", ts=NOW - 59)], now=NOW)
        return recommendations(pipeline.process([records.event("u1", a, "view")], now=NOW))["u1"]

    with_source = served_after_a(covisitation=50)
    assert {"item_id": b, "source": "covisitation"}.items() <= next(
        i for i in with_source["items"] if i["item_id"] == b
    ).items()
    without = served_after_a(covisitation=0)
    assert sum(i["source"] in PERSONAL for i in without["items"]) == 1  # only the single ANN candidate


def test_the_item_knn_blend_lifts_an_item_co_occurring_with_the_last_one(artifacts) -> None:
    n_items = len(artifacts.item_ids)
    plain = replace(artifacts, item_knn=None, blend_weight=0.0)

    def served(model: ModelArtifacts) -> list[str]:
        settings = Settings(
            top_k=10, n_candidates=20, covisitation_candidates=0, cold_start_prior_events=0, exploration_share=0
        )
        pipeline = Pipeline(settings, model)
        records = Records()
        pipeline.process([records.event("u1", artifacts.item_ids[5], "view", ts=NOW - 2)], now=NOW)
        rec = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[7], "view")], now=NOW))
        return [i["item_id"] for i in rec["u1"]["items"] if i["source"] in PERSONAL]

    without = served(plain)
    # An item the ranker alone does not put first, strongly co-occurring with the user's last item (row 7).
    lifted = next(row for row in range(n_items) if row not in (5, 7) and artifacts.item_ids[row] != without[0])
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    indptr[8:] = 1  # row 7 holds the one entry
    knn = ItemKNNModel(indptr, np.array([lifted], dtype=np.int32), np.array([1.0], dtype=np.float32))
    with_blend = served(replace(artifacts, item_knn=knn, blend_weight=100.0))
    assert with_blend[0] == artifacts.item_ids[lifted]
    before = without.index(artifacts.item_ids[lifted]) if artifacts.item_ids[lifted] in without else len(without)
    assert before > 0
    # A zero weight serves the ranker alone, item-kNN file or not.
    assert served(replace(artifacts, item_knn=knn, blend_weight=0.0)) == without


def test_exploration_never_shortens_a_list(artifacts) -> None:
    # Half the slots explore, and an item shown once is no longer explored: the pool of explorable items runs
    # dry within a few events, and the exploited ranking must fill the slots exploration cannot.
    settings = Settings(top_k=10, exploration_share=0.5, exploration_max_impressions=1, random_seed=0)
    pipeline = Pipeline(settings, artifacts)
    records = Records()
    lengths, explored = [], 0
    for n in range(16):
        rec = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[n % 2], "view")], now=NOW))["u1"]
        lengths.append(len(rec["items"]))
        explored += sum(item["explore"] for item in rec["items"])
    assert lengths == [10] * 16
    assert 0 < explored < 80  # exploration happened, and ran out


def test_a_category_cap_refills_from_further_down_without_reordering(artifacts) -> None:
    def served(categories: dict[str, str], **knobs) -> list[str]:
        pipeline = Pipeline(Settings(exploration_share=0, **knobs), artifacts)
        pipeline.apply_catalog([CatalogItem(i, "", c, None, True, NOW) for i, c in categories.items()], {})
        records = Records()
        for n in range(4):
            rec = recommendations(pipeline.process([records.event("u1", artifacts.item_ids[n], "view")], now=NOW))
        return [item["item_id"] for item in rec["u1"]["items"]]

    everything = {item: "common" for item in artifacts.item_ids}
    ranking = served(everything, top_k=200)
    # One category for the whole head of the ranking; later items each in a category of their own, so a cap
    # of one must refill nine slots from beyond the pool.
    categories = {**everything, **{item: f"solo-{item}" for item in ranking[60:90]}}
    capped = served(categories, top_k=10, max_per_category=1)
    assert len(capped) == 10
    assert capped[0] == ranking[0]  # refills, scored on other scales, never jump ahead of the pool
    assert [ranking.index(item) for item in capped[1:]] == sorted(ranking.index(item) for item in capped[1:])


def test_an_oversized_message_is_dead_lettered_cut_to_size_with_its_original_size(artifacts) -> None:
    """A payload the broker accepted must never produce a dead letter too large to deliver (a poison pill)."""
    pipeline = Pipeline(Settings(top_k=10, dead_letter_max_bytes=4096, exploration_share=0.0), artifacts)
    records = Records()
    huge = b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "pad": "' + b"x" * 1_200_000 + b'"}'
    batch = [records.raw(huge, b"u1"), records.raw(b"[1]", b"k" * 5000), records.raw(b"{oops", b"u2")]
    dead = pipeline.process(batch, now=NOW).dead_letters
    first, second, third = (dict(m.headers) for m in dead)
    assert first[REASON_HEADER] == b"payload_too_large"
    assert dead[0].value == huge[:4096] and len(dead[0].value) == 4096
    assert (first[TRUNCATED_HEADER], first[ORIGINAL_SIZE_HEADER]) == (b"value", str(len(huge)).encode())
    assert first[SOURCE_HEADER] == f"events/0/{batch[0].offset}".encode()
    assert second[TRUNCATED_HEADER] == b"key" and len(dead[1].key) == 1024
    assert TRUNCATED_HEADER not in third and dead[2].value == b"{oops"  # small ones stay whole


def test_forget_erases_the_user_and_tombstones_state_and_recommendations(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    a, b = artifacts.item_ids[:2]
    pipeline.process([records.event("u1", a, "buy", partition=2), records.event("u2", a, partition=2)], now=NOW)
    before = records.event("u1", b, "view", partition=2)
    forget = records.raw(orjson.dumps({"command": "forget", "user_id": "u1", "request_id": "gdpr-1"}), b"u1", 2)
    result = pipeline.process([before, forget], now=NOW)
    assert pipeline.store.get(2, "u1") is None and pipeline.store.get(2, "u2") is not None
    assert result.forgotten == ["u1"]
    assert [(m.topic, m.key, m.value, m.partition) for m in result.state_updates] == [
        (Settings().state_topic, b"u1", None, 2)
    ]
    assert [(m.key, m.value) for m in result.recommendations] == [(b"u1", None)]  # earlier event not answered
    assert not result.dead_letters and result.next_offsets == {2: forget.offset + 1}

    # An event after the forget starts afresh: nothing of the old history (the purchase) comes back.
    again = pipeline.process([records.event("u1", b, "view", partition=2)], now=NOW)
    state = pipeline.store.get(2, "u1")
    assert state.n_events == 1 and not state.bought
    assert recommendations(again)["u1"]["trigger"]["item_id"] == b


def test_events_after_a_forget_in_the_same_batch_replace_the_tombstones_with_a_fresh_state(
    pipeline: Pipeline, artifacts
) -> None:
    records = Records()
    a, b = artifacts.item_ids[:2]
    pipeline.process([records.event("u1", a, "buy")], now=NOW)
    forget = records.raw(orjson.dumps({"command": "forget", "user_id": "u1"}), b"u1")
    result = pipeline.process([forget, records.event("u1", b, "view", event_id="after")], now=NOW)
    (update,) = result.state_updates
    assert decode_state(update.value, 50).n_events == 1  # one message per key: the new state supersedes
    assert recommendations(result)["u1"]["trigger"]["event_id"] == "after"
    assert a not in decode_state(update.value, 50).bought


def test_restored_states_with_a_vector_of_the_wrong_size_are_rebuilt_not_trusted(pipeline: Pipeline, artifacts) -> None:
    records = Records()
    result = pipeline.process([records.event("u3", artifacts.item_ids[1], "cart")], now=NOW)
    state = decode_state(result.state_updates[0].value, 50)
    state.vector = np.ones(3, dtype=np.float32)  # not this model's dimension
    fresh = Pipeline(Settings(top_k=10, n_candidates=50), artifacts)
    fresh.restore_state(0, [state])
    later = fresh.process([records.event("u3", artifacts.item_ids[2], "view")], now=NOW)
    assert fresh.store.get(0, "u3").vector.shape == (artifacts.dim,)
    assert len(recommendations(later)["u3"]["items"]) == 10


def test_idle_users_are_evicted_and_tombstoned_and_active_ones_kept(artifacts: ModelArtifacts) -> None:
    day = 86_400.0
    pipeline = Pipeline(Settings(user_idle_ttl_s=2 * day, exploration_share=0.0, random_seed=0), artifacts)
    records = Records()
    a, b = artifacts.item_ids[:2]
    pipeline.process([records.event("u1", a, partition=1), records.event("u2", a, partition=3)], now=NOW)
    pipeline.process([records.event("u2", b, partition=3)], now=NOW + 1.5 * day)

    result = pipeline.process([records.event("u3", b, partition=1)], now=NOW + 2.5 * day)

    # u1 was idle 2.5 days: gone from memory, its changelog record tombstoned; u2 (1 day idle) and u3 stay.
    assert pipeline.store.get(1, "u1") is None
    assert pipeline.store.get(3, "u2") is not None and pipeline.store.get(1, "u3") is not None
    tombstones = [(m.key, m.partition) for m in result.state_updates if m.value is None]
    assert tombstones == [(b"u1", 1)]
    assert [m.key for m in result.recommendations] == [b"u3"]  # an evicted user's last list stays valid

    # A later event starts the evicted user afresh.
    pipeline.process([records.event("u1", b, partition=1)], now=NOW + 3 * day)
    assert pipeline.store.get(1, "u1").n_events == 1


def test_without_a_ttl_no_user_is_evicted(artifacts: ModelArtifacts) -> None:
    pipeline = Pipeline(Settings(user_idle_ttl_s=None), artifacts)
    records = Records()
    pipeline.process([records.event("u1", artifacts.item_ids[0])], now=NOW)
    result = pipeline.process([records.event("u2", artifacts.item_ids[1])], now=NOW + 1e9)
    assert pipeline.store.get(0, "u1") is not None
    assert all(m.value is not None for m in result.state_updates)


def test_a_users_list_does_not_depend_on_who_else_is_in_the_batch(artifacts: ModelArtifacts) -> None:
    # Lists are built and explained for a whole batch at once: each must still be the user's own.
    def lists(batches: list[list[tuple[str, str, str]]]) -> dict[str, dict]:
        pipeline = Pipeline(Settings(top_k=10, exploration_share=0.0, random_seed=0), artifacts)
        records = Records()
        out: dict[str, dict] = {}
        for batch in batches:
            result = pipeline.process([records.event(*event) for event in batch], now=NOW)
            out.update(recommendations(result))
        return out

    items = artifacts.item_ids
    history = [("u1", items[0], "view"), ("u1", items[1], "cart")]
    others = [("u2", items[2], "buy"), ("u3", items[3], "view"), ("u4", items[4], "click")]
    # The same events in the same order (trending counts them all), u1's events alone in their batches or not.
    alone = lists([others[:1], history[:1], others[1:], history[1:]])["u1"]
    crowded = lists([[*others[:1], history[0]], [*others[1:], history[1]]])["u1"]
    assert [item["item_id"] for item in crowded["items"]] == [item["item_id"] for item in alone["items"]]
    assert [item["reason_code"] for item in crowded["items"]] == [item["reason_code"] for item in alone["items"]]
    assert [item["score"] for item in crowded["items"]] == pytest.approx([item["score"] for item in alone["items"]])
