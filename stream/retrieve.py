"""Stage 4 — retrieve: candidate items for many users with one ANN search.

Users with an interest vector query the FAISS index; items they must not get (purchases, the item they just
touched) are removed here so the ranker spends no work on them. The search over-fetches by the largest
exclusion count in the batch so excluded items do not shrink the candidate list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class VectorIndex(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...


def retrieve_candidates(
    index: VectorIndex,
    queries: np.ndarray,
    excluded_rows: Sequence[set[int]],
    n_candidates: int,
) -> list[np.ndarray]:
    """Candidate item rows per query, best first, with each user's excluded rows removed.

    ``queries`` is float32 ``[B, dim]``; returns ``B`` int64 arrays of at most ``n_candidates`` rows.
    """
    if len(queries) == 0:
        return []
    over_fetch = max((len(rows) for rows in excluded_rows), default=0)
    k = min(n_candidates + over_fetch, len(index))
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    candidates = []
    for found, excluded in zip(rows, excluded_rows, strict=True):
        keep = found[found >= 0]
        if excluded:
            keep = keep[~np.isin(keep, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))]
        candidates.append(keep[:n_candidates])
    return candidates
