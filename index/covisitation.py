"""Co-visitation: items that users touch close together in time, kept up to date from the stream.

A second candidate source next to the ANN index. The embedding retrieves what fits the user's whole (decayed)
taste; co-visitation retrieves what people touch right after the user's *last few* items, which is what a
recency-weighted item-kNN does and why it is strong on sequential data (see ``../shared/README.md``).

Counts: when a user touches item ``j``, each of their previous ``window`` known items ``i`` (most recent first,
``k = 0, 1, ...``) adds ``decay**k`` to the pair ``(i, j)`` in both directions, and ``j`` adds 1 to its own
count. Similarity is cosine-normalised, ``c_ij / sqrt(n_i · n_j)``, so popular items do not neighbour everything.
Each item keeps at most ``max_neighbours`` neighbours: when a row overflows, its weakest half is dropped, which
bounds memory on a stream that never ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import numpy as np


class CoVisitation:
    """Incremental, bounded item-to-item co-visitation over model rows ``0..n_items-1``."""

    def __init__(self, n_items: int, window: int = 3, decay: float = 0.6, max_neighbours: int = 200) -> None:
        if window < 1 or not 0 < decay <= 1 or max_neighbours < 1:
            raise ValueError("window >= 1, 0 < decay <= 1 and max_neighbours >= 1 are required")
        self.window = window
        self.decay = decay
        self.max_neighbours = max_neighbours
        self._counts: list[dict[int, float]] = [{} for _ in range(n_items)]
        self._item_totals = np.zeros(n_items, dtype=np.float64)

    @property
    def n_items(self) -> int:
        return len(self._counts)

    def grow(self, n_items: int) -> None:
        """Make room for rows up to ``n_items - 1`` (items added to the index live)."""
        missing = n_items - len(self._counts)
        if missing > 0:
            self._counts.extend({} for _ in range(missing))
            self._item_totals = np.concatenate([self._item_totals, np.zeros(missing)])

    def strengths(self, sources: Sequence[int], targets: Sequence[int]) -> np.ndarray:
        """``[sources, targets]`` cosine-normalised co-visitation (0 where never seen together)."""
        pairs = self.strengths_of_pairs(
            np.repeat(np.asarray(sources, dtype=np.int64), len(targets)),
            np.tile(np.asarray(targets, dtype=np.int64), len(sources)),
        )
        return pairs.reshape(len(sources), len(targets))

    def strengths_of_pairs(self, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The strength of each pair ``(sources[i], targets[i])`` as in :meth:`strengths`."""
        size, counts = len(self._counts), self._counts
        together = np.array(
            [
                counts[source].get(target, 0.0) if 0 <= source < size else 0.0
                for source, target in zip(np.asarray(sources).tolist(), np.asarray(targets).tolist(), strict=True)
            ],
            dtype=np.float64,
        )
        totals = np.sqrt(
            self._totals_of(np.asarray(sources, dtype=np.int64)) * self._totals_of(np.asarray(targets, dtype=np.int64))
        )
        return np.divide(together, totals, out=np.zeros_like(together), where=(together > 0) & (totals > 0))

    def _totals_of(self, rows: np.ndarray) -> np.ndarray:
        inside = (rows >= 0) & (rows < len(self._counts))
        return np.where(inside, self._item_totals[np.where(inside, rows, 0)], 0.0)

    def add(self, previous_rows: Sequence[int], row: int) -> None:
        """Record that ``row`` was touched after ``previous_rows`` (oldest first; the last ``window`` count)."""
        self._item_totals[row] += 1.0
        recent = previous_rows[-self.window :]
        for k, earlier in enumerate(reversed(recent)):
            if earlier == row:
                continue
            weight = self.decay**k
            self._bump(earlier, row, weight)
            self._bump(row, earlier, weight)

    def fit_sequences(self, sequences: Iterable[Sequence[int]]) -> CoVisitation:
        """Count whole sequences (oldest first), e.g. the training histories, before the stream takes over."""
        for sequence in sequences:
            for position, row in enumerate(sequence):
                self.add(sequence[max(0, position - self.window) : position], row)
        return self

    def _bump(self, source: int, target: int, weight: float) -> None:
        row = self._counts[source]
        row[target] = row.get(target, 0.0) + weight
        if len(row) > 2 * self.max_neighbours:
            kept = heapq.nlargest(self.max_neighbours, row.items(), key=lambda pair: pair[1])
            self._counts[source] = dict(kept)

    def similar(self, row: int) -> dict[int, float]:
        """Cosine-normalised neighbours of one item."""
        others, similarities = self._similar_arrays(row)
        return dict(zip(others.tolist(), similarities.tolist(), strict=True))

    def _similar_arrays(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        counts = self._counts[row]
        own = self._item_totals[row]
        if own == 0 or not counts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        others = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        totals = self._item_totals[others]
        known = totals > 0
        return others[known], values[known] / np.sqrt(own * totals[known])

    def candidates(self, history_rows: Sequence[int], n: int, excluded: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items for a user whose known history is ``history_rows`` (oldest first).

        The user's last ``window`` items vote with weights ``decay**k`` (most recent first); returns rows and
        scores, best first, without ``excluded`` rows.
        """
        votes = [self._similar_arrays(row) for row in reversed(history_rows[-self.window :])]
        rows = np.concatenate([others for others, _ in votes]) if votes else np.empty(0, dtype=np.int64)
        if rows.size == 0:
            return rows, np.empty(0, dtype=np.float32)
        weights = np.concatenate([sims * self.decay**k for k, (_, sims) in enumerate(votes)])
        unique, inverse = np.unique(rows, return_inverse=True)
        scores = np.bincount(inverse, weights=weights)
        if excluded:
            keep = ~np.isin(unique, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
            unique, scores = unique[keep], scores[keep]
        order = np.lexsort((unique, -scores))[:n]  # best first; ties by row for determinism
        return unique[order], scores[order].astype(np.float32)
