from __future__ import annotations

import numpy as np

from streamrec.model.metrics import intra_list_distances
from streamrec.stream.diversify import diversify


def basis(*axes: int, dim: int = 4) -> np.ndarray:
    """One unit row per entry: ``-1`` gives a zero row (an item without an embedding)."""
    vectors = np.zeros((len(axes), dim), dtype=np.float32)
    for row, axis in enumerate(axes):
        if axis >= 0:
            vectors[row, axis] = 1.0
    return vectors


def descending(n: int) -> np.ndarray:
    return np.linspace(1.0, 0.1, n)


def test_no_weight_and_no_cap_keeps_the_ranked_order_exactly() -> None:
    vectors = basis(0, 0, 0, 1, 1)  # lots of near-duplicates, which must not matter here
    chosen = diversify(descending(5), vectors, ["a"] * 5, k=3, weight=0.0)
    assert chosen == [0, 1, 2]


def test_nothing_to_choose_gives_an_empty_list() -> None:
    assert diversify(descending(3), basis(0, 1, 2), ["a", "b", "c"], k=0, weight=0.5) == []
    assert diversify(np.zeros(0), np.zeros((0, 4), dtype=np.float32), [], k=5, weight=0.5) == []


def test_category_cap_of_one_takes_one_item_per_category_and_fills_with_the_next_best() -> None:
    categories = ["shoes", "shoes", "bags", "shoes", "bags", "hats"]
    chosen = diversify(descending(6), basis(0, 1, 2, 3, 0, 1), categories, k=3, weight=0.0, max_per_category=1)
    assert chosen == [0, 2, 5]


def test_category_cap_shortens_the_list_when_the_pool_runs_out_of_categories() -> None:
    chosen = diversify(descending(4), basis(0, 1, 2, 3), ["a", "a", "b", "b"], k=4, weight=0.0, max_per_category=1)
    assert chosen == [0, 2]


def test_category_cap_of_two_allows_two_per_category_and_ignores_items_without_a_category() -> None:
    categories = ["a", "a", "a", None, None, "b"]
    chosen = diversify(descending(6), basis(0, 1, 2, 3, 0, 1), categories, k=5, weight=0.0, max_per_category=2)
    assert chosen == [0, 1, 3, 4, 5]


def test_near_duplicate_second_item_is_pushed_below_a_dissimilar_one() -> None:
    scores = np.array([1.0, 0.95, 0.9, 0.1])
    vectors = basis(0, 0, 1, 2)  # items 0 and 1 are the same thing
    chosen = diversify(scores, vectors, ["a", "a", "b", "c"], k=4, weight=0.3)
    assert chosen[:3] == [0, 2, 1]
    assert sorted(chosen) == [0, 1, 2, 3]


def test_diversified_list_has_higher_intra_list_diversity_than_the_ranked_one() -> None:
    scores = descending(6)
    vectors = basis(0, 0, 0, 1, 1, 2)  # the top three items are one cluster
    categories = ["a"] * 6
    ranked = diversify(scores, vectors, categories, k=3, weight=0.0)
    diverse = diversify(scores, vectors, categories, k=3, weight=0.5)
    assert ranked == [0, 1, 2]
    assert diverse[0] == 0  # the best item still leads
    # The evaluation's measure (mean pairwise 1 - cosine), on the two lists.
    diversity = intra_list_distances(np.array([diverse, ranked]), vectors)
    assert diversity[0] > diversity[1]


def test_items_without_vectors_are_similar_when_they_share_a_category() -> None:
    scores = np.array([1.0, 0.9, 0.8])
    no_vectors = basis(-1, -1, -1)
    assert diversify(scores, no_vectors, ["x", "x", "y"], k=3, weight=0.5) == [0, 2, 1]
    # Without categories nothing links them, so the ranked order stands.
    assert diversify(scores, no_vectors, [None, None, None], k=3, weight=0.5) == [0, 1, 2]


def test_an_item_without_a_vector_is_compared_by_category_with_one_that_has_a_vector() -> None:
    scores = np.array([1.0, 0.9, 0.8])
    vectors = basis(0, -1, 1)
    assert diversify(scores, vectors, ["x", "x", "y"], k=3, weight=0.5) == [0, 2, 1]
    assert diversify(scores, vectors, ["x", "z", "y"], k=3, weight=0.5) == [0, 1, 2]


def test_equal_scores_fall_back_to_the_pool_order_for_relevance() -> None:
    chosen = diversify(np.full(4, 0.5), basis(0, 1, 2, 3), ["a", "b", "c", "d"], k=4, weight=0.3)
    assert chosen == [0, 1, 2, 3]


def test_k_larger_than_the_pool_returns_the_whole_pool_once() -> None:
    assert diversify(descending(3), basis(0, 0, 1), ["a", "a", "b"], k=10, weight=0.0) == [0, 1, 2]
    chosen = diversify(descending(3), basis(0, 0, 1), ["a", "a", "b"], k=10, weight=0.5)
    assert sorted(chosen) == [0, 1, 2]
    assert chosen == [0, 2, 1]
