import math

import numpy as np
import pytest

from streamrec.index.covisitation import CoVisitation


def test_items_touched_after_each_other_become_neighbours_with_decayed_weights() -> None:
    covis = CoVisitation(n_items=4, window=2, decay=0.5)
    covis.add([], 0)
    covis.add([0], 1)  # (0,1) += 1
    covis.add([0, 1], 2)  # (1,2) += 1, (0,2) += 0.5
    # counts: n0 = n1 = n2 = 1
    assert covis.similar(0) == {1: 1.0, 2: 0.5}
    assert covis.similar(2) == {1: 1.0, 0: 0.5}
    assert covis.similar(3) == {}


def test_similarity_is_cosine_normalised_so_popular_items_do_not_dominate() -> None:
    covis = CoVisitation(n_items=3, window=1)
    covis.fit_sequences([[0, 1], [0, 1], [2, 1], [2, 1], [2, 1], [2, 1]])
    # c(0,1) = 2, n0 = 2, n1 = 6: 2 / sqrt(12); c(2,1) = 4, n2 = 4: 4 / sqrt(24)
    assert covis.similar(1)[0] == pytest.approx(2 / math.sqrt(12))
    assert covis.similar(1)[2] == pytest.approx(4 / math.sqrt(24))


def test_candidates_follow_the_most_recent_items_and_skip_excluded() -> None:
    covis = CoVisitation(n_items=6, window=2)
    covis.fit_sequences([[0, 1], [0, 1], [2, 3], [4, 5]])
    rows, scores = covis.candidates([0, 2], n=5, excluded=set())
    assert rows.tolist() == [3, 1]  # the last item votes with weight 1, the one before with 0.6
    assert scores[0] > scores[1] > 0
    rows, _ = covis.candidates([0, 2], n=5, excluded={3})
    assert rows.tolist() == [1]
    assert covis.candidates([], n=5, excluded=set())[0].size == 0


def test_rows_stay_bounded_on_an_endless_stream() -> None:
    covis = CoVisitation(n_items=1000, window=1, max_neighbours=10)
    rng = np.random.default_rng(0)
    for other in rng.integers(1, 1000, size=5000):
        covis.add([0], int(other))
    assert len(covis.similar(0)) <= 20


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CoVisitation(n_items=3, decay=0.0)


def test_pair_strengths_match_the_neighbour_similarities() -> None:
    covisitation = CoVisitation(5, window=2)
    covisitation.fit_sequences([[0, 1, 2], [0, 1], [3, 4]])
    strengths = covisitation.strengths([0, 3, 9], [1, 2, 4])
    similar = covisitation.similar(0)
    assert strengths[0].tolist() == [similar.get(1, 0.0), similar.get(2, 0.0), 0.0]
    assert strengths[1, 2] == covisitation.similar(3)[4] > 0
    assert not strengths[2].any()  # a row outside the table ties to nothing
