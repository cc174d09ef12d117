"""User segments and item clusters: spherical k-means recovery, capping, assignment and persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from streamrec.model.segments import Segments, fit_segments

DIM = 16
N_GROUPS = 4


def _directions(rng: np.random.Generator, k: int = N_GROUPS) -> np.ndarray:
    """``k`` orthonormal directions: groups as well separated as groups in the item space can be."""
    return np.linalg.qr(rng.normal(size=(DIM, k)))[0].T


def _around(rng: np.random.Generator, directions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors near random ``directions`` with varied norms (norm must not decide the cluster), and labels."""
    labels = rng.integers(len(directions), size=n)
    scale = rng.uniform(0.5, 3.0, size=(n, 1))
    vectors = directions[labels] * scale + 0.1 * rng.normal(size=(n, DIM))
    return vectors.astype(np.float32), labels


def _purity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of points whose predicted cluster's majority generating label is their own."""
    hits = sum(np.bincount(truth[predicted == c]).max() for c in np.unique(predicted))
    return hits / len(truth)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    directions = _directions(rng)
    users, user_labels = _around(rng, directions, 400)
    items, item_labels = _around(rng, directions, 300)
    return users, user_labels, items, item_labels


@pytest.fixture(scope="module")
def fitted(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> Segments:
    users, _, items, _ = data
    return fit_segments(users, items, n_segments=N_GROUPS, n_item_clusters=N_GROUPS, seed=0)


def test_segments_recover_the_generating_user_groups(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], fitted: Segments
) -> None:
    users, labels, _, _ = data
    assert fitted.n_segments == N_GROUPS and fitted.dim == DIM
    assert fitted.user_centroids.dtype == np.float32 and fitted.user_centroids.shape == (N_GROUPS, DIM)
    np.testing.assert_allclose(np.linalg.norm(fitted.user_centroids, axis=1), 1.0, atol=1e-5)
    segment = fitted.assign_users(users)
    assert segment.dtype == np.int64 and len(np.unique(segment)) == N_GROUPS
    assert _purity(segment, labels) == 1.0 and _purity(labels, segment) == 1.0


def test_item_clusters_recover_the_generating_item_groups(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], fitted: Segments
) -> None:
    _, _, items, labels = data
    assert fitted.n_item_clusters == N_GROUPS
    assert fitted.item_cluster.dtype == np.int32 and fitted.item_cluster.shape == (len(items),)
    assert _purity(fitted.item_cluster, labels) == 1.0 and len(np.unique(fitted.item_cluster)) == N_GROUPS
    assert np.array_equal(fitted.assign_items(items), fitted.item_cluster)


def test_k_is_capped_at_the_distinct_usable_vectors() -> None:
    base = np.eye(3, DIM, dtype=np.float32)
    users = np.concatenate([base, 2 * base, np.zeros((2, DIM)), np.full((1, DIM), np.nan)]).astype(np.float32)
    segments = fit_segments(users, base[:1], n_segments=10, n_item_clusters=5)
    assert segments.n_segments == 3 and segments.n_item_clusters == 1  # 2·e_i is e_i once normalised
    assert sorted(segments.assign_users(base).tolist()) == [0, 1, 2]
    assert segments.item_cluster.tolist() == [0]


def test_zero_and_non_finite_vectors_go_to_cluster_zero(fitted: Segments) -> None:
    odd = np.zeros((2, DIM), dtype=np.float32)
    odd[1, 0] = np.inf
    assert fitted.assign_users(odd).tolist() == [0, 0]
    assert fitted.assign_items(odd).tolist() == [0, 0]
    assert fitted.assign_users(np.zeros((0, DIM), dtype=np.float32)).shape == (0,)
    with pytest.raises(ValueError):
        fitted.assign_users(np.zeros((2, DIM + 1), dtype=np.float32))


