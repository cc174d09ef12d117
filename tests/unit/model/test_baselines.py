"""Popularity and item-kNN baselines on logs small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import streamrec.model.baselines as baselines
from streamrec.model.baselines import Histories, ItemKNNModel, PopularityModel
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.splits import LeaveOneOutSplit, leave_one_out

ITEMS = ["a", "b", "c", "d", "e", "x", "y"]
ROW = {item: row for row, item in enumerate(ITEMS)}


def log_of(sequences: dict[str, list[str | tuple[str, EventType]]]) -> EventLog:
    """One user per entry, events a minute apart; an entry is an item (a view) or ``(item, event type)``."""
    events = []
    for user, sequence in sequences.items():
        for step, entry in enumerate(sequence):
            item, kind = (entry, EventType.VIEW) if isinstance(entry, str) else entry
            events.append(Event(user, item, kind, 1.7e9 + 60.0 * step))
    return EventLog.from_events(events)


@pytest.fixture
def split() -> LeaveOneOutSplit:
    # The last item of each user is the test target: fitting never sees x or y. Training histories:
    # u1 {a, b, c}, u2 {a, b, d}, u3 {a, b, e}, u4 {c, d, e}.
    return leave_one_out(
        log_of(
            {
                "u1": ["a", "b", "c", "x"],
                "u2": ["a", "b", "d", "x"],
                "u3": ["a", "b", "e", "y"],
                "u4": ["c", "d", "e", "y"],
            }
        ),
        ROW,
    )


def user_index(split: LeaveOneOutSplit, user: str) -> int:
    return list(split.users).index(user)


def test_item_knn_similarity_is_the_cosine_of_co_occurrence(split: LeaveOneOutSplit) -> None:
    knn = ItemKNNModel.fit(split, len(ITEMS))
    neighbors, similarities = knn.neighbors_of(ROW["a"])
    # a and b are held by the same three users: cosine 1. a shares one user with each of c, d, e (degrees 3, 2).
    assert ITEMS[neighbors[0]] == "b"
    assert similarities[0] == pytest.approx(1.0)
    assert sorted(ITEMS[n] for n in neighbors[1:]) == ["c", "d", "e"]
    np.testing.assert_allclose(similarities[1:], 1 / math.sqrt(6), rtol=1e-6)
    # The test targets were never in a training history, and no item is its own neighbour.
    assert knn.neighbors_of(ROW["x"])[0].size == 0
    assert ROW["a"] not in knn.neighbors_of(ROW["a"])[0]
    c_neighbors, c_similarities = knn.neighbors_of(ROW["c"])
    assert dict(zip((ITEMS[n] for n in c_neighbors), c_similarities, strict=True)) == pytest.approx(
        {"d": 0.5, "e": 0.5, "a": 1 / math.sqrt(6), "b": 1 / math.sqrt(6)}
    )


def test_item_knn_scores_from_the_last_items_with_decay(split: LeaveOneOutSplit) -> None:
    knn = ItemKNNModel.fit(split, len(ITEMS))
    u1 = user_index(split, "u1")  # history a, b, c: c is step 0, b step 1, a step 2
    scores = knn.score_users(Histories.of_users(split, np.array([u1]), "test"))[0]
    s6 = 1 / math.sqrt(6)
    expected_d = 0.5 + 0.6 * s6 + 0.36 * s6  # sim(c, d) + 0.6 sim(b, d) + 0.36 sim(a, d)
    assert scores[ROW["d"]] == pytest.approx(expected_d)
    assert scores[ROW["e"]] == pytest.approx(expected_d)  # e relates to a, b, c exactly as d does
    assert scores[ROW["x"]] == 0.0

    only_last = ItemKNNModel.fit(split, len(ITEMS), n_recent=1)
    assert only_last.score_users(Histories.of_users(split, np.array([u1]), "test"))[0][ROW["d"]] == pytest.approx(0.5)
    # Another memory over the same fit scores exactly as a fit with that memory, sharing the similarities.
    histories = Histories.of_users(split, np.arange(split.n_users), "test")
    for n_recent, decay in ((1, 0.6), (2, 1.0), (50, 0.8)):
        twin = knn.with_memory(n_recent, decay)
        assert twin.similarities is knn.similarities and (knn.n_recent, knn.decay) == (3, 0.6)
        own = ItemKNNModel.fit(split, len(ITEMS), n_recent=n_recent, decay=decay)
        np.testing.assert_array_equal(twin.score_users(histories), own.score_users(histories))
    with pytest.raises(ValueError, match="n_recent"):
        knn.with_memory(0, 0.5)


def test_item_knn_counts_a_funnel_as_one_interaction() -> None:
    # u1's last interaction is one item viewed then bought: the item before it is still step 1.
    split = leave_one_out(
        log_of(
            {
                "u1": ["a", "b", ("c", EventType.VIEW), ("c", EventType.BUY), "x"],
                "u2": ["a", "c", "d", "y"],
                "u3": ["b", "c", "d", "y"],
            }
        ),
        ROW,
    )
    histories = Histories.of_users(split, np.array([user_index(split, "u1")]), "test")
    rows, items, steps = histories.recent_interactions(3)
    assert [ITEMS[i] for i in items] == ["a", "b", "c"]
    assert steps.tolist() == [2, 1, 0]
    assert rows.tolist() == [0, 0, 0]


def test_item_knn_matches_a_dense_reference_and_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    n_items = 40
    sequences = {f"u{u}": [f"i{i}" for i in rng.integers(0, n_items, rng.integers(4, 15))] for u in range(60)}
    row_of = {f"i{i}": i for i in range(n_items)}
    split = leave_one_out(log_of(sequences), row_of)
    histories = Histories.of_users(split, np.arange(split.n_users), "test")

    # Dense reference: binary user x item matrix of the training histories, cosine of its columns.
    matrix = np.zeros((split.n_users, n_items))
    for user, (start, end) in enumerate(zip(histories.starts, histories.ends, strict=True)):
        matrix[user, split.items[start:end]] = 1.0
    together = matrix.T @ matrix
    degree = np.diag(together).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.nan_to_num(together / np.sqrt(np.outer(degree, degree)))
    np.fill_diagonal(cosine, 0.0)
    rows, items, steps = histories.recent_interactions(3)
    expected = np.zeros((split.n_users, n_items))
    for row, item, step in zip(rows, items, steps, strict=True):
        expected[row] += 0.6**step * cosine[item]

    knn = ItemKNNModel.fit(split, n_items)
    np.testing.assert_allclose(knn.score_users(histories), expected, rtol=1e-5, atol=1e-7)

    pruned = ItemKNNModel.fit(split, n_items, max_neighbors=3)
    monkeypatch.setattr(baselines, "PAIRS_PER_CHUNK", 7)  # a handful of users per chunk, many item ranges
    chunked = ItemKNNModel.fit(split, n_items)
    np.testing.assert_array_equal(chunked.indptr, knn.indptr)
    np.testing.assert_array_equal(chunked.neighbors, knn.neighbors)
    np.testing.assert_array_equal(chunked.similarities, knn.similarities)
    chunked_pruned = ItemKNNModel.fit(split, n_items, max_neighbors=3)
    np.testing.assert_array_equal(chunked_pruned.indptr, pruned.indptr)
    np.testing.assert_array_equal(chunked_pruned.neighbors, pruned.neighbors)


def test_item_knn_neighbour_pruning_keeps_the_most_similar(split: LeaveOneOutSplit) -> None:
    pruned = ItemKNNModel.fit(split, len(ITEMS), max_neighbors=1)
    neighbors, similarities = pruned.neighbors_of(ROW["a"])
    assert [ITEMS[n] for n in neighbors] == ["b"]
    assert similarities.tolist() == pytest.approx([1.0])
    assert np.all(np.diff(pruned.indptr) <= 1)


def test_item_knn_rejects_bad_parameters(split: LeaveOneOutSplit) -> None:
    with pytest.raises(ValueError):
        ItemKNNModel.fit(split, len(ITEMS), n_recent=0)
    with pytest.raises(ValueError):
        ItemKNNModel.fit(split, len(ITEMS), decay=0.0)
    for weight in (-1.0, math.inf):
        with pytest.raises(ValueError, match="transition_weight"):
            ItemKNNModel.fit(split, len(ITEMS), transition_weight=weight)


def test_transitions_are_directed_and_normalised(split: LeaveOneOutSplit) -> None:
    # Training histories u1 a b c, u2 a b d, u3 a b e, u4 c d e. Weighted counts: a→b 3 (next), a→c, a→d, a→e 0.5
    # each (two later); b→c, b→d, b→e 1; c→d 1, c→e 0.5; d→e 1. Outgoing a 4.5, b 3, c 1.5, d 1; incoming b 3,
    # c 1.5, d 2.5, e 3.
    keys, strengths = baselines.item_transitions(split, split.history_end("test"), len(ITEMS))
    pairs = {(ITEMS[k // len(ITEMS)], ITEMS[k % len(ITEMS)]): v for k, v in zip(keys, strengths, strict=True)}
    assert set(pairs) == {
        ("a", "b"), ("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"), ("b", "d"), ("b", "e"), ("c", "d"), ("c", "e"),
        ("d", "e"),
    }  # fmt: skip
    assert pairs["a", "b"] == pytest.approx(3 / math.sqrt(4.5 * 3))
    assert pairs["a", "d"] == pytest.approx(0.5 / math.sqrt(4.5 * 2.5))
    assert pairs["c", "d"] == pytest.approx(1 / math.sqrt(1.5 * 2.5))
    assert np.all(np.diff(keys) > 0)


def test_transitions_count_interactions_and_never_an_item_after_itself() -> None:
    # u1 views then buys b: one interaction, so c is b's next item and a's second; a returns after c, not after a.
    split = leave_one_out(log_of({"u1": ["a", "b", ("b", EventType.BUY), "c", "a", "x"]}), ROW)
    keys, strengths = baselines.item_transitions(split, split.history_end("test"), len(ITEMS))
    pairs = {(ITEMS[k // len(ITEMS)], ITEMS[k % len(ITEMS)]) for k in keys}
    assert pairs == {("a", "b"), ("a", "c"), ("b", "c"), ("b", "a"), ("c", "a")}
    assert len(strengths) == len(keys)


def test_the_transition_weight_adds_the_transitions_to_the_cosine(split: LeaveOneOutSplit) -> None:
    cosine = ItemKNNModel.fit(split, len(ITEMS))
    transitions = ItemKNNModel.of_transitions(split, len(ITEMS))
    both = ItemKNNModel.fit(split, len(ITEMS), transition_weight=2.0)
    histories = Histories.of_users(split, np.arange(split.n_users), "test")
    np.testing.assert_allclose(
        both.score_users(histories),
        cosine.score_users(histories) + 2.0 * transitions.score_users(histories),
        rtol=1e-6,
    )
    # The sum is directed where the cosine is not: b follows a three times, a never follows b.
    forward, backward = both.similarities_of_pairs(np.array([ROW["a"], ROW["b"]]), np.array([ROW["b"], ROW["a"]]))
    assert backward == pytest.approx(1.0) and forward == pytest.approx(1.0 + 2.0 * 3 / math.sqrt(13.5))
    # Pruning keeps the most similar by the sum: d's only neighbour kept is e, its one next item.
    pruned = ItemKNNModel.fit(split, len(ITEMS), max_neighbors=1, transition_weight=2.0)
    assert [ITEMS[n] for n in pruned.neighbors_of(ROW["d"])[0]] == ["e"]


def test_popularity_counts_training_interactions_only() -> None:
    split = leave_one_out(
        log_of(
            {
                # A view → buy funnel on b is one interaction; the targets x, y are never counted.
                "u1": ["a", ("b", EventType.VIEW), ("b", EventType.BUY), "c", "x"],
                "u2": ["b", "c", "a", "x"],
                "u3": ["b", "d", "e", "y"],
            }
        ),
        ROW,
    )
    popularity = PopularityModel.fit(split, len(ITEMS))
    assert dict(zip(ITEMS, popularity.counts.tolist(), strict=True)) == {
        "a": 2, "b": 3, "c": 2, "d": 1, "e": 1, "x": 0, "y": 0,
    }  # fmt: skip
    scores = popularity.score_users(Histories.of_users(split, np.arange(split.n_users), "test"))
    assert scores.shape == (3, len(ITEMS))
    scores[0, 0] = -1.0  # a fresh array per call: the evaluator may mask it in place
    assert popularity.counts[0] == 2

    # At the validation stage the history ends one interaction earlier: c (u1), a (u2) and e (u3) drop out.
    valid = PopularityModel.fit(split, len(ITEMS), stage="valid")
    assert dict(zip(ITEMS, valid.counts.tolist(), strict=True))["c"] == 1
    assert dict(zip(ITEMS, valid.counts.tolist(), strict=True))["e"] == 0


def test_pair_similarities_come_from_the_sparse_table() -> None:
    indptr = np.array([0, 2, 3, 3], dtype=np.int64)
    model = ItemKNNModel(indptr, np.array([1, 2, 0], dtype=np.int32), np.array([0.5, 0.25, 0.75], dtype=np.float32))
    assert model.similarities_between([0, 1, 2, 7], [2, 0, 1]).tolist() == [
        [0.25, 0.0, 0.5],
        [0.0, 0.75, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
    ]


def test_pair_similarities_do_not_depend_on_the_order_neighbours_are_stored_in() -> None:
    indptr = np.array([0, 3, 4, 4, 4, 4, 4], dtype=np.int64)
    # Row 0 lists its neighbours out of order (as a model built by other code might).
    model = ItemKNNModel(
        indptr, np.array([5, 1, 3, 0], dtype=np.int32), np.array([0.5, 0.1, 0.3, 0.9], dtype=np.float32)
    )
    np.testing.assert_allclose(
        model.similarities_between([0, 1], [3, 5, 1, 0, 4]), [[0.3, 0.5, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.9, 0.0]]
    )
    # Rows outside the model (items added live) have no similarity, whatever their number.
    assert model.similarities_between([0, 1], [6, -5]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    neighbours, similarities = model.neighbors_of(0)
    assert neighbours.tolist() == [5, 3, 1] and similarities.tolist() == pytest.approx([0.5, 0.3, 0.1])


def test_served_exclusions_are_the_bought_items_and_the_last_one() -> None:
    log = EventLog.from_events(
        [
            Event("u", "a", EventType.BUY, 1.0),
            Event("u", "b", EventType.VIEW, 2.0),
            Event("u", "c", EventType.VIEW, 3.0),
            Event("u", "d", EventType.VIEW, 4.0),
            Event("u", "e", EventType.VIEW, 5.0),
        ]
    )
    split = leave_one_out(log, {item: row for row, item in enumerate("abcde")})
    (valid,) = Histories.of_users(split, np.arange(1), "valid").served_exclusions()
    assert valid.tolist() == [0, 2]  # "a" was bought, "c" was just touched; "b" may come back
