"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.metrics import hit_rate, mrr, ndcg, rank_of_target


def test_hit_rate_counts_ranks_below_k() -> None:
    ranks = np.array([0, 3, 9, 10, 50])
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert hit_rate(ranks, 100) == 1.0


def test_ndcg_uses_one_over_log2_of_rank_plus_two() -> None:
    ranks = np.array([0, 1, 3, 10])
    expected = (1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(5) + 0.0) / 4
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert ndcg([0], 10) == 1.0
    assert ndcg([2], 2) == 0.0  # rank 2 is the third item: outside a cut-off of 2


def test_mrr_is_the_mean_reciprocal_of_one_based_ranks() -> None:
    assert mrr([0, 1, 3]) == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)


def test_metrics_reject_empty_or_negative_ranks() -> None:
    with pytest.raises(ValueError):
        hit_rate(np.array([], dtype=np.int64), 10)
    with pytest.raises(ValueError):
        ndcg([-1], 10)


def test_rank_of_target_counts_strictly_higher_scores() -> None:
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.5],  # target 2 (0.5): only 0.9 is strictly higher; the tie with item 3 is free
            [0.4, 0.3, 0.2, 0.1],  # target 0: the best
            [0.4, 0.3, 0.2, 0.1],  # target 3: the worst
        ]
    )
    assert rank_of_target(scores, np.array([2, 0, 3])).tolist() == [1, 0, 3]


def test_rank_of_target_excludes_history_but_never_the_target() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    exclude = [np.array([0, 1]), np.array([0, 2])]
    # Row 0: items 0 and 1 are history, so target 2 becomes the best. Row 1: the target (2) is in the history
    # too (a returning user); it keeps its score, only item 0 is removed, item 1 still beats it.
    ranks = rank_of_target(scores, np.array([2, 2]), exclude)
    assert ranks.tolist() == [0, 1]
    assert scores[0, 0] == 0.9  # the input is not modified


def test_rank_of_target_handles_empty_exclusions_and_nan() -> None:
    scores = np.array([[0.2, np.nan, 0.1], [0.3, 0.2, 0.1]])
    ranks = rank_of_target(scores, np.array([1, 2]), [np.array([], dtype=np.int64), np.array([], dtype=np.int64)])
    assert ranks.tolist() == [2, 2]  # a NaN target ranks last


def test_rank_of_target_checks_shapes() -> None:
    with pytest.raises(ValueError):
        rank_of_target(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError):
        rank_of_target(np.zeros((2, 3)), np.array([0, 1]), [np.array([0])])