def test_fitting_is_deterministic_for_a_seed(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    users, _, items, _ = data
    first = fit_segments(users, items, n_segments=6, n_item_clusters=5, seed=3)
    again = fit_segments(users, items, n_segments=6, n_item_clusters=5, seed=3)
    assert np.array_equal(first.user_centroids, again.user_centroids)
    assert np.array_equal(first.item_centroids, again.item_centroids)
    assert np.array_equal(first.item_cluster, again.item_cluster)


def test_bad_fit_inputs_are_rejected(data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    users, _, items, _ = data
    with pytest.raises(ValueError):
        fit_segments(users, items[:, :-1], 4, 4)
    with pytest.raises(ValueError):
        fit_segments(users, items, 0, 4)
    with pytest.raises(ValueError):
        fit_segments(np.zeros((5, DIM), dtype=np.float32), items, 4, 4)


def test_save_load_round_trip(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], fitted: Segments, tmp_path: Path
) -> None:
    users, _, items, _ = data
    path = tmp_path / "segments.safetensors"
    fitted.save(path)
    loaded = Segments.load(path, n_items=len(items), dim=DIM)
    assert np.array_equal(loaded.user_centroids, fitted.user_centroids)
    assert np.array_equal(loaded.item_centroids, fitted.item_centroids)
    assert np.array_equal(loaded.item_cluster, fitted.item_cluster)
    assert np.array_equal(loaded.assign_users(users), fitted.assign_users(users))


def _write(path: Path, fitted: Segments, **override: np.ndarray) -> Path:
    tensors = {
        "user_centroids": fitted.user_centroids,
        "item_centroids": fitted.item_centroids,
        "item_cluster": fitted.item_cluster,
    }
    tensors.update(override)
    save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "corrupt",
    [
        "wrong_n_items",
        "wrong_dim",
        "float64_centroids",
        "nan_centroid",
        "not_unit",
        "cluster_out_of_range",
        "int64_clusters",
        "missing_key",
        "empty_centroids",
        "not_safetensors",
    ],
)
def test_corrupt_files_are_refused(fitted: Segments, tmp_path: Path, corrupt: str) -> None:
    path = tmp_path / "segments.safetensors"
    n_items, dim = len(fitted.item_cluster), DIM
    user, item, cluster = fitted.user_centroids, fitted.item_centroids, fitted.item_cluster
    if corrupt == "wrong_n_items":
        n_items += 1
        _write(path, fitted)
    elif corrupt == "wrong_dim":
        dim += 1
        _write(path, fitted)
    elif corrupt == "float64_centroids":
        _write(path, fitted, user_centroids=user.astype(np.float64))
    elif corrupt == "nan_centroid":
        bad = user.copy()
        bad[0, 0] = np.nan
        _write(path, fitted, user_centroids=bad)
    elif corrupt == "not_unit":
        _write(path, fitted, item_centroids=2 * item)
    elif corrupt == "cluster_out_of_range":
        bad_cluster = cluster.copy()
        bad_cluster[0] = len(item)
        _write(path, fitted, item_cluster=bad_cluster)
    elif corrupt == "int64_clusters":
        _write(path, fitted, item_cluster=cluster.astype(np.int64))
    elif corrupt == "missing_key":
        save_file({"user_centroids": user, "item_centroids": item}, str(path))
    elif corrupt == "empty_centroids":
        _write(path, fitted, user_centroids=np.zeros((0, DIM), dtype=np.float32))
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError):
        Segments.load(path, n_items=n_items, dim=dim)


def test_missing_file_and_inconsistent_construction_are_refused(fitted: Segments, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Segments.load(tmp_path / "missing.safetensors", n_items=1, dim=DIM)
    with pytest.raises(ValueError):
        Segments(fitted.user_centroids, fitted.item_centroids[:, :-1], fitted.item_cluster)


def test_vector_length_does_not_matter_and_degenerate_vectors_get_segment_zero(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], fitted: Segments
) -> None:
    users = data[0]
    scaled = users * np.linspace(0.1, 10.0, len(users), dtype=np.float32)[:, None]
    assert fitted.assign_users(scaled).tolist() == fitted.assign_users(users).tolist()
    odd = np.zeros((2, DIM), dtype=np.float32)
    odd[1, 0] = np.inf
    assert fitted.assign_users(odd).tolist() == [0, 0]
