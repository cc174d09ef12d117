"""Maximum-inner-product search over the item embedding table, backed by FAISS.

The worker's retrieval query is a user's interest vector ``v`` and the score of an item is ``v · E[row]`` — the
same inner product training optimises — so every index kind here uses ``METRIC_INNER_PRODUCT`` on the raw
(unnormalised) embeddings. Normalising would turn the search into cosine similarity and drop the item-norm
signal (a learned popularity prior) that training put there.

Kinds:

* ``flat`` — exact brute force. One ``[B, d] x [d, n]`` matrix product per batch; the best choice while that
  product is cheap, and the ground truth for :func:`exact_recall`.
* ``hnsw`` — graph-based ANN. Sub-linear in the catalogue size, no training step; recall@100 0.96–1.00 at the default
  ``ef_search`` on trained tables up to tens of thousands of items, but it falls as the table grows (0.60 on a
  trained table of 758k items): a trained table's long tail spreads a query's best items thinly, which a greedy
  graph walk misses.
* ``ivf`` — inverted lists over k-means cells, with recall tuned by ``nprobe``. Kept for comparison: on trained
  tables it needs most cells probed, and then it is no faster than ``flat``.
* ``ivfpq`` — inverted lists whose vectors are stored as 4-bit product-quantised codes (one code per dimension)
  and scanned with SIMD ("fast-scan"), then the best ``rerank_factor · k`` re-scored exactly from the float
  vectors. Scanning codes is an order of magnitude cheaper than scanning floats, so the search can afford to probe
  most cells (:data:`IVFPQ_PROBE_SHARE`), which is what trained tables need; the exact re-scoring restores the
  ordering the codes blur. The default for large catalogues.
* ``auto`` — ``flat`` under :data:`AUTO_FLAT_MAX_ITEMS` items, ``hnsw`` under :data:`AUTO_HNSW_MAX_ITEMS`, ``ivfpq``
  above. Below a few thousand items an exact scan of a micro-batch costs well under a millisecond on one core
  (5,000 x 64 floats is 1.3 MB, which stays in cache), so an approximate index would only lose recall and add build
  time for no latency gain. ``bench/bench_index_scale.py`` measures every kind (README, "Shop scale").

Live catalogue changes never rebuild the index: new items are appended with :meth:`ItemIndex.add`, and items that
go out of stock or are delisted are hidden with :meth:`ItemIndex.set_available`. HNSW graphs cannot delete
vectors (``remove_ids`` is unsupported), so availability is a tombstone bitmap that every kind applies at search
time through a FAISS ``IDSelectorBitmap``; a row hidden that way is still a graph node that searches walk through,
it just never enters the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from streamrec.index.params import (
    AUTO_FLAT_MAX_ITEMS,
    AUTO_HNSW_MAX_ITEMS,
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    DEFAULT_RERANK_FACTOR,
    INDEX_KINDS,
    IVFPQ_PROBE_SHARE,
    IndexKind,
    IndexKindOrAuto,
)


def resolve_kind(kind: IndexKindOrAuto, n_items: int) -> IndexKind:
    """The concrete index kind ``kind`` stands for on a catalogue of ``n_items`` items."""
    if kind == "auto":
        if n_items < AUTO_FLAT_MAX_ITEMS:
            return "flat"
        return "hnsw" if n_items < AUTO_HNSW_MAX_ITEMS else "ivfpq"
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of auto, {', '.join(INDEX_KINDS)}")
    if kind == "ivfpq" and n_items < IVFPQ_MIN_ITEMS:
        raise ValueError(f"an ivfpq index needs at least {IVFPQ_MIN_ITEMS:,} items to train its codes, got {n_items:,}")
    return kind


IVF_MIN_POINTS_PER_CELL = 39
"""FAISS's k-means wants at least this many training points per centroid; fewer gives poorly placed cells."""


IVFPQ_MIN_ITEMS = 1_000
"""Fewest items an ``ivfpq`` index is built on: each of its codebooks is a 16-centroid k-means over the items."""


