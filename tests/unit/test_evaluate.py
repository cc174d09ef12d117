"""The evaluation protocols on hand-computed cases, and a full evaluation of the shared test model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from model.artifacts import ModelArtifacts
from model.datasets import write_events_jsonl
from model.evaluate import (
    coverage,
    evaluate,
    format_table,
    full_ranks,
    intra_list_distances,
    list_novelty,
    sample_negatives,
    sampled_ranks,
    served_metrics,
    summarize,
    top_items,
    unknown_target_users,
)
from model.event_log import EventLog
from model.splits import leave_one_out
from stream.cli import app
from stream.events import Event, EventType
from stream.settings import Settings

MODELS = ("model", "retrieval", "item_knn", "popularity")
PROTOCOLS = ("full", "sampled_uniform_99", "sampled_popularity_99")
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


# --- hand-computed protocol cases ------------------------------------------------------------------------------


def test_sampled_ranks_and_metrics_by_hand() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.7, 0.3, 0.2],  # target 2 (0.5) vs negatives 0.9, 0.1, 0.3: one above
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 5 (0.6) vs negatives 0.1, 0.4 (and padding): first
        ]
    )
    negatives = np.array([[0, 1, 4], [0, 3, -1]])
    ranks = sampled_ranks(scores, np.array([2, 5]), negatives)
    assert ranks.tolist() == [1, 0]
    metrics = summarize(ranks, cutoffs=(1, 5))
    assert metrics["HR@1"] == 0.5
    assert metrics["HR@5"] == 1.0
    assert metrics["NDCG@1"] == 0.5
    assert metrics["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1) / 2, abs=1e-6)
    assert metrics["MRR"] == pytest.approx((1 / 2 + 1) / 2)


def test_a_nan_target_ranks_last_among_its_negatives() -> None:
    scores = np.array([[np.nan, 0.1, 0.2, 0.3]])
    assert sampled_ranks(scores, np.array([0]), np.array([[1, 2, 3]])).tolist() == [3]


def test_ties_count_against_nobody_when_strict_and_at_random_otherwise() -> None:
    # Every item scores 0, as item-kNN scores items unrelated to the user's recent ones.
    n_users = 4000
    scores = np.zeros((n_users, 100))
    negatives = np.tile(np.arange(1, 100), (n_users, 1))
    targets = np.zeros(n_users, dtype=np.int64)
    assert np.all(sampled_ranks(scores, targets, negatives) == 0)  # strict counting: every target "first"

    ranks = sampled_ranks(scores, targets, negatives, np.random.default_rng(0))
    assert ranks.min() >= 0 and ranks.max() <= 99
    assert summarize(ranks)["HR@10"] == pytest.approx(0.10, abs=0.015)  # 10 places out of 100, at random


def test_full_ranks_exclude_history_but_never_the_target_and_break_ties() -> None:
    scores = np.array(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # target 2; items 0 and 1 are history: nothing left above it
            [5.0, 4.0, 3.0, 2.0, 1.0],  # target 0 is in its own history: still rankable, first
            [1.0, 1.0, 1.0, 1.0, 0.0],  # target 0 ties with three items: rank 0..3
        ]
    )
    exclude = [np.array([0, 1]), np.array([0, 3]), np.array([], dtype=np.int64)]
    targets = np.array([2, 0, 0])
    strict, masked = full_ranks(scores, targets, exclude, None)
    assert strict.tolist() == [0, 0, 0]
    assert np.isneginf(masked[0, [0, 1]]).all() and np.isneginf(masked[1, [0, 3]]).all()
    assert scores[0, 0] == 5.0  # the input is not modified

    draws = np.stack([full_ranks(scores, targets, exclude, np.random.default_rng(s))[0] for s in range(200)])
    assert np.all(draws[:, :2] == 0)
    assert set(draws[:, 2].tolist()) == {0, 1, 2, 3}


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
    return evaluate(log, artifacts, seed=0, served=True)


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


def test_model_beats_popularity_and_sampling_is_easier_than_full_ranking(report: dict[str, Any]) -> None:
    results = report["results"]
    assert results["model"]["full"]["HR@10"] > results["popularity"]["full"]["HR@10"]
    assert results["model"]["full"]["NDCG@10"] > results["popularity"]["full"]["NDCG@10"]
    for name in MODELS:
        # 99 negatives are a subset of the catalogue: the target can only rank higher among them.
        assert results[name]["sampled_uniform_99"]["HR@10"] >= results[name]["full"]["HR@10"]
    # Popularity recommends the same few items to everyone.
    assert results["popularity"]["coverage"] < results["model"]["coverage"]


def test_served_metrics_come_from_the_pipeline(report: dict[str, Any]) -> None:
    served = report["served"]
    assert served["users"] == report["n_users"]
    assert served["users_with_recommendation"] == served["users"]
    assert served["dead_letters"] == 0
    assert served["events_replayed"] > served["users"]
    assert served["top_k"] == 20
    values = [served[key] for key in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR@20")]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert served["HR@5"] <= served["HR@10"] <= served["HR@20"]
    assert served["MRR@20"] <= served["HR@20"]
    assert "protocol" in served and "bought" in served["protocol"]


def test_served_replay_does_not_depend_on_the_batching(log: EventLog, artifacts: ModelArtifacts) -> None:
    """Batches of whole users give the same final lists as one event per batch, as a live stream would.

    Trending, co-visitation and exploration learn from (or draw for) every user's events, so with them on a
    user's list depends on which other users shared the batch; they are off here to isolate the user's own state.
    """
    split = leave_one_out(log, artifacts.row_of)
    settings = Settings(
        top_k=20,
        min_event_ts=0.0,
        max_clock_skew_s=1e12,
        covisitation_candidates=0,
        cold_start_prior_events=0.0,
        exploration_share=0.0,
    )
    batched, batched_vectors = served_metrics(split, artifacts, settings, seed=4, max_users=6)
    one_by_one, vectors = served_metrics(split, artifacts, settings, seed=4, max_users=6, batch_events=1)
    assert batched["users"] == 6 and batched["users_sampled"]
    for key in ("HR@5", "HR@10", "HR@20", "NDCG@20", "MRR@20"):
        assert batched[key] == one_by_one[key]
    np.testing.assert_allclose(batched_vectors, vectors, rtol=1e-5, atol=1e-6)


def test_served_replay_repeats_with_exploration_on(log: EventLog, artifacts: ModelArtifacts) -> None:
    """Exploration draws at random; the replay seeds it, so a manifest's served metrics repeat run to run."""
    split = leave_one_out(log, artifacts.row_of)
    settings = Settings(top_k=20, min_event_ts=0.0, max_clock_skew_s=1e12, exploration_share=0.5)
    first, _ = served_metrics(split, artifacts, settings, seed=4, max_users=12)
    second, _ = served_metrics(split, artifacts, settings, seed=4, max_users=12)
    for key in ("HR@5", "HR@10", "HR@20", "NDCG@20", "MRR@20"):
        assert first[key] == second[key]


