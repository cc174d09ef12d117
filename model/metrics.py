"""Offline ranking metrics for next-item prediction with exactly one relevant item per query.

Everything starts from the 0-based rank of the held-out target among all candidate items (0 = ranked first),
so one full-ranking pass serves every cut-off ``k``. Pure, vectorised numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ranks(ranks: np.ndarray | Sequence[int]) -> np.ndarray:
    array = np.asarray(ranks)
    if array.size == 0:
        raise ValueError("metrics need at least one rank")
    if np.any(array < 0):
        raise ValueError("ranks are 0-based and must be non-negative")
    return array


def hit_rate(ranks: np.ndarray | Sequence[int], k: int) -> float:
    """HR@k: the share of queries whose target is among the first ``k`` items."""
    return float(np.mean(_ranks(ranks) < k))


def ndcg(ranks: np.ndarray | Sequence[int], k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` when ``rank < k``, else 0 (the ideal DCG is 1)."""
    array = _ranks(ranks).astype(np.float64)
    gains = np.where(array < k, 1.0 / np.log2(array + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray | Sequence[int]) -> float:
    """Mean reciprocal rank over the full ranking (no cut-off)."""
    return float(np.mean(1.0 / (_ranks(ranks).astype(np.float64) + 1.0)))


def rank_of_target(
    scores: np.ndarray, targets: np.ndarray | Sequence[int], exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """0-based rank of each row's target among all items, by descending score.

    ``scores`` is ``[B, n_items]``; ``targets`` holds one item row per query; ``exclude[i]`` lists item rows
    removed from query ``i``'s ranking (its history, as a recommender would never show those), implemented as
    score ``-inf``. The target itself is never excluded: a user coming back to an item seen before is still a
    correct prediction, and dropping it would make the query unanswerable. The rank counts the items scoring
    *strictly* higher than the target, so ties neither help nor hurt a model relative to its peers. A NaN
    target score ranks last. ``scores`` is not modified.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} do not align")
    rows = np.arange(len(targets))
    # Saved before exclusion: a target listed in its own history keeps its score and stays rankable.
    target_scores = scores[rows, targets]
    if exclude is not None:
        if len(exclude) != len(targets):
            raise ValueError("exclude needs one array per query")
        lengths = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
        if lengths.sum():
            scores = scores.copy()
            query_of = np.repeat(rows, lengths)
            items = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude])
            scores[query_of, items] = -np.inf
    ranks = np.count_nonzero(scores > target_scores[:, None], axis=1)
    n_items = scores.shape[1]
    return np.where(np.isnan(target_scores), n_items - 1, ranks).astype(np.int64)
