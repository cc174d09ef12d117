"""The contract every candidate source keeps (one mixin, run against each source).

A source returns, for each user of a batch, at most ``n`` rows, best first by its own score, no excluded row and no
row twice; nothing better than what it returned is left out; the same input gives the same output; an empty batch
gives an empty answer.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.index.covisitation import CoVisitation
from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import ItemKNNModel
from streamrec.stream.item_table import ItemTable
from streamrec.stream.settings import Settings
from streamrec.stream.sources import (
    AnnSource,
    CandidateSource,
    CoVisitationSource,
    ItemKnnSource,
    UserQuery,
    merge,
    recent_interactions,
)

N = 15
TOLERANCE = 1e-5


class CandidateSourceContract:
    """Subclasses say how to build the source and how it scores every row for a user (its reference order)."""

    @pytest.fixture
    def source(self) -> CandidateSource:
        raise NotImplementedError

    def reference_scores(self, source: CandidateSource, user: UserQuery) -> np.ndarray:
        raise NotImplementedError

    def test_at_most_n_rows_each_once(self, source: CandidateSource, users: list[UserQuery]) -> None:
        answers = source.candidates(users)
        assert len(answers) == len(users)
        for rows in answers:
            assert rows.dtype == np.int64 and rows.ndim == 1
            assert len(rows) <= N and len(set(rows.tolist())) == len(rows)

    def test_no_excluded_row(self, source: CandidateSource, users: list[UserQuery]) -> None:
        for user, rows in zip(users, source.candidates(users), strict=True):
            assert not set(rows.tolist()) & user.excluded

    def test_best_first_and_nothing_better_left_out(self, source: CandidateSource, users: list[UserQuery]) -> None:
        for user, rows in zip(users, source.candidates(users), strict=True):
            if len(rows) == 0:
                continue
            scores = self.reference_scores(source, user)
            returned = scores[rows]
            assert np.all(np.diff(returned) <= TOLERANCE), "not best first"
            left_out = np.ones(len(scores), dtype=bool)
            left_out[rows] = False
            left_out[list(user.excluded)] = False
            if len(rows) == N:
                assert scores[left_out].max(initial=-np.inf) <= returned.min() + TOLERANCE

    def test_the_same_input_gives_the_same_answer(self, source: CandidateSource, users: list[UserQuery]) -> None:
        first, second = source.candidates(users), source.candidates(list(users))
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

    def test_an_empty_batch_gives_an_empty_answer(self, source: CandidateSource) -> None:
        assert source.candidates([]) == []


class TestAnnSource(CandidateSourceContract):
    @pytest.fixture
    def source(self, artifacts: ModelArtifacts) -> CandidateSource:
        return AnnSource(ItemTable(artifacts, Settings().max_live_items), N)

    def reference_scores(self, source: CandidateSource, user: UserQuery) -> np.ndarray:
        assert isinstance(source, AnnSource)
        return source.items.embeddings @ user.vector  # the inner product the index searches by


class TestCoVisitationSource(CandidateSourceContract):
    @pytest.fixture
    def source(self, artifacts: ModelArtifacts, histories: list[list[int]]) -> CandidateSource:
        return CoVisitationSource(CoVisitation(len(artifacts.item_ids), window=3).fit_sequences(histories), N)

    def reference_scores(self, source: CandidateSource, user: UserQuery) -> np.ndarray:
        assert isinstance(source, CoVisitationSource)
        covisitation = source.covisitation
        scores = np.zeros(covisitation.n_items, dtype=np.float64)
        for k, row in enumerate(reversed(user.history[-covisitation.window :])):
            others = np.arange(covisitation.n_items)
            scores += covisitation.decay**k * covisitation.strengths([row], others.tolist())[0]
        return scores


class TestItemKnnSource(CandidateSourceContract):
    @pytest.fixture
    def source(self, item_knn: ItemKNNModel) -> CandidateSource:
        return ItemKnnSource(item_knn, N)

    def reference_scores(self, source: CandidateSource, user: UserQuery) -> np.ndarray:
        assert isinstance(source, ItemKnnSource)
        knn = source.item_knn
        recent = recent_interactions(user.trained_history)[: knn.n_recent]
        return knn.score_candidates([recent], [np.arange(knn.n_items)])[0]


def test_merge_keeps_the_first_sources_order_and_names_who_proposed_each_row() -> None:
    proposed = {
        "ann": [np.array([5, 1, 2]), np.array([], dtype=np.int64)],
        "covisitation": [np.array([2, 9]), np.array([4])],
        "item_knn": [np.array([9, 3]), np.array([4, 8])],
    }
    candidates, origin = merge(proposed)
    assert [c.tolist() for c in candidates] == [[5, 1, 2, 9, 3], [4, 8]]
    # A row the ANN found too is explained by the later collaborative source that also proposed it.
    assert [o.tolist() for o in origin] == [[0, 0, 1, 2, 2], [2, 2]]
    assert merge({}) == ([], [])
