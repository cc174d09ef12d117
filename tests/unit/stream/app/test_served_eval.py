"""The served half of ``streamrec eval``: the pipeline replay, its report beside the offline one, and the command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.evaluate import format_table
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.splits import leave_one_out
from streamrec.stream.app.cli import app
from streamrec.stream.app.event_files import write_events_jsonl
from streamrec.stream.app.served_eval import candidate_source_recall, evaluate, served_metrics
from streamrec.stream.app.simulate import write_catalog_jsonl
from streamrec.stream.settings import Settings

MODELS = ("model", "retrieval", "item_knn", "popularity")
PROTOCOLS = ("full", "sampled_uniform_99", "sampled_popularity_99")


@pytest.fixture(scope="module")
def log(shop: tuple[list[Event], list[dict]]) -> EventLog:
    return EventLog.from_events(shop[0], name="test-shop")


@pytest.fixture(scope="module")
def report(log: EventLog, artifacts: ModelArtifacts) -> dict[str, Any]:
    return evaluate(log, artifacts, seed=0, served=True)


def _with_unknown_last_item(events: list[Event], users: set[str]) -> list[Event]:
    """``events`` plus, for each of ``users``, one last view of an item no model has seen."""
    last_ts: dict[str, float] = {}
    for event in events:
        last_ts[event.user_id] = max(last_ts.get(event.user_id, -math.inf), event.ts)
    return [*events, *(Event(user, "never-seen-item", EventType.VIEW, last_ts[user] + 1.0) for user in sorted(users))]


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
    # Every evaluated user has a history of known items: their lists lead with a personal candidate.
    assert served["personalized_share"] > 0.5, served["personalized_share"]


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


def test_cli_trains_with_items_held_out_and_eval_ranks_their_events(
    shop: tuple[list[Event], list[dict]], tmp_path: Path
) -> None:
    events, catalog, out = tmp_path / "events.jsonl", tmp_path / "items.jsonl", tmp_path / "models"
    write_events_jsonl(shop[0], events)
    write_catalog_jsonl(shop[1], catalog)
    small = {
        "STREAMREC_TRAIN__LAYERS": "1", "STREAMREC_TRAIN__REFIT": "false", "STREAMREC_TRAIN__N_SEGMENTS": "0",
        "STREAMREC_TRAIN__CONTENT_ENCODER": "hashed", "STREAMREC_TRAIN__BLEND_WEIGHTS": "[0]",
    }  # fmt: skip
    training = ["train", "--events", str(events), "--out", str(out), "--catalog", str(catalog), "--epochs", "3"]
    trained = CliRunner().invoke(app, [*training, "--dim", "16", "--hold-out-items", "0.2"], env=small)
    assert trained.exit_code == 0, trained.output
    output = tmp_path / "cold.json"
    evaluation = ["eval", "--events", str(events), "--artifacts", str(out), "--no-served", "--output", str(output)]
    result = CliRunner().invoke(app, [*evaluation, "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "cold-start items: 60 held-out items" in result.output
    cold = orjson.loads(output.read_bytes())["cold_items"]
    assert cold["held_out"]["count"] == 60 and cold["new_items_with_content"] == 60
    assert cold["targets"] > 0 and {"content", "random", "popularity", "content+shoppers"} == set(cold["results"])

    # Another log draws other items to hold out: one clear line, no traceback.
    other = tmp_path / "other.jsonl"
    write_events_jsonl([event for event in shop[0] if event.item_id != shop[1][0]["item_id"]], other)
    refused = CliRunner().invoke(app, ["eval", "--events", str(other), "--artifacts", str(out), "--no-served"])
    assert refused.exit_code != 0 and "the log it was trained from" in refused.output
    assert "Traceback" not in refused.output


def test_candidate_source_recall_counts_each_source_and_their_union() -> None:

    candidates = {
        "a": {"ann": np.array([5, 1, 2]), "covisitation": np.array([7])},  # target 2: ann only, 3rd
        "b": {"ann": np.array([4]), "covisitation": np.array([9, 3])},  # target 3: covisitation only, 2nd
        "c": {"ann": np.array([8]), "covisitation": np.array([6])},  # target 0: nowhere
    }  # user "d" got no personalized candidates at all
    report = candidate_source_recall(["a", "b", "c", "d"], np.array([2, 3, 0, 1]), candidates, top_k=2)
    assert report["users_with_candidates"] == 3
    assert report["recall"] == {"ann": 0.25, "covisitation": 0.25, "union": 0.5}
    assert report["HR@2_in_source_order"] == {"ann": 0.0, "covisitation": 0.25}


def test_served_lists_reproduce_the_offline_model_under_the_same_exclusions(
    log: EventLog, artifacts: ModelArtifacts
) -> None:
    """With every item a candidate and nothing but the model deciding the list (no trending blend, no exploration),
    the served top-20 is the offline model's top-20 with what the pipeline leaves out excluded (bought items, the
    item just touched): the stream's incremental state, candidates and ranker add no error of their own."""
    settings = Settings(
        n_candidates=len(artifacts.item_ids), exploration_share=0.0, cold_start_prior_events=0.0, max_recent_items=50
    )
    report = evaluate(log, artifacts, seed=0, served=True, settings=settings)
    offline, served = report["results"]["model"]["full_as_served"], report["served"]
    assert served["list_settings"]["exploration_share"] == 0.0
    # A near-tie between two items may order differently in float32 served scores: one user's hit, at most (the
    # history-kept protocol, which lists bought items, differs by ten times that on this shop).
    one_user = 1.5 / report["n_users"]
    for cutoff in ("HR@5", "HR@10", "HR@20", "NDCG@10", "NDCG@20"):
        assert served[cutoff] == pytest.approx(offline[cutoff], abs=one_user), cutoff
