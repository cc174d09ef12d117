"""The FAISS item index: inner-product search, recall against exact search, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.index.item_index import (
    IVFPQ_MIN_ITEMS,
    ItemIndex,
    default_ivf_nlist,
    default_ivfpq_nlist,
    default_nprobe,
    exact_recall,
    exact_top_k,
    resolve_kind,
)
from streamrec.index.params import AUTO_FLAT_MAX_ITEMS, AUTO_HNSW_MAX_ITEMS

DIM = 16


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors, like trained item embeddings (and unlike uniform noise, the worst case for ANN)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, DIM))
    items = centres[rng.integers(20, size=2_000)] + 0.3 * rng.normal(size=(2_000, DIM))
    queries = centres[rng.integers(20, size=100)] + 0.3 * rng.normal(size=(100, DIM))
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize(("kind", "min_recall"), [("flat", 1.0), ("hnsw", 0.95), ("ivf", 0.9), ("ivfpq", 0.95)])
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


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
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
    assert resolve_kind("auto", AUTO_HNSW_MAX_ITEMS - 1) == "hnsw"
    assert resolve_kind("auto", AUTO_HNSW_MAX_ITEMS) == "ivfpq"
    assert ItemIndex.build(np.eye(3, DIM, dtype=np.float32)).kind == "flat"
    with pytest.raises(ValueError):
        resolve_kind("lsh", 10)  # type: ignore[arg-type]


def test_default_nlist_follows_four_sqrt_n_with_enough_points_per_cell() -> None:
    assert default_ivf_nlist(1_000_000) == 4_000
    assert default_ivf_nlist(2_000) == 2_000 // 39
    assert default_ivf_nlist(5) == 1
    assert default_ivfpq_nlist(1_000_000) == 250 and default_ivfpq_nlist(2_000) == 11
    assert default_nprobe("ivf", 4_000) == 16 and default_nprobe("ivf", 10) == 10
    assert default_nprobe("ivfpq", 250) == 157


def test_ivfpq_needs_enough_items_to_train_its_codes() -> None:
    with pytest.raises(ValueError, match="at least 1,000 items"):
        ItemIndex.build(np.ones((IVFPQ_MIN_ITEMS - 1, DIM), dtype=np.float32), "ivfpq")


def test_ivfpq_rescores_exactly_and_returns_to_its_built_breadth(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = data
    index = ItemIndex.build(items, "ivfpq", ivf_nlist=8, nprobe=3, rerank_factor=4)
    assert index.search_params == {"nlist": 8, "nprobe": 3, "rerank_factor": 4}
    scores, rows = index.search(queries, 5)
    # The codes only choose the candidates: the scores are the exact inner products.
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, rows, axis=1), rtol=1e-4, atol=1e-4)
    index.set_search_params(ef_search=1, nprobe=8)
    assert index.search_params["nprobe"] == 8
    index.set_search_params(ef_search=1, nprobe=None)
    assert index.search_params["nprobe"] == 3
    copy = index.clone()
    copy.set_search_params(ef_search=1, nprobe=6)
    copy.set_search_params(ef_search=1, nprobe=None)
    assert copy.search_params["nprobe"] == 3 and index.search_params["nprobe"] == 3


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


# --- live updates: add and availability -----------------------------------------------------------------
KINDS = ["flat", "hnsw", "ivf", "ivfpq"]


def _catalogue(kind: str) -> np.ndarray:
    """A catalogue small enough that every kind searches it exhaustively (IVF probes all its cells; an HNSW walk
    still reaches the few rows a heavy filter leaves), and for ivfpq just large enough to train its codes."""
    rng = np.random.default_rng(1)
    return rng.normal(size=(IVFPQ_MIN_ITEMS if kind == "ivfpq" else 300, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return _catalogue("flat")


def _build_small(items: np.ndarray, kind: str) -> ItemIndex:
    """``kind`` over ``items`` with breadth wide enough that filtered searches are exact on this catalogue."""
    return ItemIndex.build(items, kind, ivf_nlist=4, nprobe=4, ef_search=256, rerank_factor=100)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_added_vectors_are_found_and_old_results_kept(kind: str) -> None:
    small = _catalogue(kind)
    index = _build_small(small, kind)
    queries = small[:20]
    before_scores, before = index.search(queries, 5)
    rng = np.random.default_rng(2)
    new = 10.0 * rng.normal(size=(3, DIM)).astype(np.float32)  # long vectors: each is its own best match
    rows = index.add(new)
    n = len(small)
    assert rows.dtype == np.int64 and rows.tolist() == [n, n + 1, n + 2] and len(index) == n + 3
    assert index.search(new, 1)[1][:, 0].tolist() == rows.tolist()
    assert all(index.is_available(int(r)) for r in rows)
    # Queries that score every new row below their old 5th hit keep exactly their old results.
    unaffected = (queries @ new.T < before_scores[:, [-1]]).all(axis=1)
    assert unaffected.any()
    assert np.array_equal(index.search(queries, 5)[1][unaffected], before[unaffected])


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_rows_are_never_returned_and_can_come_back(kind: str) -> None:
    small = _catalogue(kind)
    index = _build_small(small, kind)
    queries = small[:10]
    _, rows = index.search(queries, 5)
    best = rows[:, 0]
    index.set_available(best, False)
    assert index.n_unavailable == len(np.unique(best)) and not index.is_available(int(best[0]))
    scores, filtered = index.search(queries, 5)
    assert (filtered >= 0).all() and np.isfinite(scores).all()  # still k results
    assert not np.isin(filtered, best).any()
    exact = queries @ small.T
    exact[:, best] = -np.inf
    assert np.array_equal(filtered, np.argsort(-exact, axis=1, kind="stable")[:, :5])
    index.set_available(best, True)
    assert index.n_unavailable == 0 and index.is_available(int(best[0]))
    assert np.array_equal(index.search(queries, 5)[1], rows)


@pytest.mark.parametrize("kind", KINDS)
def test_only_available_rows_come_back_padded_with_minus_one(kind: str) -> None:
    small = _catalogue(kind)
    index = _build_small(small, kind)
    keep = [7, 150, 299]
    index.set_available(np.setdiff1d(np.arange(len(small)), keep), False)
    assert index.n_unavailable == len(small) - 3
    scores, rows = index.search(small[:4], 6)
    assert all(sorted(r[:3].tolist()) == keep for r in rows)
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    added = index.add(small[:1])  # rows added later are available, even under a cached selector
    assert index.search(small[:1], 1)[1][0, 0] == added[0]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_search_breadth_still_applies_under_a_filter(kind: str) -> None:
    small = _catalogue(kind)
    index = _build_small(small, kind)
    index.set_available([0], False)
    index.search(small[:1], 3)  # builds and caches the filtered parameters
    index.set_search_params(ef_search=40, nprobe=2)
    params = index._filtered_search_params()
    if kind == "hnsw":
        assert params.efSearch == 40
    else:
        # ivfpq's outer parameters carry the cells' own (FAISS hands the inner object back untyped).
        cells = index._cell_params if kind == "ivfpq" else params
        assert cells is not None and cells.nprobe == 2 and cells.sel is not None


def test_selector_is_cached_until_the_mask_changes(small: np.ndarray) -> None:
    index = _build_small(small, "flat")
    index.set_available([3, 4], False)
    first = index._filtered_search_params()
    index.set_available([3], False)  # no change
    assert index._filtered_search_params() is first
    index.set_available([5], False)
    assert index._filtered_search_params() is not first


@pytest.mark.parametrize("kind", KINDS)
def test_bad_updates_are_rejected(kind: str) -> None:
    small = _catalogue(kind)
    index = _build_small(small, kind)
    with pytest.raises(ValueError):
        index.add(np.zeros((2, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add(np.zeros(DIM, dtype=np.float32))
    assert index.add(np.zeros((0, DIM), dtype=np.float32)).shape == (0,) and len(index) == len(small)
    with pytest.raises(IndexError):
        index.set_available([len(small)], False)
    with pytest.raises(IndexError):
        index.set_available([-1], False)
    with pytest.raises(IndexError):
        index.is_available(len(small))
    with pytest.raises(TypeError):
        index.set_available(np.ones(len(small), dtype=bool), False)
    index.set_available([], False)
    assert index.n_unavailable == 0


def test_save_writes_vectors_only_and_load_starts_all_available(small: np.ndarray, tmp_path: Path) -> None:
    index = _build_small(small, "hnsw")
    index.add(small[:2])
    index.set_available([0, 1], False)
    index.save(tmp_path / "index.faiss")
    loaded = ItemIndex.load(tmp_path / "index.faiss")
    assert len(loaded) == len(small) + 2 and loaded.n_unavailable == 0 and loaded.is_available(0)
