"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrec.model.metrics import (
    full_ranks,
    hit_rate,
    mask_history,
    mrr,
    ndcg,
    rank_of_target,
    sampled_ranks,
    summarize,
    target_ranks,
)


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


# --- the rank protocols and the summary ---


def test_sampled_ranks_and_metrics_by_hand() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.7, 0.3, 0.2],  # target 2 (0.5) vs negatives 0.9, 0.1, 0.3: one above
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # target 5 (0.6) vs negatives 0.1, 0.4 (and padding): first
        ]
    )
    negatives = np.array([[0, 1, 4], [0, 3, -1]])
    ranks = sampled_ranks(scores, np.array([2, 5]), negatives)
    assert ranks.tolist() == [1, 0]
    metrics = summarize(ranks, cutoffs=(1, 5))
    assert metrics["HR@1"] == 0.5
    assert metrics["HR@5"] == 1.0
    assert metrics["NDCG@1"] == 0.5
    assert metrics["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1) / 2, abs=1e-6)
    assert metrics["MRR"] == pytest.approx((1 / 2 + 1) / 2)


def test_a_nan_target_ranks_last_among_its_negatives() -> None:
    scores = np.array([[np.nan, 0.1, 0.2, 0.3]])
    assert sampled_ranks(scores, np.array([0]), np.array([[1, 2, 3]])).tolist() == [3]


def test_ties_count_against_nobody_when_strict_and_at_random_otherwise() -> None:
    # Every item scores 0, as item-kNN scores items unrelated to the user's recent ones.
    n_users = 4000
    scores = np.zeros((n_users, 100))
    negatives = np.tile(np.arange(1, 100), (n_users, 1))
    targets = np.zeros(n_users, dtype=np.int64)
    assert np.all(sampled_ranks(scores, targets, negatives) == 0)  # strict counting: every target "first"

    ranks = sampled_ranks(scores, targets, negatives, np.random.default_rng(0))
    assert ranks.min() >= 0 and ranks.max() <= 99
    assert summarize(ranks)["HR@10"] == pytest.approx(0.10, abs=0.015)  # 10 places out of 100, at random


def test_full_ranks_exclude_history_but_never_the_target_and_break_ties() -> None:
    scores = np.array(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # target 2; items 0 and 1 are history: nothing left above it
            [5.0, 4.0, 3.0, 2.0, 1.0],  # target 0 is in its own history: still rankable, first
            [1.0, 1.0, 1.0, 1.0, 0.0],  # target 0 ties with three items: rank 0..3
        ]
    )
    exclude = [np.array([0, 1]), np.array([0, 3]), np.array([], dtype=np.int64)]
    targets = np.array([2, 0, 0])
    strict, masked = full_ranks(scores, targets, exclude, None)
    assert strict.tolist() == [0, 0, 0]
    assert np.isneginf(masked[0, [0, 1]]).all() and np.isneginf(masked[1, [0, 3]]).all()
    assert scores[0, 0] == 5.0  # the input is not modified

    draws = np.stack([full_ranks(scores, targets, exclude, np.random.default_rng(s))[0] for s in range(200)])
    assert np.all(draws[:, :2] == 0)
    assert set(draws[:, 2].tolist()) == {0, 1, 2, 3}


def test_target_ranks_match_ranking_a_masked_copy() -> None:
    """The copy-free counting gives what masking the excluded items and counting does, ties, repeats in the
    exclusions, a target in its own history and NaN scores included."""
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, size=(300, 40)).astype(np.float32)  # many ties
    scores[5, :] = np.nan
    scores[6, 3] = np.nan
    targets = rng.integers(0, 40, size=300)
    exclude = [rng.integers(0, 40, size=rng.integers(0, 12)) for _ in range(300)]
    exclude[0] = np.array([targets[0], targets[0], (targets[0] + 1) % 40])
    masked = mask_history(scores, exclude)
    rows = np.arange(300)
    target_scores = scores[rows, targets]
    # The reference: count over the masked copy, the target never excluded, a NaN target last.
    higher = np.count_nonzero(masked > target_scores[:, None], axis=1)
    higher = np.where(np.isnan(target_scores), 39, higher)
    ties = np.count_nonzero(masked == target_scores[:, None], axis=1) - (masked[rows, targets] == target_scores)
    assert np.array_equal(target_ranks(scores, targets, exclude, None), higher)
    for seed in range(3):
        expected = higher + np.random.default_rng(seed).integers(0, ties + 1)
        assert np.array_equal(target_ranks(scores, targets, exclude, np.random.default_rng(seed)), expected)