def test_offline_only_evaluation_still_measures_the_index(log: EventLog, artifacts: ModelArtifacts) -> None:
    offline = evaluate(log, artifacts, seed=1, served=False)
    assert "served" not in offline
    assert 0.0 <= offline["ann_recall@200"] <= 1.0
    assert "offline" in offline["ann_recall_queries"]


def _with_unknown_last_item(events: list[Event], users: set[str]) -> list[Event]:
    """``events`` plus, for each of ``users``, one last view of an item no model has seen."""
    last_ts: dict[str, float] = {}
    for event in events:
        last_ts[event.user_id] = max(last_ts.get(event.user_id, -math.inf), event.ts)
    return [*events, *(Event(user, "never-seen-item", EventType.VIEW, last_ts[user] + 1.0) for user in sorted(users))]


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


def test_targets_outside_the_vocabulary_are_misses_for_every_model(
    shop: tuple[list[Event], list[dict]], log: EventLog, artifacts: ModelArtifacts, report: dict[str, Any]
) -> None:
    """The same users for every row: a real target the model cannot know is a miss, not a swapped target."""
    assert report["unknown_target_users"] == 0 and report["dropped_users_few_known_interactions"] == 0
    users = set(leave_one_out(log, artifacts.row_of).users.tolist())
    unknown_log = EventLog.from_events(_with_unknown_last_item(shop[0], users), name="test-shop")
    unknown = evaluate(unknown_log, artifacts, seed=0, served=True, served_max_users=40)
    assert unknown["n_users"] == report["n_users"] and unknown["unknown_target_users"] == report["n_users"]
    for name, result in unknown["results"].items():
        for protocol in PROTOCOLS if name != "retrieve_rerank" else ("full",):
            assert result[protocol]["HR@20"] == result[protocol]["NDCG@20"] == 0.0, (name, protocol)
            assert report["results"][name][protocol]["HR@20"] > 0.0  # the swapped-in targets would have scored
    assert unknown["served"]["HR@20"] == 0.0 and unknown["served"]["unknown_target_users"] == 40
    assert unknown["served"]["candidate_sources"]["recall"]["union"] == 0.0
    assert "outside the model's vocabulary" in format_table(unknown)

    half = set(sorted(users)[::2])
    partial = evaluate(EventLog.from_events(_with_unknown_last_item(shop[0], half)), artifacts, served=False)
    assert partial["n_users"] == report["n_users"] and partial["unknown_target_users"] == len(half)
    for name, result in partial["results"].items():
        assert result["full"]["HR@20"] <= report["results"][name]["full"]["HR@20"]


