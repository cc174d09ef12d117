"""The candidate sources of stage 4: each proposes item rows for the users of a batch; the retriever merges them.

Every source answers the same question the same way (:class:`CandidateSource`): for each user of the batch, at most
``n`` item rows, best first, none of the user's excluded rows. The retriever (``retrieve.py``) asks each configured
source by name and :func:`merge` keeps the ANN's order, appends what the others add, and remembers which source
proposed each row (a collaborative source wins the explanation of a row the ANN found too). Trending items are
blended later, per user context, by the list builder (``stream/select.py``): they are not rows of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.baselines import ItemKNNModel
from streamrec.stream.item_table import ItemTable


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

    Excluded items (purchases, the item just touched) are removed here so the ranker spends no work on them; the
    search over-fetches by the largest exclusion count in the batch so they do not shrink the candidate list.

    ``queries`` is float32 ``[B, dim]``; returns ``B`` int64 arrays of at most ``n_candidates`` rows.
    """
    if len(queries) == 0:
        return []
    over_fetch = max((len(rows) for rows in excluded_rows), default=0)
    k = min(n_candidates + over_fetch, len(index))
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    found = rows >= 0
    if any(excluded_rows):
        # One membership test for the whole batch, on (user, row) pairs.
        width = np.int64(max(len(index), int(rows.max(initial=0)) + 1))
        pairs = np.arange(len(rows), dtype=np.int64)[:, None] * width + rows
        excluded_pairs = np.fromiter(
            (user * width + row for user, rows_out in enumerate(excluded_rows) for row in rows_out), dtype=np.int64
        )
        found &= ~np.isin(pairs, excluded_pairs)
    # The first n_candidates rows left in each user's row of results.
    found &= np.cumsum(found, axis=1) <= n_candidates
    return [found_rows[keep] for found_rows, keep in zip(rows, found, strict=True)]


@dataclass(frozen=True, slots=True)
class UserQuery:
    """What a candidate source (and the ranker) may read about one user of the batch."""

    vector: np.ndarray  # float32 [dim]: the interest vector
    history: tuple[int, ...]  # rows of the user's known recent items, oldest first
    trained_history: tuple[int, ...]  # the same, only rows the model was trained on (the ranker's vocabulary)
    recent: tuple[int, ...]  # trained rows of the latest interactions, most recent first (see recent_interactions)
    excluded: frozenset[int]  # rows never to propose: purchases, the current item, the request's exclusions

    @classmethod
    def of(cls, vector: np.ndarray, history: Sequence[int], n_trained: int, excluded: set[int]) -> UserQuery:
        """The query of a user whose known history is ``history``; rows from ``n_trained`` on were added live."""
        trained = tuple(row for row in history if row < n_trained)
        return cls(vector, tuple(history), trained, tuple(recent_interactions(trained)), frozenset(excluded))


class CandidateSource(Protocol):
    """Proposes candidates for a batch of users."""

    name: str

    def candidates(self, users: Sequence[UserQuery]) -> list[np.ndarray]:
        """One int64 array per user: at most the source's size, best first, no excluded row, no repeat."""
        ...


class AnnSource:
    """Nearest items to the interest vector in the FAISS index: one search for the whole batch."""

    name = "ann"

    def __init__(self, items: ItemTable, n: int) -> None:
        self.items, self.n = items, n

    def candidates(self, users: Sequence[UserQuery]) -> list[np.ndarray]:
        if not users:
            return []
        queries = np.stack([user.vector for user in users]).astype(np.float32, copy=False)
        return retrieve_candidates(self.items.index, queries, [set(user.excluded) for user in users], self.n)


class CoVisitationSource:
    """Items other shoppers touched right after the user's latest items, learned from the stream."""

    name = "covisitation"

    def __init__(self, covisitation: CoVisitation, n: int) -> None:
        self.covisitation, self.n = covisitation, n

    def candidates(self, users: Sequence[UserQuery]) -> list[np.ndarray]:
        return [self.covisitation.candidates(user.history, self.n, set(user.excluded))[0] for user in users]


class ItemKnnSource:
    """The trained item-kNN's neighbours of the user's latest interactions."""

    name = "item_knn"

    def __init__(self, item_knn: ItemKNNModel, n: int) -> None:
        self.item_knn, self.n = item_knn, n

    def candidates(self, users: Sequence[UserQuery]) -> list[np.ndarray]:
        return [
            self.item_knn.top_neighbors(list(user.recent[: self.item_knn.n_recent]), self.n, set(user.excluded))
            for user in users
        ]


def recent_interactions(history: Sequence[int]) -> list[int]:
    """Rows of the user's interactions, most recent first: consecutive events on one item count once, as in the
    item-kNN's training (``model/baselines.py``)."""
    runs = [row for i, row in enumerate(history) if i + 1 == len(history) or history[i + 1] != row]
    return runs[::-1]


def merge(proposed: dict[str, list[np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's union of the sources' rows (the first source's order, then each further source's new rows) and,
    aligned with it, the int8 code of the source that explains each row (its index in ``proposed``)."""
    names = list(proposed)
    if not names:
        return [], []
    n_users = len(proposed[names[0]])
    lists = [(code, user, rows) for code, name in enumerate(names) for user, rows in enumerate(proposed[name])]
    rows = np.concatenate([rows for *_, rows in lists]).astype(np.int64, copy=False)
    if not len(rows):
        return [np.empty(0, dtype=np.int64) for _ in range(n_users)], [np.empty(0, dtype=np.int8)] * n_users
    users = np.repeat(np.array([user for _, user, _ in lists]), [len(rows) for *_, rows in lists])
    codes = np.repeat(np.array([code for code, _, _ in lists]), [len(rows) for *_, rows in lists])
    # Occurrences are listed source by source, so a pair's first occurrence is the earliest source's, at its rank.
    pairs = users * np.int64(rows.max() + 1) + rows
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
    # An item a collaborative source proposed is explained by it, even if the first source found it too: the
    # last source that proposed a row explains it.
    origin = np.zeros(len(first), dtype=np.int8)
    np.maximum.at(origin, inverse, codes.astype(np.int8))
    order = np.lexsort((first, users[first]))
    bounds = np.cumsum(np.bincount(users[first], minlength=n_users))[:-1]
    return np.split(rows[first[order]], bounds), np.split(origin[order], bounds)
