"""Loading artifact directories: everything verified, anything inconsistent refused with ArtifactError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from streamrec.model.artifacts import (
    INDEX_FILE,
    ITEM_KNN_FILE,
    LATEST_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ArtifactError,
    ModelArtifacts,
    load_artifacts,
    resolve_artifact_dir,
    save_item_knn,
    sha256_file,
    write_latest,
)


@pytest.fixture
def copy(trained_artifacts: Path, tmp_path: Path) -> Path:
    """A private copy of the session's artifact root (LATEST + one version) to damage."""
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts.parent, root)
    return root / trained_artifacts.name


def edit_manifest(version_dir: Path, **changes: object) -> None:
    manifest = orjson.loads((version_dir / MANIFEST_FILE).read_bytes())
    manifest.update(changes)
    (version_dir / MANIFEST_FILE).write_bytes(orjson.dumps(manifest))


def test_round_trip(trained_artifacts: Path) -> None:
    artifacts = load_artifacts(trained_artifacts)
    assert isinstance(artifacts, ModelArtifacts)
    assert artifacts.version == trained_artifacts.name == artifacts.manifest["version"]
    n_items = len(artifacts.item_ids)
    assert artifacts.item_embeddings.shape == (n_items, artifacts.dim)
    assert artifacts.item_embeddings.dtype == np.float32 and artifacts.item_embeddings.flags.c_contiguous
    assert all(artifacts.row_of[item] == row for row, item in enumerate(artifacts.item_ids))
    assert not artifacts.ranker.training
    assert np.array_equal(artifacts.item_embeddings, artifacts.ranker.item_embeddings().numpy())
    assert len(artifacts.index) == n_items and artifacts.index.dim == artifacts.dim
    # Each item is (nearly always) its own best match under exact search; the index returns real rows.
    _, rows = artifacts.index.search(artifacts.item_embeddings[:5], 3)
    assert ((rows >= 0) & (rows < n_items)).all()
    scores = artifacts.ranker.score(torch.tensor([[0, 1, 2]]), torch.tensor([[3, 4]]))
    assert torch.isfinite(scores).all()


def test_the_root_resolves_through_latest(trained_artifacts: Path) -> None:
    root = trained_artifacts.parent
    assert resolve_artifact_dir(root) == trained_artifacts
    assert resolve_artifact_dir(trained_artifacts) == trained_artifacts
    assert load_artifacts(root).version == trained_artifacts.name


def test_manifest_lists_every_other_file_with_its_digest(trained_artifacts: Path) -> None:
    manifest = orjson.loads((trained_artifacts / MANIFEST_FILE).read_bytes())
    on_disk = {p.name for p in trained_artifacts.iterdir()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    for name, digest in manifest["files"].items():
        assert sha256_file(trained_artifacts / name) == digest


def test_a_corrupt_file_is_refused(copy: Path) -> None:
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifacts(copy)


def test_a_missing_file_is_refused(copy: Path) -> None:
    (copy / INDEX_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifacts(copy)


def test_a_wrong_dimension_in_the_manifest_is_refused(copy: Path) -> None:
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    edit_manifest(copy, dim=manifest["dim"] + 1)
    with pytest.raises(ArtifactError, match="dim"):
        load_artifacts(copy)


def test_a_wrong_item_count_is_refused(copy: Path) -> None:
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    n_items = manifest["n_items"] + 1
    edit_manifest(copy, n_items=n_items, ranker_config={**manifest["ranker_config"], "n_items": n_items})
    with pytest.raises(ArtifactError, match="items"):
        load_artifacts(copy)


def test_weights_that_do_not_fit_the_config_are_refused(copy: Path) -> None:
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    edit_manifest(
        copy, ranker_config={**manifest["ranker_config"], "n_layers": manifest["ranker_config"]["n_layers"] + 1}
    )
    with pytest.raises(ArtifactError, match="ranker_config"):
        load_artifacts(copy)


def test_another_format_version_is_refused(copy: Path) -> None:
    edit_manifest(copy, format_version=999)
    with pytest.raises(ArtifactError, match="format_version"):
        load_artifacts(copy)


def test_an_unreadable_manifest_is_refused(copy: Path) -> None:
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        load_artifacts(copy)


def test_bad_latest_pointers_are_refused(copy: Path, tmp_path: Path) -> None:
    root = copy.parent
    write_latest(root, "no-such-version")
    with pytest.raises(ArtifactError, match="does not exist"):
        resolve_artifact_dir(root)
    write_latest(root, "../elsewhere")
    with pytest.raises(ArtifactError, match="does not name"):
        resolve_artifact_dir(root)
    (root / LATEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="neither"):
        load_artifacts(root)
    assert issubclass(ArtifactError, ValueError)


def test_write_latest_replaces_the_pointer_atomically(tmp_path: Path) -> None:
    write_latest(tmp_path, "v1")
    write_latest(tmp_path, "v2")
    assert (tmp_path / LATEST_FILE).read_text().strip() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_FILE]  # no temporary file left behind


def test_the_blended_item_knn_is_loaded_with_its_weight(trained_artifacts: Path) -> None:
    artifacts = load_artifacts(trained_artifacts)
    manifest = artifacts.manifest
    assert ITEM_KNN_FILE in manifest["files"]
    knn = artifacts.item_knn
    assert knn is not None and knn.n_items == len(artifacts.item_ids)
    assert (knn.n_recent, knn.decay) == (manifest["item_knn"]["n_recent"], manifest["item_knn"]["decay"])
    assert artifacts.blend_weight == manifest["blend_weight"] >= 0
    counts = np.diff(knn.indptr)
    assert counts.max() <= manifest["item_knn"]["max_neighbors"]
    assert knn.neighbors.dtype == np.int32 and knn.similarities.dtype == np.float32


def test_an_artifact_without_item_knn_still_loads(copy: Path) -> None:
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    (copy / ITEM_KNN_FILE).unlink()
    files = {name: digest for name, digest in manifest["files"].items() if name != ITEM_KNN_FILE}
    for key in ("item_knn", "blend_weight"):
        manifest.pop(key, None)
    (copy / MANIFEST_FILE).write_bytes(orjson.dumps({**manifest, "files": files}))
    artifacts = load_artifacts(copy)
    assert artifacts.item_knn is None and artifacts.blend_weight == 0.0


def test_an_item_knn_of_the_wrong_shape_is_refused(copy: Path) -> None:
    artifacts = load_artifacts(copy)
    knn = artifacts.item_knn
    assert knn is not None
    shorter = type(knn)(knn.indptr[:-1], knn.neighbors[: knn.indptr[-2]], knn.similarities[: knn.indptr[-2]])
    save_item_knn(shorter, copy / ITEM_KNN_FILE)
    manifest = orjson.loads((copy / MANIFEST_FILE).read_bytes())
    edit_manifest(copy, files={**manifest["files"], ITEM_KNN_FILE: sha256_file(copy / ITEM_KNN_FILE)})
    with pytest.raises(ArtifactError, match="indptr"):
        load_artifacts(copy)


def test_a_missing_item_knn_is_refused(copy: Path) -> None:
    (copy / ITEM_KNN_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifacts(copy)