def default_ivf_nlist(n_items: int) -> int:
    """About ``4·sqrt(n)`` cells (the usual FAISS rule of thumb), capped so k-means has enough points per cell."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // IVF_MIN_POINTS_PER_CELL))


def default_ivfpq_nlist(n_items: int) -> int:
    """About ``sqrt(n)/4`` cells for ``ivfpq``: it probes most of them, so fewer, larger cells cost less to rank
    and lose fewer of a query's best items at cell borders (capped like :func:`default_ivf_nlist`)."""
    return max(1, min(round(math.sqrt(n_items) / 4), n_items // IVF_MIN_POINTS_PER_CELL))


def default_nprobe(kind: IndexKind, nlist: int) -> int:
    """Cells probed when none is set: :data:`DEFAULT_NPROBE` for ``ivf``, :data:`IVFPQ_PROBE_SHARE` of them for
    ``ivfpq``."""
    if kind == "ivfpq":
        return max(1, math.ceil(IVFPQ_PROBE_SHARE * nlist))
    return min(DEFAULT_NPROBE, nlist)


def as_float32_matrix(array: np.ndarray, dim: int | None = None, name: str | None = None) -> np.ndarray:
    """``array`` as the C-contiguous float32 matrix FAISS requires (copies only when needed); refused with a
    ``ValueError`` (naming ``name`` when given) if it is not 2-D or not ``dim`` wide."""
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    prefix = f"{name}: " if name else ""
    if matrix.ndim != 2:
        raise ValueError(f"{prefix}expected a 2-D array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{prefix}expected vectors of dimension {dim}, got {matrix.shape[1]}")
    return matrix


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with every non-zero row scaled to unit L2 norm (zero rows stay zero), as C-contiguous float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    scaled = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return np.ascontiguousarray(scaled, dtype=np.float32)


class ItemIndex:
    """An inner-product index over item rows ``0..n-1``: search returns rows of the embedding table.

    Rows can be appended (:meth:`add`) and hidden or shown again (:meth:`set_available`) while serving. None of
    this is locked: callers serialise searches and updates (the worker applies catalogue updates between
    micro-batches, never during a search), which keeps the hot path free of synchronisation.
    """

    def __init__(self, index: faiss.Index, kind: IndexKind) -> None:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("ItemIndex needs an inner-product FAISS index")
        self._index = index
        self._kind: IndexKind = kind
        # The inverted lists of an ivf or ivfpq index (for ivfpq, the coarse part under the exact re-scoring).
        self._cells: faiss.IndexIVF | None = None
        if kind == "ivf":
            self._cells = cast(faiss.IndexIVF, index)
        elif kind == "ivfpq":
            self._cells = faiss.downcast_index(cast(faiss.IndexRefine, index).base_index)
        # What ``set_search_params(nprobe=None)`` returns to: the breadth the index was built (or saved) with.
        self._built_nprobe = int(self._cells.nprobe) if self._cells is not None else 0
        self._available = np.ones(int(index.ntotal), dtype=bool)
        self._n_unavailable = 0
        # The filtered-search objects, built lazily and kept until the mask, the row count or the search breadth
        # changes. FAISS reads the bitmap through a raw pointer, so the packed buffer and the selector must stay
        # referenced here for as long as any search may use them.
        self._bitmap: np.ndarray | None = None
        self._selector: faiss.IDSelectorBitmap | None = None
        self._params: faiss.SearchParameters | None = None
        self._cell_params: faiss.SearchParametersIVF | None = None  # referenced by ``_params`` for ivfpq

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        kind: IndexKindOrAuto = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ivf_nlist: int | None = None,
        ef_search: int = DEFAULT_EF_SEARCH,
        nprobe: int | None = None,
        rerank_factor: int = DEFAULT_RERANK_FACTOR,
    ) -> ItemIndex:
        """Index ``embeddings`` (float32 ``[n_items, dim]``); row ``i`` of the table is result id ``i``.

        ``ivf_nlist`` and ``nprobe`` apply to ``ivf`` and ``ivfpq`` (unset: the kind's defaults, see
        :func:`default_ivf_nlist`, :func:`default_ivfpq_nlist`, :func:`default_nprobe`); the nprobe given here is
        the one :meth:`set_search_params` returns to when called without one, and is saved with the index.
        """
        if rerank_factor < 1:
            raise ValueError("rerank_factor must be at least 1")
        vectors = as_float32_matrix(embeddings)
        n_items, dim = vectors.shape
        if n_items == 0:
            raise ValueError("cannot build an index over an empty embedding table")
        concrete = resolve_kind(kind, n_items)
        index: faiss.Index
        if concrete == "flat":
            index = faiss.IndexFlatIP(dim)
        elif concrete == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
        else:
            default_nlist = default_ivf_nlist if concrete == "ivf" else default_ivfpq_nlist
            nlist = default_nlist(n_items) if ivf_nlist is None else max(1, min(ivf_nlist, n_items))
            if concrete == "ivf":
                quantizer = faiss.IndexFlatIP(dim)
                # FAISS's Python wrapper keeps a reference to the quantizer for the lifetime of the IVF index.
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
                cells = index
            else:
                # One 4-bit code per dimension of the vector's residual to its cell's centre ("x4fsr": residuals, in
                # the SIMD fast-scan layout; measured more exact than coding the vectors themselves at the same
                # cost); "RFlat" keeps the float vectors for the exact re-scoring.
                index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim}x4fsr,RFlat", faiss.METRIC_INNER_PRODUCT)
                cast(faiss.IndexRefine, index).k_factor = float(rerank_factor)
                cells = faiss.downcast_index(cast(faiss.IndexRefine, index).base_index)
            index.train(vectors)
            cells.nprobe = min(default_nprobe(concrete, nlist) if nprobe is None else nprobe, nlist)
        index.add(vectors)
        built = cls(index, concrete)
        built.set_search_params(ef_search, None)
        return built

    # --- queries ---------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query, best first, with one FAISS call for the whole batch.

        Returns ``(scores float32 [B, k], rows int64 [B, k])``; where fewer than ``k`` items are found (``k``
        larger than the catalogue, or an ANN search that ran out of candidates) the row is -1 and the score
        ``-inf``. Unavailable rows are never returned; while any exist the search filters them inside FAISS, so
        ``k`` available rows still come back whenever the index can find them.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        matrix = as_float32_matrix(queries, self.dim)
        if len(matrix) == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        if self._n_unavailable == 0:
            scores, rows = self._index.search(matrix, k)
        else:
            scores, rows = self._index.search(matrix, k, params=self._filtered_search_params())
        rows = rows.astype(np.int64, copy=False)
        scores[rows < 0] = -np.inf
        return scores, rows

    def set_search_params(self, ef_search: int, nprobe: int | None, rerank_factor: int | None = None) -> None:
        """Search breadth: ``ef_search`` for HNSW, ``nprobe`` for ivf / ivfpq (``None``: the nprobe the index was
        built with), ``rerank_factor`` for ivfpq (``None``: unchanged); ignored by kinds that lack them."""
        if ef_search < 1 or (nprobe is not None and nprobe < 1) or (rerank_factor is not None and rerank_factor < 1):
            raise ValueError("ef_search, nprobe and rerank_factor must be positive")
        if self._kind == "ivfpq" and rerank_factor is not None:
            refine = cast(faiss.IndexRefine, self._index)
            if refine.k_factor != rerank_factor:
                refine.k_factor = float(rerank_factor)
                self._params = None
        if self._kind == "hnsw":
            hnsw = cast(faiss.IndexHNSW, self._index).hnsw
            if hnsw.efSearch == ef_search:
                return
            hnsw.efSearch = ef_search
        elif self._cells is not None:
            wanted = min(self._built_nprobe if nprobe is None else nprobe, self._cells.nlist)
            if self._cells.nprobe == wanted:
                return
            self._cells.nprobe = wanted
        self._params = None  # the filtered path copies these values into its own parameters object

    @property
    def search_params(self) -> dict[str, int]:
        """The parameters in force, for manifests and reports."""
        if self._kind == "hnsw":
            hnsw = cast(faiss.IndexHNSW, self._index).hnsw
            return {"ef_search": int(hnsw.efSearch), "ef_construction": int(hnsw.efConstruction)}
        if self._cells is not None:
            params = {"nlist": int(self._cells.nlist), "nprobe": int(self._cells.nprobe)}
            if self._kind == "ivfpq":
                params["rerank_factor"] = int(cast(faiss.IndexRefine, self._index).k_factor)
            return params
        return {}

    def clone(self) -> ItemIndex:
        """An independent copy (vectors, search breadth and availability) that live updates can change without
        touching this one, e.g. the index of loaded artifacts that a worker serves and extends."""
        copy = ItemIndex(faiss.clone_index(self._index), self._kind)
        copy._available = self._available.copy()
        copy._n_unavailable = self._n_unavailable
        copy._built_nprobe = self._built_nprobe
        return copy

    # --- live updates ----------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append ``vectors`` (``[m, dim]``) as rows ``n .. n+m-1`` without a rebuild; returns those rows (int64).

        New items reach retrieval as soon as the catalogue publishes them instead of waiting for the next
        training run. An IVF index assigns them to its existing cells (it was trained at build time), and an
        HNSW index links them into its graph. Added rows are available.
        """
        matrix = as_float32_matrix(vectors, self.dim)
        start = len(self)
        if len(matrix) == 0:
            return np.empty(0, dtype=np.int64)
        self._index.add(matrix)
        self._available = np.concatenate([self._available, np.ones(len(matrix), dtype=bool)])
        self._invalidate_selector()  # the bitmap must cover the new rows or the selector would hide them
        return np.arange(start, start + len(matrix), dtype=np.int64)

    def set_available(self, rows: Sequence[int] | np.ndarray, available: bool) -> None:
        """Show (``available=True``) or hide rows from every later :meth:`search`; raises IndexError if out of range.

        Hiding is a tombstone, not a deletion: the vector stays in the index, so restocking an item is one call
        and costs nothing. The cached selector is dropped only when the mask actually changes.
        """
        ids = self._checked_rows(rows)
        if len(ids) == 0 or bool(np.all(self._available[ids] == available)):
            return
        self._available[ids] = available
        self._n_unavailable = int(len(self._available) - np.count_nonzero(self._available))
        self._invalidate_selector()

    def is_available(self, row: int) -> bool:
        """Whether ``row`` may be returned by :meth:`search`; raises IndexError if out of range."""
        return bool(self._available[self._checked_rows([row])[0]])

    @property
    def n_unavailable(self) -> int:
        """How many rows are hidden; zero means searches take the unfiltered fast path."""
        return self._n_unavailable

    def _checked_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``rows`` as an int64 vector, refused if any is outside ``0..n-1`` (a negative row would wrap around).

        A boolean mask is refused too: cast to integers it would silently name rows 0 and 1.
        """
        given = np.asarray(rows).reshape(-1)
        if given.size and given.dtype.kind not in "iu":
            raise TypeError(f"rows must be integers, got dtype {given.dtype}")
        ids = given.astype(np.int64, copy=False)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self._available)):
            raise IndexError(f"rows must lie in 0..{len(self._available) - 1}")
        return ids

    def _invalidate_selector(self) -> None:
        """Forget the filtered-search objects so the next filtered search rebuilds them from the current mask."""
        self._bitmap = None
        self._selector = None
        self._params = None
        self._cell_params = None

    def _filtered_search_params(self) -> faiss.SearchParameters:
        """Search parameters that admit only available rows, with this index's current efSearch / nprobe.

        FAISS takes efSearch / nprobe from the parameters object whenever one is passed, falling back to its own
        defaults (efSearch 16, nprobe 1), not to the index's settings, so they are copied over here. IVF also
        refuses a plain ``SearchParameters``, hence one subclass per kind.
        """
        if self._selector is None:
            # Bit i of byte i // 8, least significant first: FAISS's IDSelectorBitmap layout.
            self._bitmap = np.packbits(self._available, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(self._bitmap)
            self._params = None
        if self._params is None:
            self._params = self._make_params(self._selector)
        return self._params

    def _make_params(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        """The kind's parameters object carrying ``selector`` and the breadth set by :meth:`set_search_params`."""
        if self._kind == "hnsw":
            ef_search = int(cast(faiss.IndexHNSW, self._index).hnsw.efSearch)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search)
        if self._cells is not None:
            cells = faiss.SearchParametersIVF(sel=selector, nprobe=int(self._cells.nprobe))
            if self._kind == "ivf":
                return cells
            # ivfpq: the cells filter; the exact re-scoring only sees what they return. FAISS does not own the
            # inner object, so it stays referenced beside the outer one.
            self._cell_params = cells
            return faiss.IndexRefineSearchParameters(
                k_factor=float(cast(faiss.IndexRefine, self._index).k_factor), base_index_params=cells
            )
        return faiss.SearchParameters(sel=selector)

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index in FAISS's own binary format (not a pickle).

        Only the vectors are written, not availability: which items are in stock comes from the live catalogue
        when the worker starts, and a saved mask would be stale by the time a model version is served.
        """
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path) -> ItemIndex:
        """Read an index written by :meth:`save`; the kind is recovered from the FAISS index type.

        Every row starts available; the caller applies the live catalogue's availability afterwards.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"no index file at {path}")
        index = faiss.read_index(str(path))  # returns the concrete subclass, e.g. IndexHNSWFlat
        if isinstance(index, faiss.IndexRefineFlat) and isinstance(
            faiss.downcast_index(index.base_index), faiss.IndexIVFPQFastScan
        ):
            kind: IndexKind = "ivfpq"
        elif isinstance(index, faiss.IndexHNSWFlat):
            kind = "hnsw"
        elif isinstance(index, faiss.IndexIVFFlat):
            kind = "ivf"
        elif isinstance(index, faiss.IndexFlat):
            kind = "flat"
        else:
            raise ValueError(f"unsupported FAISS index type {type(index).__name__} in {path}")
        return cls(index, kind)

    # --- introspection ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def kind(self) -> IndexKind:
        return self._kind

    def __repr__(self) -> str:
        return f"ItemIndex(kind={self._kind!r}, n={len(self)}, dim={self.dim}, params={self.search_params})"


#: Scores one brute-force step holds (64 MiB of float32): a million items times a few thousand queries at once
#: would need tens of gigabytes with the sort's copies.
EXACT_CHUNK_SCORES = 1 << 24


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the exact top-``k`` inner products (``[B, min(k, n)]``, best first) by brute force in numpy, a
    chunk of queries at a time."""
    queries, embeddings = as_float32_matrix(queries), as_float32_matrix(embeddings)
    k = min(k, len(embeddings))
    step = max(1, EXACT_CHUNK_SCORES // max(1, len(embeddings)))
    parts = []
    for begin in range(0, len(queries), step):
        scores = queries[begin : begin + step] @ embeddings.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        parts.append(np.take_along_axis(top, order, axis=1).astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def exact_recall(index: ItemIndex, embeddings: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Recall@k of ``index`` against exact inner-product search: the share of true top-k rows it returns.

    This is the price paid for approximation; a ``flat`` index scores 1.0 up to ties.
    """
    if len(queries) == 0:
        raise ValueError("exact_recall needs at least one query")
    truth = exact_top_k(embeddings, queries, k)
    _, found = index.search(queries, k)
    hits = sum(len(np.intersect1d(t, f[f >= 0], assume_unique=True)) for t, f in zip(truth, found, strict=True))
    return hits / truth.size
