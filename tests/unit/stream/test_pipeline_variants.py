"""A/B variants and online evaluation through the whole pipeline: several models served at once, each user's
variant in their messages and metrics, and their next event checked against the list they were shown."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.events import SourceRecord
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.settings import Settings
from streamrec.stream.user_state import decode_state

NOW = time.time()
TWO_VARIANTS = [
    {"name": "control", "share": 1},
    {"name": "short", "share": 1, "artifacts_dir": "/models/candidate", "overrides": {"top_k": 5}},
]


def _record(user: str, item: str, offset: int, ts: float = NOW, kind: str = "view") -> SourceRecord:
    body = {"user_id": user, "item_id": item, "event_type": kind, "ts": ts, "event_id": f"{user}-{offset}"}
    return SourceRecord(orjson.dumps(body), user.encode(), 0, offset, received_at=NOW)


def _messages(result) -> dict[str, dict]:
    return {m.key.decode(): orjson.loads(m.value) for m in result.recommendations}


def _another_version(artifacts: ModelArtifacts, suffix: str) -> ModelArtifacts:
    """The same weights under another version name, as a separately loaded model."""
    return replace(artifacts, manifest={**artifacts.manifest, "version": f"{artifacts.version}-{suffix}"})


@pytest.fixture
def candidate(artifacts: ModelArtifacts) -> ModelArtifacts:
    return _another_version(artifacts, "candidate")


def test_each_variant_serves_its_own_model_and_settings(artifacts: ModelArtifacts, candidate) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    settings = Settings(top_k=10, n_candidates=50, exploration_share=0.0, random_seed=0, variants=TWO_VARIANTS)
    pipeline = Pipeline(settings, artifacts, metrics, variant_artifacts={"short": candidate})
    assert pipeline.variants["short"].model is not pipeline.variants["control"].model  # two models loaded
    users = [f"user-{n}" for n in range(40)]
    batch = [_record(user, artifacts.item_ids[n % 30], n) for n, user in enumerate(users)]
    messages = _messages(pipeline.process(batch, now=NOW))
    by_variant = {name: [m for m in messages.values() if m["variant"] == name] for name in ("control", "short")}
    assert by_variant["control"] and by_variant["short"]  # both arms get traffic
    for message in by_variant["control"]:
        assert message["model_version"] == artifacts.version and len(message["items"]) == 10
    for message in by_variant["short"]:
        assert message["model_version"] == candidate.version and len(message["items"]) == 5
    assert {m["variant"] for m in messages.values()} == {pipeline.assigner.assign(u) for u in users}
    info = {
        variant: metrics.registry.get_sample_value("streamrec_model_info", {"variant": variant, "version": version})
        for variant, version in (("control", artifacts.version), ("short", candidate.version))
    }
    assert info == {"control": 1.0, "short": 1.0}


def test_a_swap_reaches_only_the_variants_following_that_model(artifacts: ModelArtifacts, candidate) -> None:
    settings = Settings(top_k=10, n_candidates=50, variants=TWO_VARIANTS)
    pipeline = Pipeline(settings, artifacts, variant_artifacts={"short": candidate})
    assert pipeline.default_followers == ["control"]
    newer = _another_version(artifacts, "newer")
    pipeline.use_model(newer)
    assert pipeline.variants["control"].model.artifacts.version == newer.version
    assert pipeline.variants["short"].model.artifacts.version == candidate.version
    assert len(pipeline.models) == 2  # the replaced model is no longer held


def test_settings_only_variants_share_one_loaded_model(artifacts: ModelArtifacts) -> None:
    variants = [{"name": "a", "share": 1}, {"name": "b", "share": 1, "overrides": {"exploration_share": 0.5}}]
    pipeline = Pipeline(Settings(variants=variants), artifacts)
    assert pipeline.variants["a"].model is pipeline.variants["b"].model
    assert pipeline.variants["b"].explorer.share == 0.5 and pipeline.variants["a"].explorer.share != 0.5
    assert pipeline.variants["a"].explorer.exposure is pipeline.variants["b"].explorer.exposure


def test_the_next_event_is_evaluated_against_the_list_shown(artifacts: ModelArtifacts) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    pipeline = Pipeline(Settings(top_k=20, n_candidates=50, exploration_share=0.0, random_seed=0), artifacts, metrics)
    shown = _messages(pipeline.process([_record("u1", artifacts.item_ids[3], 1, ts=NOW)], now=NOW))["u1"]
    hit = shown["items"][6]["item_id"]  # rank 7
    result = pipeline.process([_record("u1", hit, 2, ts=NOW + 60, kind="click")], now=NOW + 60)
    assert (
        metrics.registry.get_sample_value(
            "streamrec_online_evaluated_total", {"variant": "default", "event_type": "click"}
        )
        == 0
    )  # counted once the runtime has delivered the batch
    result.online.record(metrics)

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"variant": "default", **labels}) or 0.0

    assert value("streamrec_online_evaluated_total", event_type="click") == 1
    assert value("streamrec_online_hits_total", event_type="click", k="5") == 0
    assert value("streamrec_online_hits_total", event_type="click", k="10") == 1
    assert value("streamrec_online_hit_rank_sum") == 7
    source = shown["items"][6]["source"]
    assert value("streamrec_online_source_hits_total", source=source) == 1
    # A miss: evaluated, no hit.
    pipeline.process([_record("u1", "not-in-any-list", 3, ts=NOW + 120)], now=NOW + 120).online.record(metrics)
    assert value("streamrec_online_evaluated_total", event_type="view") == 1
    assert value("streamrec_online_hits_total", event_type="view", k="20") == 0
    assert value("streamrec_recommended_items") >= 20
    assert value("streamrec_list_diversity_count") >= 1


def test_the_shown_list_survives_a_restore(artifacts: ModelArtifacts) -> None:
    settings = Settings(top_k=10, n_candidates=50, exploration_share=0.0, random_seed=0)
    pipeline = Pipeline(settings, artifacts)
    result = pipeline.process([_record("u1", artifacts.item_ids[3], 1)], now=NOW)
    (update,) = result.state_updates
    restored = decode_state(update.value, max_recent_items=50)
    shown = _messages(result)["u1"]
    assert restored.last_list is not None
    assert list(restored.last_list.item_ids) == [item["item_id"] for item in shown["items"]]
    assert restored.last_list.variant == "default"


def test_online_evaluation_can_be_turned_off(artifacts: ModelArtifacts) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    pipeline = Pipeline(Settings(top_k=10, n_candidates=50, online_eval_window_s=None), artifacts, metrics)
    shown = _messages(pipeline.process([_record("u1", artifacts.item_ids[3], 1)], now=NOW))["u1"]
    result = pipeline.process([_record("u1", shown["items"][0]["item_id"], 2, ts=NOW + 1)], now=NOW + 1)
    assert result.online is None
    evaluated = metrics.registry.get_sample_value(
        "streamrec_online_evaluated_total", {"variant": "default", "event_type": "view"}
    )
    assert evaluated == 0
    state = pipeline.store.get(0, "u1")
    assert state is not None and state.last_list is not None  # still kept for the read path
