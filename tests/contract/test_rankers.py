"""The contract every candidate ranker keeps (one mixin, run against each ranker).

A ranker returns one float32 array per user, aligned with that user's candidates and finite; a candidate's score
does not depend on the other candidates beside it or their order. The blend at weight 0 is the ranker it wraps.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import ItemKNNModel, blend_scores
from streamrec.model.compress import quantize_int8
from streamrec.stream.item_table import ItemTable
from streamrec.stream.rank import BlendedRanker, CandidateRanker, SequenceRankerScores
from streamrec.stream.settings import Settings
from streamrec.stream.sources import UserQuery, recent_interactions

TOLERANCE = 1e-4


def _candidates(users: list[UserQuery], n_items: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.choice(n_items, size=size, replace=False) for size in [25, 1, 40, 7, 0, 12, 30, 3, 18, 9, 2, 11]]


class CandidateRankerContract:
    @pytest.fixture
    def ranker(self) -> CandidateRanker:
        raise NotImplementedError

    def test_scores_are_aligned_finite_float32(
        self, ranker: CandidateRanker, users: list[UserQuery], artifacts: ModelArtifacts
    ) -> None:
        candidates = _candidates(users, len(artifacts.item_ids))
        scores = ranker.score(users, candidates)
        assert len(scores) == len(users)
        for rows, row_scores in zip(candidates, scores, strict=True):
            assert row_scores.shape == rows.shape and row_scores.dtype == np.float32
            assert np.all(np.isfinite(row_scores))

    def test_a_score_does_not_depend_on_the_other_candidates(
        self, ranker: CandidateRanker, users: list[UserQuery], artifacts: ModelArtifacts
    ) -> None:
        candidates = _candidates(users, len(artifacts.item_ids))
        full = ranker.score(users, candidates)
        # Each list reversed and cut to its first half (other padding, other neighbours, other order).
        halves = [rows[::-1][: (len(rows) + 1) // 2] for rows in candidates]
        partial = ranker.score(users, halves)
        for rows, row_scores, half, half_scores in zip(candidates, full, halves, partial, strict=True):
            by_row = dict(zip(rows.tolist(), row_scores.tolist(), strict=True))
            expected = np.array([by_row[row] for row in half.tolist()], dtype=np.float32)
            np.testing.assert_allclose(half_scores, expected, rtol=TOLERANCE, atol=TOLERANCE)

    def test_no_user_no_scores(self, ranker: CandidateRanker) -> None:
        assert ranker.score([], []) == []


@pytest.fixture
def items(artifacts: ModelArtifacts) -> ItemTable:
    return ItemTable(artifacts, Settings().max_live_items)


class TestSequenceRankerScores(CandidateRankerContract):
    @pytest.fixture
    def ranker(self, artifacts: ModelArtifacts, items: ItemTable) -> CandidateRanker:
        return SequenceRankerScores(artifacts.ranker, items, artifacts.ranker.config.max_len)


class TestInt8SequenceRankerScores(CandidateRankerContract):
    """The ranker as ``ranker_compression=int8`` serves it (``model/compress.py``)."""

    @pytest.fixture
    def ranker(self, artifacts: ModelArtifacts, items: ItemTable) -> CandidateRanker:
        return SequenceRankerScores(quantize_int8(artifacts.ranker), items, artifacts.ranker.config.max_len)


class TestBlendedRanker(CandidateRankerContract):
    @pytest.fixture
    def ranker(self, artifacts: ModelArtifacts, items: ItemTable, item_knn: ItemKNNModel) -> CandidateRanker:
        base = SequenceRankerScores(artifacts.ranker, items, artifacts.ranker.config.max_len)
        return BlendedRanker(base, item_knn, 4.0, items)


def test_the_blend_at_weight_zero_is_the_ranker_and_otherwise_adds_the_item_knn(
    artifacts: ModelArtifacts, items: ItemTable, item_knn: ItemKNNModel, users: list[UserQuery]
) -> None:
    base = SequenceRankerScores(artifacts.ranker, items, artifacts.ranker.config.max_len)
    candidates = _candidates(users, len(artifacts.item_ids))
    plain = base.score(users, candidates)
    at_zero = BlendedRanker(base, item_knn, 0.0, items).score(users, candidates)
    assert all(np.array_equal(a, b) for a, b in zip(plain, at_zero, strict=True))
    blended = BlendedRanker(base, item_knn, 2.5, items).score(users, candidates)
    recent = [recent_interactions(user.trained_history)[: item_knn.n_recent] for user in users]
    knn = item_knn.score_candidates(recent, candidates)
    for ranker_scores, knn_scores, scores in zip(plain, knn, blended, strict=True):
        np.testing.assert_array_equal(scores, blend_scores(ranker_scores, knn_scores, 2.5))
