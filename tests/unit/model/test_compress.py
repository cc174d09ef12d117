"""The compressed rankers: int8 quantisation, the distilled student, ``streamrec distill`` and the setting that
picks what a worker serves. A two-block teacher is trained on the simulated shop, so a one-block student is
smaller; everything runs in seconds."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from streamrec.model.artifacts import (
    ITEM_TABLE_KEY,
    LATEST_FILE,
    MANIFEST_FILE,
    STUDENT_FILE,
    ArtifactError,
    ModelArtifacts,
    load_artifacts,
    write_latest,
)
from streamrec.model.compress import (
    RANKER_COMPRESSIONS,
    DistillConfig,
    distill,
    encoder_parameter_count,
    quantize_int8,
    save_student,
    weight_bytes,
)
from streamrec.model.config import TrainConfig
from streamrec.model.events import Event
from streamrec.model.ranker import SequenceRanker
from streamrec.model.train import train_artifacts
from streamrec.stream.app.cli import describe_failure
from streamrec.stream.app.event_files import load_events, write_events_jsonl
from streamrec.stream.events import SourceRecord
from streamrec.stream.pipeline import Pipeline
from streamrec.stream.rank import BlendedRanker, SequenceRankerScores
from streamrec.stream.runtime.worker import ModelWatcher
from streamrec.stream.serving import ServedModel
from streamrec.stream.settings import Settings

STREAMREC = Path(sys.executable).with_name("streamrec")  # the installed script, as a user runs it
# Two epochs, no refit: compression is about the model it is given, and the teacher is trained once per module.
# float32 products: with "auto" a CPU with bfloat16 arithmetic trains other weights, and the int8 error bound below
# is about quantisation, not about which CPU trained the teacher.
TEACHER = TrainConfig(
    dim=32,
    max_len=20,
    layers=2,
    heads=2,
    max_epochs=2,
    seed=3,
    n_segments=0,
    blend_weights=(0.0, 8.0),
    refit=False,
    softmax_precision="float32",
)
SHOP_EVENTS = 12_000  # the first of the simulated shop's events: enough to learn from, quick to train on


@pytest.fixture(scope="module")
def events_file(shop: tuple[list[Event], list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compress-events") / "shop.jsonl"
    write_events_jsonl(shop[0][:SHOP_EVENTS], path)
    return path


@pytest.fixture(scope="module")
def teacher_root(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact root (with ``LATEST``) holding a two-block teacher trained on the events file."""
    root = tmp_path_factory.mktemp("teacher")
    train_artifacts(load_events(events_file), root, TEACHER, progress=False)
    return root