def test_format_table_lists_every_model_and_the_served_path(report: dict[str, Any]) -> None:
    table = format_table(report)
    for name in (*MODELS, "retrieve_rerank", "served (top-20)"):
        assert name in table
    assert "HR@10" in table and "coverage" in table


def test_cli_eval_prints_the_table_and_writes_json(
    shop: tuple[list[Event], list[dict]], trained_artifacts: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    write_events_jsonl(shop[0], events)
    output = tmp_path / "out" / "eval.json"
    arguments = ["eval", "--events", str(events), "--artifacts", str(trained_artifacts.parent)]
    result = CliRunner().invoke(app, [*arguments, "--output", str(output), "--served-users", "25", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "item_knn" in result.output and "served (top-20)" in result.output
    written = orjson.loads(output.read_bytes())
    assert written["seed"] == 3
    assert written["served"]["users"] == 25 and written["served"]["users_sampled"]
    assert set(MODELS) <= set(written["results"])

    missing = CliRunner().invoke(app, ["eval", "--events", str(tmp_path / "nope.jsonl"), "--artifacts", "x"])
    assert missing.exit_code != 0
    assert "not found" in missing.output


def test_candidate_source_recall_counts_each_source_and_their_union() -> None:
    from model.evaluate import candidate_source_recall

    candidates = {
        "a": {"ann": np.array([5, 1, 2]), "covisitation": np.array([7])},  # target 2: ann only, 3rd
        "b": {"ann": np.array([4]), "covisitation": np.array([9, 3])},  # target 3: covisitation only, 2nd
        "c": {"ann": np.array([8]), "covisitation": np.array([6])},  # target 0: nowhere
    }  # user "d" got no personalized candidates at all
    report = candidate_source_recall(["a", "b", "c", "d"], np.array([2, 3, 0, 1]), candidates, top_k=2)
    assert report["users_with_candidates"] == 3
    assert report["recall"] == {"ann": 0.25, "covisitation": 0.25, "union": 0.5}
    assert report["HR@2_in_source_order"] == {"ann": 0.0, "covisitation": 0.25}
