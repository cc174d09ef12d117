"""Stage 5 — rank: re-score every user's candidates, one ranker forward per batch.

Rankers answer one question (:class:`CandidateRanker`): a float32 score per candidate, aligned with the candidates.
:class:`SequenceRankerScores` is the trained sequence ranker; :class:`BlendedRanker` adds the item-kNN with the
artifact's weight (``streamrec.model.baselines.blend_scores``, the blend training chose and evaluation measures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from streamrec.model.baselines import ItemKNNModel, blend_scores
from streamrec.stream.item_table import ItemTable
from streamrec.stream.retrieve import Candidates
from streamrec.stream.sources import UserQuery

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts


class SequenceScorer(Protocol):
    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor: ...

    def encode(self, history: torch.Tensor) -> torch.Tensor: ...


def rank_candidates(
    ranker: SequenceScorer,
    histories: Sequence[Sequence[int]],
    candidates: Sequence[np.ndarray],
    max_history: int,
    item_table: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Ranker scores aligned with ``candidates``: one float32 array per user.

    Histories are item rows oldest first; they are left-padded with -1 to a common length (the last column is
    the most recent item), and candidate lists are right-padded with row 0, whose scores are dropped.
    Candidates past the ranker's own item table (items added live from the catalog) are scored the same way,
    ``h · E[item]``, against ``item_table``, whose first rows are the ranker's table.
    """
    if not candidates:
        return []
    batch = len(candidates)
    history = _padded_histories(histories, max_history)
    width = max(1, max(len(c) for c in candidates))
    padded = np.zeros((batch, width), dtype=np.int64)
    for i, rows in enumerate(candidates):
        padded[i, : len(rows)] = rows
    with torch.inference_mode():
        if item_table is not None and len(item_table) > 0 and padded.max() >= _trained_items(ranker):
            user = ranker.encode(torch.from_numpy(history))
            vectors = torch.from_numpy(item_table)[torch.from_numpy(padded)]
            scores = torch.einsum("bd,bcd->bc", user, vectors).float().numpy()
        else:
            scores = ranker.score(torch.from_numpy(history), torch.from_numpy(padded)).float().numpy()
    return [scores[i, : len(rows)] for i, rows in enumerate(candidates)]


def user_states(ranker: SequenceScorer, histories: Sequence[Sequence[int]], max_history: int) -> np.ndarray:
    """float32 ``[users, d]``: the ranker's state of each trained history, what it scores an item's row against."""
    if not histories:
        return np.empty((0, 0), dtype=np.float32)
    with torch.inference_mode():
        return ranker.encode(torch.from_numpy(_padded_histories(histories, max_history))).float().numpy()


def _padded_histories(histories: Sequence[Sequence[int]], max_history: int) -> np.ndarray:
    """The last ``max_history`` rows of each history, left-padded with -1 to a common length: the ranker's input."""
    history_len = max(1, min(max_history, max((len(h) for h in histories), default=1)))
    history = np.full((len(histories), history_len), -1, dtype=np.int64)
    for i, rows in enumerate(histories):
        recent = list(rows)[-history_len:]
        if recent:
            history[i, history_len - len(recent) :] = recent
    return history


def _trained_items(ranker: SequenceScorer) -> int:
    config = getattr(ranker, "config", None)
    return int(config.n_items) if config is not None else 2**62


@dataclass(slots=True)
class RankedCandidates:
    """One user's candidates in ranker order, best first, held as arrays.

    The list builder (``stream/select.py``) reads them as arrays too: building an object per candidate would cost
    more than ranking them.
    """

    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    sources: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int8))  # index into source_names
    source_names: Sequence[str] = ()

    @classmethod
    def by_score(
        cls,
        rows: np.ndarray,
        scores: np.ndarray,
        sources: np.ndarray,
        source_names: Sequence[str],
    ) -> RankedCandidates:
        order = np.argsort(-scores, kind="stable")
        return cls(rows[order], scores[order], sources[order], source_names)

    def __len__(self) -> int:
        return len(self.rows)


class CandidateRanker(Protocol):
    """Scores the candidates of a batch of users."""

    def score(self, users: Sequence[UserQuery], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 array per user, aligned with that user's candidates (finite for every row)."""
        ...


class SequenceRankerScores:
    """The trained sequence ranker over each user's trained history; live items are scored ``h · E[item]``."""

    def __init__(self, ranker: SequenceScorer, items: ItemTable, max_history: int) -> None:
        self.ranker, self.items, self.max_history = ranker, items, max_history

    def score(self, users: Sequence[UserQuery], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        histories = [user.trained_history for user in users]
        return rank_candidates(self.ranker, histories, candidates, self.max_history, self.items.embeddings)


class BlendedRanker:
    """``ranker + weight · item-kNN``: the served score. Items added live have no item-kNN score (0)."""

    def __init__(self, ranker: CandidateRanker, item_knn: ItemKNNModel, weight: float, items: ItemTable) -> None:
        self.ranker, self.item_knn, self.weight, self.items = ranker, item_knn, weight, items

    def score(self, users: Sequence[UserQuery], candidates: Sequence[np.ndarray]) -> list[np.ndarray]:
        scores = self.ranker.score(users, candidates)
        n_trained = self.items.n_trained
        recent = [list(user.recent[: self.item_knn.n_recent]) for user in users]
        trained = [np.where(rows < n_trained, rows, 0) for rows in candidates]
        knn = self.item_knn.score_candidates(recent, trained)
        return [
            blend_scores(ranker, np.where(rows < n_trained, item_knn, 0.0), self.weight)
            for ranker, item_knn, rows in zip(scores, knn, candidates, strict=True)
        ]


def served_ranker(artifacts: ModelArtifacts, items: ItemTable) -> CandidateRanker:
    """The sequence ranker, blended with the item-kNN where training chose a weight above 0."""
    ranker: CandidateRanker = SequenceRankerScores(artifacts.ranker, items, artifacts.ranker.config.max_len)
    if artifacts.item_knn is not None and artifacts.blend_weight > 0:
        ranker = BlendedRanker(ranker, artifacts.item_knn, artifacts.blend_weight, items)
    return ranker


def rank(
    ranker: CandidateRanker,
    user_ids: Sequence[str],
    users: Sequence[UserQuery],
    candidates: Candidates,
) -> dict[str, RankedCandidates]:
    """Each user's merged candidates scored by ``ranker`` in one forward and sorted, best first."""
    scores = ranker.score(users, candidates.rows)
    return {
        user_id: RankedCandidates.by_score(rows, row_scores, codes, candidates.source_names)
        for user_id, rows, row_scores, codes in zip(user_ids, candidates.rows, scores, candidates.origin, strict=True)
    }
