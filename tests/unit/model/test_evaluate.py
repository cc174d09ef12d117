"""The offline evaluation protocols on hand-computed cases, and an offline evaluation of the shared test model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.evaluate import (
    TARGET_KINDS,
    ann_recall,
    by_target_kind,
    coverage,
    evaluate_offline,
    format_table,
    list_novelty,
    sample_negatives,
    target_kinds,
    top_items,
    unknown_target_users,
)
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.metrics import intra_list_distances
from streamrec.model.splits import leave_one_out

MODELS = ("model", "retrieval", "item_knn", "popularity")
PROTOCOLS = ("full", "sampled_uniform_99", "sampled_popularity_99")
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


# --- hand-computed protocol cases ------------------------------------------------------------------------------


def test_negatives_are_never_interacted_distinct_and_reproducible() -> None:
    n_items = 50
    rng = np.random.default_rng(1)
    interacted = [rng.choice(n_items, size, replace=False) for size in rng.integers(1, 30, 200)]
    negatives = sample_negatives(interacted, n_items, 20, np.random.default_rng(7))
    assert negatives.shape == (200, 20)
    for row, held in zip(negatives, interacted, strict=True):
        assert len(set(row.tolist())) == 20
        assert not set(row.tolist()) & set(held.tolist())
        assert row.min() >= 0 and row.max() < n_items
    np.testing.assert_array_equal(negatives, sample_negatives(interacted, n_items, 20, np.random.default_rng(7)))


def test_negatives_pad_when_the_catalogue_runs_out() -> None:
    negatives = sample_negatives([np.arange(8)], 10, 5, np.random.default_rng(0))
    assert sorted(negatives[0, :2].tolist()) == [8, 9]
    assert negatives[0, 2:].tolist() == [-1, -1, -1]


def test_popularity_negatives_follow_the_weights() -> None:
    n_items = 20
    weights = np.zeros(n_items)
    weights[10:] = np.arange(1, 11)  # items 0..9 are never drawn; item 19 ten times as likely as item 10
    interacted = [np.array([19]) for _ in range(3000)]
    negatives = sample_negatives(interacted, n_items, 2, np.random.default_rng(3), weights=weights)
    drawn = np.bincount(negatives.ravel(), minlength=n_items)
    assert drawn[:10].sum() == 0
    assert drawn[19] == 0  # held by every user
    assert drawn[18] > 3 * drawn[10]
    with pytest.raises(ValueError):
        sample_negatives(interacted, n_items, 2, np.random.default_rng(3), weights=np.zeros(n_items))


def test_beyond_accuracy_measures_by_hand() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.8, 0.1, 0.2, 0.3]])
    lists = top_items(scores, [np.array([1]), np.array([], dtype=np.int64)], 2)
    assert lists.tolist() == [[3, 2], [0, 3]]
    assert coverage(lists, 4) == 0.75
    assert top_items(scores, [np.array([0, 1, 2]), np.array([0])], 2).tolist() == [[3, -1], [3, 2]]

    unit = np.eye(4)
    unit[3] = unit[2]  # items 2 and 3 point the same way
    np.testing.assert_allclose(intra_list_distances(np.array([[0, 1], [2, 3], [0, -1]]), unit), [1.0, 0.0, np.nan])

    information = -np.log2(np.array([0.5, 0.25, 0.125, 1.0]))
    np.testing.assert_allclose(list_novelty(np.array([[0, 1], [2, -1]]), information), [1.5, 3.0])


# --- the whole evaluation on the shared test model --------------------------------------------------------------


@pytest.fixture(scope="module")
def log(shop: tuple[list[Event], list[dict]]) -> EventLog:
    return EventLog.from_events(shop[0], name="test-shop")


@pytest.fixture(scope="module")
def report(log: EventLog, artifacts: ModelArtifacts) -> dict[str, Any]:
    offline = evaluate_offline(log, artifacts, seed=0)
    return offline.report | ann_recall(artifacts, offline.retrieval_queries, "offline interest vectors")


def test_report_has_every_model_protocol_and_measure(report: dict[str, Any], artifacts: ModelArtifacts) -> None:
    assert report["dataset"] == "test-shop"
    assert isinstance(report["protocol"], str) and "leave-one-out" in report["protocol"]
    assert report["n_items"] == len(artifacts.item_ids)
    assert 0 < report["n_users"] <= 400
    for name in MODELS:
        result = report["results"][name]
        for protocol in PROTOCOLS:
            assert set(METRICS) <= set(result[protocol])
            values = [result[protocol][metric] for metric in METRICS]
            assert all(0.0 <= value <= 1.0 for value in values)
            assert result[protocol]["HR@5"] <= result[protocol]["HR@10"] <= result[protocol]["HR@20"]
            assert result[protocol]["NDCG@10"] <= result[protocol]["HR@10"]
        assert 0.0 < result["coverage"] <= 1.0
        assert 0.0 <= result["intra_list_diversity@10"] <= 2.0
        assert result["novelty@10"] > 0.0
    assert 0.0 <= report["ann_recall@200"] <= 1.0
    orjson.dumps(report)  # JSON-ready as it is


def test_keeping_the_history_in_the_ranking_only_adds_competitors(report: dict[str, Any]) -> None:
    ranker = report["results"]["ranker"]
    assert ranker["full_history_kept"]["HR@10"] <= ranker["full"]["HR@10"]
    for protocol in ("full", "full_history_kept"):
        kinds = ranker[f"{protocol}_by_target_kind"]
        assert sum(kind["users"] for kind in kinds.values()) == report["n_users"]


def test_model_beats_popularity_and_sampling_is_easier_than_full_ranking(report: dict[str, Any]) -> None:
    results = report["results"]
    assert results["model"]["full"]["HR@10"] > results["popularity"]["full"]["HR@10"]
    assert results["model"]["full"]["NDCG@10"] > results["popularity"]["full"]["NDCG@10"]
    for name in MODELS:
        # 99 negatives are a subset of the catalogue: the target can only rank higher among them.
        assert results[name]["sampled_uniform_99"]["HR@10"] >= results[name]["full"]["HR@10"]
    # Popularity recommends the same few items to everyone.
    assert results["popularity"]["coverage"] < results["model"]["coverage"]


def test_the_index_is_measured_on_the_offline_interest_vectors(report: dict[str, Any]) -> None:
    assert "served" not in report
    assert 0.0 <= report["ann_recall@200"] <= 1.0
    assert "offline" in report["ann_recall_queries"]


def test_the_report_carries_how_the_version_was_trained(report: dict[str, Any], artifacts: ModelArtifacts) -> None:
    training = report["training"]
    assert training["seconds"] == artifacts.manifest["training"]["seconds"] > 0
    assert 1 <= training["best_epoch"] <= training["epochs"]
    refit = artifacts.manifest["training"].get("refit")
    assert training["trained_before"] == ("test" if refit else "validation")
    assert training["refit_epochs"] == (refit["epochs"] if refit else None)
    assert f"{training['epochs']} epochs (best {training['best_epoch']})" in format_table(report)


def test_targets_outside_the_vocabulary_are_misses_for_every_model(
    shop: tuple[list[Event], list[dict]], log: EventLog, artifacts: ModelArtifacts, report: dict[str, Any]
) -> None:
    """The same users for every row: a real target the model cannot know is a miss, not a swapped target."""
    assert report["unknown_target_users"] == 0 and report["dropped_users_few_known_interactions"] == 0
    users = set(leave_one_out(log, artifacts.row_of).users.tolist())
    half = set(sorted(users)[::2])
    partial = evaluate_offline(EventLog.from_events(_with_unknown_last_item(shop[0], half)), artifacts).report
    assert partial["n_users"] == report["n_users"] and partial["unknown_target_users"] == len(half)
    for name, result in partial["results"].items():
        assert result["full"]["HR@20"] <= report["results"][name]["full"]["HR@20"]
    assert "outside the model's vocabulary" in format_table(partial)


def _with_unknown_last_item(events: list[Event], users: set[str]) -> list[Event]:
    """``events`` plus, for each of ``users``, one last view of an item no model has seen."""
    last_ts: dict[str, float] = {}
    for event in events:
        last_ts[event.user_id] = max(last_ts.get(event.user_id, -math.inf), event.ts)
    return [*events, *(Event(user, "never-seen-item", EventType.VIEW, last_ts[user] + 1.0) for user in sorted(users))]


def test_as_served_a_target_the_user_bought_before_is_a_miss(
    shop: tuple[list[Event], list[dict]], artifacts: ModelArtifacts
) -> None:
    """The pipeline never lists an item the user bought: offline "as served" counts that target as a miss, while
    with the history kept it competes like any item."""
    partial = evaluate_offline(EventLog.from_events(_with_target_bought_first(shop[0])), artifacts).report
    model = partial["results"]["model"]
    assert model["full_history_kept"]["HR@20"] > 0.1
    for result in partial["results"].values():
        if "full_as_served" in result:
            assert result["full_as_served"]["HR@20"] == 0.0


def test_as_served_ranks_every_history_item_but_the_last(report: dict[str, Any]) -> None:
    ranker = report["results"]["ranker"]
    assert set(ranker["full_as_served_by_target_kind"]) == {"new_item", "earlier_item", "outside_vocabulary"}
    # New-item targets gain no excluded competitor in either protocol but the last item: at least as high.
    new_item = ranker["full_as_served_by_target_kind"]["new_item"]
    assert new_item["HR@10"] >= ranker["full_history_kept_by_target_kind"]["new_item"]["HR@10"]


def _with_target_bought_first(events: list[Event]) -> list[Event]:
    """``events`` with every user's last item also bought before the user's first event."""
    first: dict[str, Event] = {}
    last: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.ts):
        first.setdefault(event.user_id, event)
        last[event.user_id] = event
    bought = [Event(user, last[user].item_id, EventType.BUY, event.ts - 1.0) for user, event in first.items()]
    return [*bought, *events]


def test_unknown_target_users_flags_a_last_event_outside_the_vocabulary() -> None:
    log = EventLog.from_events(
        [
            *(Event("a", item, EventType.VIEW, float(t)) for t, item in enumerate(["x", "y", "z", "rare"])),
            *(Event("b", item, EventType.VIEW, float(t)) for t, item in enumerate(["x", "rare", "y", "z"])),
        ]
    )
    row_of = {"x": 0, "y": 1, "z": 2}
    split = leave_one_out(log, row_of)
    assert split.users.tolist() == ["a", "b"]
    assert split.targets("test").tolist() == [2, 2]  # a's real target "rare" was silently replaced by "z"
    assert unknown_target_users(log, split, row_of).tolist() == [True, False]


def test_each_test_target_is_told_new_or_a_revisit() -> None:
    events = {"new": ["x", "y", "z", "w"], "earlier": ["x", "y", "z", "x"], "repeated": ["x", "y", "z", "z", "y"]}
    log = EventLog.from_events(
        [Event(user, item, EventType.VIEW, float(t)) for user, items in events.items() for t, item in enumerate(items)]
    )
    split = leave_one_out(log, {"w": 0, "x": 1, "y": 2, "z": 3})
    kinds = dict(zip(split.users.tolist(), target_kinds(split).tolist(), strict=True))
    assert {user: TARGET_KINDS[code] for user, code in kinds.items()} == {
        "new": "new_item", "earlier": "earlier_item", "repeated": "earlier_item",
    }  # fmt: skip
    rank_of = {"new": 0, "earlier": 15, "repeated": 3}
    ranks = np.array([rank_of[user] for user in split.users.tolist()])
    by_kind = by_target_kind(ranks, target_kinds(split))
    assert by_kind["new_item"] == {"users": 1, "HR@10": 1.0, "NDCG@10": 1.0}
    assert by_kind["earlier_item"] == {"users": 2, "HR@10": 0.5, "NDCG@10": round(0.5 / math.log2(5), 6)}
