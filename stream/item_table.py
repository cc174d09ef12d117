"""The items a worker can retrieve: the model's trained items, then items added live from the catalog.

Row ``r`` of :attr:`ItemTable.embeddings` is row ``r`` of the FAISS index. The first :attr:`n_trained` rows are the
model's item table ``E`` (the ranker knows them); rows after it hold content embeddings of catalog items the model
has never seen, projected into the same space (``model/content.py``), so ANN search, the interest vector and the
ranker's score ``h · E[item]`` all work for them from the moment they are added.

Nothing is ever deleted from the index, because HNSW cannot remove vectors: an unavailable item is a tombstone in
the index's availability bitmap, skipped by every search; an item whose content changed gets a new row and its old
row becomes a tombstone. Rows are reclaimed when the next trained model replaces the table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from streamrec.index.item_index import ItemIndex, unit_rows

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts

log = logging.getLogger(__name__)

NO_CLUSTER = -1


class ItemTable:
    """Rows, ids, embeddings, clusters and availability of every retrievable item, in step with the index."""

    def __init__(self, artifacts: ModelArtifacts, max_live_items: int) -> None:
        self.item_ids: list[str] = list(artifacts.item_ids)
        self.row_of: dict[str, int] = dict(artifacts.row_of)
        self.n_trained = len(self.item_ids)
        self.max_live_items = max_live_items
        # The artifact's index is shared by everything that loaded it (tests, a model being swapped out):
        # live rows go into a private copy.
        self.index: ItemIndex = artifacts.index.clone()
        base = artifacts.item_embeddings
        self._embeddings = np.zeros((self.n_trained + min(max_live_items, 1024), base.shape[1]), dtype=np.float32)
        self._embeddings[: self.n_trained] = base
        self._unit = np.zeros_like(self._embeddings)
        self._unit[: self.n_trained] = unit_rows(base)
        segments = artifacts.segments
        self._cluster = np.full(len(self._embeddings), NO_CLUSTER, dtype=np.int32)
        if segments is not None:
            self._cluster[: self.n_trained] = segments.item_cluster
        self._segments = segments
        self.n_live = 0
        #: Each live item's row as its content gave it, before its shoppers moved it (``stream/new_items.py``).
        self.content_of: dict[str, np.ndarray] = {}

    @property
    def embeddings(self) -> np.ndarray:
        """``[rows, dim]`` float32; a view that a later :meth:`add` may replace, so do not keep it."""
        return self._embeddings[: len(self.item_ids)]

    @property
    def unit_embeddings(self) -> np.ndarray:
        """:attr:`embeddings` scaled to unit length (zero rows stay zero), for cosine similarities."""
        return self._unit[: len(self.item_ids)]

    @property
    def dim(self) -> int:
        return int(self._embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def is_trained(self, item_id: str) -> bool:
        row = self.row_of.get(item_id)
        return row is not None and row < self.n_trained

    def add(self, item_id: str, vector: np.ndarray) -> int | None:
        """Serve ``item_id`` with ``vector`` from now on; returns its row, or None when it cannot be added.

        A trained item keeps its learned embedding (None). A live item whose content changed moves to a new row
        and its old row is tombstoned. None too once :attr:`max_live_items` live rows exist.
        """
        if self.is_trained(item_id):
            return None
        row = self._append(item_id, vector, available=True)
        if row is not None:
            self.content_of[item_id] = vector
        return row

    def move(self, item_id: str, vector: np.ndarray) -> int | None:
        """Serve live item ``item_id`` at ``vector`` from now on, its availability unchanged: a new row, the old one
        tombstoned (an HNSW index cannot change a vector in place). Returns the new row, or None for an item that
        is not live or when :attr:`max_live_items` rows exist."""
        row = self.row_of.get(item_id)
        if row is None or row < self.n_trained:
            return None
        return self._append(item_id, vector, available=self.index.is_available(row))

    def _append(self, item_id: str, vector: np.ndarray, available: bool) -> int | None:
        if self.n_live >= self.max_live_items:
            log.warning("not indexing item %s: %d live items is the limit (max_live_items)", item_id, self.n_live)
            return None
        previous = self.row_of.get(item_id)
        row = len(self.item_ids)
        self._reserve(row + 1)
        self._embeddings[row] = vector
        self._unit[row] = unit_rows(vector[None, :])[0]
        if self._segments is not None:
            self._cluster[row] = int(self._segments.assign_items(vector[None, :])[0])
        added = self.index.add(vector[None, :].astype(np.float32))
        if int(added[0]) != row:
            raise RuntimeError(f"index row {int(added[0])} out of step with item table row {row}")
        self.item_ids.append(item_id)
        self.row_of[item_id] = row
        self.n_live += 1
        if previous is not None:
            self.index.set_available([previous], False)
        if not available:
            self.index.set_available([row], False)
        return row

    def set_available(self, item_id: str, available: bool) -> None:
        row = self.row_of.get(item_id)
        if row is not None and self.index.is_available(row) != available:
            self.index.set_available([row], available)

    def cluster_of(self, row: int) -> int:
        """The item cluster of a row (a stand-in for a category), :data:`NO_CLUSTER` without segments."""
        return int(self._cluster[row])

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._embeddings):
            return
        capacity = max(rows, 2 * len(self._embeddings))
        grown = np.zeros((capacity, self.dim), dtype=np.float32)
        grown[: len(self._embeddings)] = self._embeddings
        self._embeddings = grown
        unit = np.zeros_like(grown)
        unit[: len(self._unit)] = self._unit
        self._unit = unit
        clusters = np.full(capacity, NO_CLUSTER, dtype=np.int32)
        clusters[: len(self._cluster)] = self._cluster
        self._cluster = clusters
