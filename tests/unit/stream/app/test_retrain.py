"""The retraining gate: a candidate replaces the serving version only when it serves no worse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streamrec.model.artifacts import resolve_artifact_dir
from streamrec.model.config import TrainConfig
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event
from streamrec.stream.app.retrain import retrain
from streamrec.stream.settings import Settings

SMALL = {"max_len": 20, "layers": 1, "heads": 2, "seed": 3, "n_segments": 0, "content_encoder": "hashed"}
WEAK = Settings(train=TrainConfig(dim=4, max_epochs=1, **SMALL))
GOOD = Settings(train=TrainConfig(dim=32, max_epochs=8, patience=3, **SMALL))


@pytest.fixture(scope="module")
def log(shop: tuple[list[Event], list[dict]]) -> EventLog:
    return EventLog.from_events(shop[0], name="test-shop")


def _root_serving(tmp_path: Path, version_dir: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(version_dir, root / version_dir.name)
    (root / "LATEST").write_text(version_dir.name + "\n")
    return root


def test_a_worse_candidate_is_kept_out(tmp_path: Path, trained_artifacts: Path, log: EventLog) -> None:
    root = _root_serving(tmp_path, trained_artifacts)
    outcome = retrain(WEAK, root, log, comparison_users=200)
    assert not outcome.published
    assert outcome.candidate_metrics["NDCG@10"] < outcome.serving_metrics["NDCG@10"]
    assert resolve_artifact_dir(root).name == trained_artifacts.name  # LATEST untouched
    assert outcome.candidate.is_dir()  # kept for inspection
    assert "worse than" in outcome.reason


def test_a_better_candidate_is_published(tmp_path: Path, log: EventLog) -> None:
    root = tmp_path / "models"
    first = retrain(WEAK, root, log, comparison_users=200)  # nothing served yet: published as it is
    assert first.published and first.serving_metrics is None
    outcome = retrain(GOOD, root, log, comparison_users=200)
    assert outcome.published, outcome.reason
    assert outcome.candidate_metrics["NDCG@10"] >= outcome.serving_metrics["NDCG@10"]
    assert resolve_artifact_dir(root) == outcome.candidate
