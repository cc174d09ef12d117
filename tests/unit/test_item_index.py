"""The FAISS item index: inner-product search, recall against exact search, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import ItemIndex, exact_recall
from index.item_index import AUTO_FLAT_MAX_ITEMS, default_ivf_nlist, exact_top_k, resolve_kind

DIM = 16


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors, like trained item embeddings (and unlike uniform noise, the worst case for ANN)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, DIM))
    items = centres[rng.integers(20, size=2_000)] + 0.3 * rng.normal(size=(2_000, DIM))
    queries = centres[rng.integers(20, size=100)] + 0.3 * rng.normal(size=(100, DIM))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize(("kind", "min_recall"), [("flat", 1.0), ("hnsw", 0.95), ("ivf", 0.9)])
def test_recall_against_exact_search(data: tuple[np.ndarray, np.ndarray], kind: str, min_recall: float) -> None:
    items, queries = data
    index = ItemIndex.build(items, kind)  # type: ignore[arg-type]
    assert index.kind == kind and len(index) == len(items) and index.dim == DIM
    assert exact_recall(index, items, queries, 10) >= min_recall


def test_search_returns_inner_product_scores_best_first(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    scores, rows = ItemIndex.build(items, "flat").search(queries, 5)
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (100, 5)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, rows, axis=1), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert np.array_equal(rows[:, 0], exact_top_k(items, queries, 1)[:, 0])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_k_larger_than_the_catalogue_pads_with_minus_one(kind: str) -> None:
    items = np.eye(4, DIM, dtype=np.float32)
    scores, rows = ItemIndex.build(items, kind).search(items[:2], 7)  # type: ignore[arg-type]
    assert rows.shape == (2, 7)
    assert sorted(rows[0][rows[0] >= 0].tolist()) == [0, 1, 2, 3]
    assert (rows[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert rows[0, 0] == 0 and rows[1, 0] == 1


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(data: tuple[np.ndarray, np.ndarray], tmp_path: Path, kind: str) -> None:
    items, queries = data
    index = ItemIndex.build(items, kind, ef_search=64, nprobe=8)  # type: ignore[arg-type]
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = ItemIndex.load(path)
    assert (loaded.kind, len(loaded), loaded.dim) == (kind, len(items), DIM)
    assert loaded.search_params == index.search_params
    assert np.array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])


def test_search_params_apply_to_the_kind_that_has_them(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, _ = data
    hnsw = ItemIndex.build(items, "hnsw")
    hnsw.set_search_params(ef_search=33, nprobe=5)
    assert hnsw.search_params["ef_search"] == 33
    ivf = ItemIndex.build(items, "ivf", ivf_nlist=10)
    ivf.set_search_params(ef_search=33, nprobe=500)
    assert ivf.search_params == {"nlist": 10, "nprobe": 10}  # capped at nlist
    flat = ItemIndex.build(items, "flat")
    flat.set_search_params(ef_search=33, nprobe=5)  # no-op
    with pytest.raises(ValueError):
        flat.set_search_params(ef_search=0, nprobe=5)


def test_auto_picks_exact_search_for_small_catalogues() -> None:
    assert resolve_kind("auto", AUTO_FLAT_MAX_ITEMS - 1) == "flat"
    assert resolve_kind("auto", AUTO_FLAT_MAX_ITEMS) == "hnsw"
    assert ItemIndex.build(np.eye(3, DIM, dtype=np.float32)).kind == "flat"
    with pytest.raises(ValueError):
        resolve_kind("lsh", 10)  # type: ignore[arg-type]


def test_default_nlist_follows_four_sqrt_n_with_enough_points_per_cell() -> None:
    assert default_ivf_nlist(1_000_000) == 4_000
    assert default_ivf_nlist(2_000) == 2_000 // 39
    assert default_ivf_nlist(5) == 1


def test_bad_inputs_are_rejected(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    items, _ = data
    index = ItemIndex.build(items, "flat")
    with pytest.raises(ValueError):
        index.search(np.zeros((2, DIM + 1), dtype=np.float32), 3)
    with pytest.raises(ValueError):
        index.search(np.zeros((2, DIM), dtype=np.float32), 0)
    assert index.search(np.zeros((0, DIM), dtype=np.float32), 3)[1].shape == (0, 3)
    with pytest.raises(ValueError):
        ItemIndex.build(np.zeros((0, DIM), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        ItemIndex.load(tmp_path / "missing.faiss")
