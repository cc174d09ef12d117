import pytest

from stream.trending import TrendingCounter

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