@pytest.fixture(scope="module")
def distilled_root(teacher_root: Path, events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the teacher's root to which a one-block, one-head student was added (``LATEST`` names it)."""
    root = tmp_path_factory.mktemp("distilled")
    shutil.copytree(teacher_root, root, dirs_exist_ok=True)
    distill(root, load_events(events_file), DistillConfig(max_epochs=1), progress=False)
    return root


@pytest.fixture(scope="module")
def teacher(teacher_root: Path) -> ModelArtifacts:
    return load_artifacts(teacher_root)


@pytest.fixture(scope="module")
def distilled(distilled_root: Path) -> ModelArtifacts:
    return load_artifacts(distilled_root)


def _histories_and_candidates(n_items: int, users: int = 64, length: int = 20, width: int = 60) -> tuple:
    rng = np.random.default_rng(5)
    history = torch.from_numpy(rng.integers(0, n_items, (users, length)))
    history[: users // 2, : length // 2] = -1  # shorter histories, left-padded, as the worker builds them
    candidates = torch.from_numpy(rng.integers(0, n_items, (users, width)))
    return history, candidates


def _top(scores: torch.Tensor, k: int = 10) -> list[set[int]]:
    return [set(row.tolist()) for row in scores.topk(k, dim=1).indices]


def test_int8_scores_stay_close_to_float_and_rankings_mostly_agree(teacher: ModelArtifacts) -> None:
    ranker = teacher.ranker
    quantized = quantize_int8(ranker)
    history, candidates = _histories_and_candidates(ranker.config.n_items)
    with torch.inference_mode():
        exact, approximate = ranker.score(history, candidates), quantized.score(history, candidates)
    assert float((approximate - exact).abs().max()) < 0.1 * float(exact.std())
    overlap = np.mean([len(a & b) / 10 for a, b in zip(_top(exact), _top(approximate), strict=True)])
    assert overlap >= 0.8
    # Only the copy is quantised: the teacher may still serve another variant in float.
    assert any(isinstance(m, DynamicQuantizedLinear) for m in quantized.modules())
    assert not any(isinstance(m, DynamicQuantizedLinear) for m in ranker.modules())
    assert sum(isinstance(m, nn.Linear) for m in ranker.modules()) == 4 * ranker.config.n_layers
    # The table retrieval uses stays float and equal; the encoder's weights shrink.
    assert torch.equal(quantized.item_embeddings(), ranker.item_embeddings())
    assert encoder_parameter_count(quantized) == encoder_parameter_count(ranker)
    assert weight_bytes(quantized, with_item_table=False) < 0.5 * weight_bytes(ranker, with_item_table=False)


def test_distill_publishes_a_new_version_and_switches_latest(teacher: ModelArtifacts, distilled_root: Path) -> None:
    latest = (distilled_root / LATEST_FILE).read_text().strip()
    assert latest != teacher.version
    manifest = orjson.loads((distilled_root / latest / MANIFEST_FILE).read_bytes())
    assert manifest["derived_from"] == teacher.version
    # Every file of the teacher is copied unchanged; only the student is added.
    assert {k: v for k, v in manifest["files"].items() if k != STUDENT_FILE} == teacher.manifest["files"]
    student = manifest["student"]
    assert student["file"] == STUDENT_FILE and student["ranker_config"]["n_layers"] == 1
    assert student["ranker_config"]["n_heads"] == 1
    assert student["distillation"]["temperature"] == DistillConfig().temperature
    assert student["distillation"]["best_epoch"] == 1
    for ranker in ("student", "teacher"):
        figures = student["validation"][ranker]
        assert 0 < figures["NDCG@10"] <= figures["HR@10"] <= 1
        assert set(figures["blended_NDCG@10"]) == {"0.0", "8.0"}
    assert student["blend_weight"] in (0.0, 8.0)


def test_the_student_is_smaller_shares_the_item_table_and_round_trips(
    teacher: ModelArtifacts, distilled: ModelArtifacts, tmp_path: Path
) -> None:
    student = distilled.student
    assert isinstance(student, SequenceRanker)
    assert student.config.n_layers < teacher.ranker.config.n_layers
    assert encoder_parameter_count(student) < encoder_parameter_count(teacher.ranker)
    assert weight_bytes(student, with_item_table=False) < weight_bytes(teacher.ranker, with_item_table=False)
    # One table for retrieval and both rankers, equal to the teacher's: the index and live items stay valid.
    assert student.item_embedding is distilled.ranker.item_embedding
    assert np.array_equal(distilled.item_embeddings, teacher.item_embeddings)

    stored = load_file(str(distilled.directory / STUDENT_FILE))
    assert ITEM_TABLE_KEY not in stored
    state = student.state_dict()
    assert set(stored) == set(state) - {ITEM_TABLE_KEY}
    assert all(torch.equal(stored[name], state[name]) for name in stored)
    save_student(student, tmp_path / STUDENT_FILE, distilled.version)
    saved = load_file(str(tmp_path / STUDENT_FILE))
    assert set(saved) == set(stored) and all(torch.equal(saved[name], stored[name]) for name in saved)
    history, candidates = _histories_and_candidates(student.config.n_items)
    with torch.inference_mode():
        assert torch.isfinite(student.score(history, candidates)).all()


def test_a_student_file_that_does_not_fit_is_refused(distilled: ModelArtifacts, tmp_path: Path) -> None:
    version = tmp_path / "broken"
    shutil.copytree(distilled.directory, version)
    manifest = orjson.loads((version / MANIFEST_FILE).read_bytes())
    manifest["student"]["ranker_config"]["n_layers"] = 2  # the file holds one block
    (version / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not fit the manifest's student ranker_config"):
        load_artifacts(version)


def _served(model: ServedModel) -> tuple[SequenceRanker, float]:
    """The sequence ranker a served model scores with, and its item-kNN blend weight."""
    ranker, weight = model.ranker, 0.0
    if isinstance(ranker, BlendedRanker):
        ranker, weight = ranker.ranker, ranker.weight
    assert isinstance(ranker, SequenceRankerScores)
    assert isinstance(ranker.ranker, SequenceRanker)
    return ranker.ranker, weight


def _quantized(ranker: SequenceRanker) -> bool:
    return any(isinstance(module, DynamicQuantizedLinear) for module in ranker.modules())


def test_the_setting_selects_the_served_ranker(distilled: ModelArtifacts) -> None:
    student_weight = distilled.manifest["student"]["blend_weight"]
    served = {c: _served(ServedModel(Settings(ranker_compression=c), distilled)) for c in RANKER_COMPRESSIONS}
    assert served["none"] == (distilled.ranker, distilled.blend_weight)
    assert _quantized(served["int8"][0]) and served["int8"][0].config.n_layers == 2
    assert served["distilled"] == (distilled.student, student_weight)
    assert _quantized(served["distilled_int8"][0]) and served["distilled_int8"][0].config.n_layers == 1
    assert served["distilled_int8"][1] == student_weight
    for compression, (ranker, _) in served.items():  # retrieval's table is the float E whatever the ranker
        assert torch.equal(ranker.item_embeddings(), distilled.ranker.item_embeddings()), compression


def test_the_setting_is_read_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_RANKER_COMPRESSION", "distilled_int8")
    assert Settings().ranker_compression == "distilled_int8"
    monkeypatch.setenv("STREAMREC_RANKER_COMPRESSION", "int4")
    with pytest.raises(ValidationError, match="ranker_compression"):
        Settings()
    monkeypatch.delenv("STREAMREC_RANKER_COMPRESSION")
    # Variants on one model version share its ranker, so a variant cannot change it (rather than be ignored).
    with pytest.raises(ValidationError, match="a variant may change only"):
        Settings(variants=[{"name": "small", "share": 1.0, "overrides": {"ranker_compression": "int8"}}])


def test_a_distilled_int8_pipeline_publishes_recommendations(distilled: ModelArtifacts) -> None:
    pipeline = Pipeline(Settings(ranker_compression="distilled_int8", random_seed=1), distilled)
    items = distilled.item_ids[:6]
    records = [
        SourceRecord(
            orjson.dumps({"user_id": f"u{n % 3}", "item_id": item, "event_type": "view", "ts": 1.8e9 + n}),
            f"u{n % 3}".encode(),
            0,
            n,
            received_at=0.0,
        )
        for n, item in enumerate(items * 2)
    ]
    result = pipeline.process(records, now=1.8e9 + 20)
    published = [orjson.loads(message.value) for message in result.recommendations if message.value is not None]
    assert {message["user_id"] for message in published} == {"u0", "u1", "u2"}
    assert all(len(message["items"]) == 20 for message in published)


def test_serving_distilled_without_a_student_fails_at_start_in_one_line(teacher: ModelArtifacts) -> None:
    assert teacher.student is None
    with pytest.raises(ArtifactError) as refused:
        Pipeline(Settings(ranker_compression="distilled"), teacher)
    line, exit_code = describe_failure(refused.value)
    assert line.startswith("the model artifacts cannot be used: ranker_compression=distilled needs a distilled student")
    assert "streamrec distill --artifacts" in line and "\n" not in line and exit_code != 0


def test_a_worker_serving_distilled_refuses_a_new_version_without_a_student(
    distilled_root: Path, teacher: ModelArtifacts, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(distilled_root, root)
    settings = Settings(artifacts_dir=root, ranker_compression="distilled")
    pipeline = Pipeline(settings, load_artifacts(root))
    serving = pipeline.artifacts.version
    write_latest(root, teacher.version)  # e.g. `streamrec train` published a model nobody distilled yet
    watcher = ModelWatcher(settings, pipeline, asyncio.Lock())
    assert asyncio.run(watcher.check()) is False
    assert pipeline.artifacts.version == serving


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``streamrec ARGS`` without the developer's own STREAMREC_* settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("STREAMREC_")}
    return subprocess.run([str(STREAMREC), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed run; fails the test unless stderr is exactly that."""
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamrec: error: "), result.stderr
    return lines[0]


def test_the_distill_command_publishes_and_refuses_mistakes_in_one_line(
    teacher_root: Path, events_file: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(teacher_root, root)
    before = (root / LATEST_FILE).read_text().strip()
    other_events = tmp_path / "other.jsonl"  # the same shop a little earlier: not what the model was trained on
    other_events.write_bytes(b"\n".join(events_file.read_bytes().splitlines()[:-50]) + b"\n")
    artifacts, events = ["--artifacts", str(root)], ["--events", str(events_file)]
    runs = {
        "published": ["distill", *artifacts, *events, "--epochs", "1", "--log-level", "WARNING"],
        "another log": ["distill", *artifacts, "--events", str(other_events)],
        "kd weight": ["distill", *artifacts, *events, "--kd-weight", "1.5"],
        "no artifacts": ["distill", "--artifacts", str(tmp_path / "missing"), *events],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        results: dict[str, subprocess.CompletedProcess[str]] = dict(
            zip(runs, pool.map(lambda args: run_cli(*args), runs.values()), strict=True)
        )
    published = results.pop("published")
    assert published.returncode == 0, published.stderr
    latest = (root / LATEST_FILE).read_text().strip()
    assert latest != before and f"wrote {root / latest}: a student of 1 layers x 1 heads" in published.stdout
    assert (root / latest / STUDENT_FILE).is_file()
    expected = {
        "another log": "is not the event log model version",
        "kd weight": "1.5 is not between 0 and 1",
        "no artifacts": "artifact directory not found",
    }
    for name, fragment in expected.items():
        assert fragment in error_line(results[name]), name
    assert results["kd weight"].returncode == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers": 2}, "a student of 2 layers is not smaller than its teacher of 2"),
        ({"heads": 3}, "dim 32 is not divisible by n_heads 3"),
    ],
)
def test_a_student_that_cannot_be_built_is_refused_before_training(
    teacher_root: Path, events_file: Path, changes: dict[str, int], message: str
) -> None:
    before = sorted(path.name for path in teacher_root.iterdir())
    with pytest.raises(ValueError, match=message):
        distill(teacher_root, load_events(events_file), DistillConfig(**changes), progress=False)
    assert sorted(path.name for path in teacher_root.iterdir()) == before  # nothing published, LATEST unchanged
