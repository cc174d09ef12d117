from __future__ import annotations

import pytest

from streamrec.stream.trending import TrendingBoard, TrendingCounter

HOUR = 3600.0


def test_most_weighted_items_first_with_relative_scores() -> None:
    counter = TrendingCounter(half_life_s=HOUR)
    for item, weight in [("a", 1.0), ("b", 8.0), ("a", 1.0), ("c", 4.0)]:
        counter.add(item, weight, ts=0.0)
    assert counter.top(2) == [("b", 1.0), ("c", 0.5)]
    assert [item for item, _ in counter.top(10)] == ["b", "c", "a"]


def test_old_popularity_decays_with_event_time() -> None:
    counter = TrendingCounter(half_life_s=HOUR)
    counter.add("old", 8.0, ts=0.0)
    counter.add("new", 3.0, ts=2 * HOUR)  # "old" is worth 8 / 4 = 2 by now
    top = counter.top(2)
    assert [item for item, _ in top] == ["new", "old"]
    assert top[1][1] == pytest.approx(2 / 3)


def test_counts_survive_rescaling_over_very_long_streams() -> None:
    counter = TrendingCounter(half_life_s=1.0, initial_capacity=1)
    counter.add("a", 1.0, ts=0.0)
    counter.add("b", 1.0, ts=0.0)
    counter.add("a", 1.0, ts=500.0)  # 500 half-lives later: forces a rescale
    counter.add("b", 2.0, ts=500.0)
    assert counter.top(2) == [("b", 1.0), ("a", 0.5)]
    assert len(counter) == 2


def test_empty_counter_has_no_trending_items() -> None:
    assert TrendingCounter(half_life_s=HOUR).top(5) == []


def test_board_keeps_category_and_segment_counts_apart_from_the_overall_ones() -> None:
    board = TrendingBoard(half_life_s=HOUR)
    board.add("a", 5.0, 0.0, category="shoes", segment=1)
    board.add("b", 3.0, 0.0, category="bags", segment=1)
    board.add("c", 1.0, 0.0, category="shoes", segment=2)
    board.add("d", 4.0, 0.0, category=None, segment=None)
    assert [item for item, _ in board.top(10)] == ["a", "d", "b", "c"]
    assert board.top_in_category("shoes", 10) == [("a", 1.0), ("c", 0.2)]
    assert board.top_in_category("bags", 10) == [("b", 1.0)]
    assert board.top_in_segment(1, 10) == [("a", 1.0), ("b", 0.6)]
    assert board.top_in_segment(2, 10) == [("c", 1.0)]
    assert board.top_in_category("shoes", 1) == [("a", 1.0)]


def test_board_scopes_decay_like_the_overall_counter() -> None:
    board = TrendingBoard(half_life_s=HOUR)
    board.add("old", 8.0, 0.0, category="shoes", segment=1)
    board.add("new", 3.0, 2 * HOUR, category="shoes", segment=1)
    for top in (board.top(2), board.top_in_category("shoes", 2), board.top_in_segment(1, 2)):
        assert [item for item, _ in top] == ["new", "old"]
        assert top[1][1] == pytest.approx(2 / 3)


def test_unknown_scope_has_no_trending_items() -> None:
    board = TrendingBoard(half_life_s=HOUR)
    board.add("a", 1.0, 0.0, category="shoes", segment=1)
    assert board.top_in_category("garden", 5) == []
    assert board.top_in_segment(99, 5) == []


def test_max_scopes_stops_creating_scopes_but_keeps_counting_existing_ones() -> None:
    board = TrendingBoard(half_life_s=HOUR, max_scopes=2)
    board.add("a", 1.0, 0.0, category="c1", segment=None)
    board.add("b", 1.0, 0.0, category=None, segment=1)
    board.add("x", 9.0, 0.0, category="c2", segment=2)  # both would be new scopes: neither is created
    board.add("a", 2.0, 0.0, category="c1", segment=1)
    assert set(board.by_category) == {"c1"}
    assert set(board.by_segment) == {1}
    assert board.top_in_category("c2", 5) == []
    assert board.top_in_segment(2, 5) == []
    assert board.top_in_segment(1, 5) == [("a", 1.0), ("b", 0.5)]
    assert board.top_in_category("c1", 5) == [("a", 1.0)]
    assert board.top(1) == [("x", 1.0)]  # the overall scope still counts everything
