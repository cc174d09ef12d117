from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from streamrec.stream.explore import Explorer, ExposureStats
from streamrec.stream.filters import ScoredItem


def items(*ids: str, source: str = "ann") -> list[ScoredItem]:
    return [ScoredItem(item_id, 1.0 / (n + 1), source) for n, item_id in enumerate(ids)]


def expose(explorer: Explorer, item_id: str, impressions: int, engagements: int) -> None:
    for _ in range(impressions):
        explorer.exposure.shown(item_id)
    for _ in range(engagements):
        explorer.exposure.engaged(item_id)


# --- how many slots --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "k"), [(0.15, 20), (0.15, 10), (0.07, 20), (0.3, 7)])
def test_mean_number_of_slots_is_share_times_k(share: float, k: int) -> None:
    explorer = Explorer(share=share, max_impressions=10, seed=7)
    draws = np.array([explorer.n_slots(k) for _ in range(4_000)])
    expected = share * k
    low = math.floor(expected)
    assert set(draws.tolist()) <= {low, low + 1}  # rounded to a neighbouring integer, never further
    fraction = expected - low
    std_error = math.sqrt(fraction * (1 - fraction) / len(draws))  # each draw is low + Bernoulli(fraction)
    assert abs(draws.mean() - expected) <= 5 * std_error + 1e-9


def test_fractional_expectation_uses_both_neighbouring_counts() -> None:
    explorer = Explorer(share=0.15, max_impressions=10, seed=1)
    draws = {explorer.n_slots(10) for _ in range(200)}  # 1.5 expected slots
    assert draws == {1, 2}


def test_zero_share_never_explores_and_full_share_explores_every_slot() -> None:
    none = Explorer(share=0.0, max_impressions=10, seed=0)
    everything = Explorer(share=1.0, max_impressions=10, seed=0)
    assert {none.n_slots(20) for _ in range(100)} == {0}
    assert {everything.n_slots(20) for _ in range(100)} == {20}


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_share_outside_zero_to_one_is_rejected(share: float) -> None:
    with pytest.raises(ValueError):
        Explorer(share=share, max_impressions=10)


# --- exposure statistics ---------------------------------------------------------------------------------------


def test_exposure_posterior_counts_impressions_and_engagements() -> None:
    stats = ExposureStats()
    assert stats.posterior("new") == (1.0, 1.0)
    assert stats.counts("new") == (0.0, 0.0)
    for _ in range(5):
        stats.shown("a")
    stats.engaged("a")
    stats.engaged("a")
    assert stats.counts("a") == (5.0, 2.0)
    assert stats.posterior("a") == (3.0, 4.0)
    assert len(stats) == 1


def test_more_engagements_than_impressions_never_give_a_negative_beta() -> None:
    stats = ExposureStats()
    stats.shown("a")
    for _ in range(3):
        stats.engaged("a")  # e.g. engaged from another page after a single recommendation
    assert stats.posterior("a") == (2.0, 1.0)


# --- which items -----------------------------------------------------------------------------------------------


def test_pick_only_takes_under_exposed_items_and_marks_them() -> None:
    explorer = Explorer(share=0.2, max_impressions=3, seed=0)
    expose(explorer, "tired", impressions=3, engagements=0)
    expose(explorer, "worn", impressions=5, engagements=5)
    expose(explorer, "young", impressions=2, engagements=0)
    pool = items("tired", "worn", "young", "new")
    picked = explorer.pick(pool, n=4)
    assert {item.item_id for item in picked} == {"young", "new"}
    assert all(item.explore for item in picked)
    assert not any(item.explore for item in pool if item.item_id in ("tired", "worn"))


def test_pick_respects_n_and_returns_nothing_when_nothing_is_eligible() -> None:
    explorer = Explorer(share=0.2, max_impressions=3, seed=0)
    assert len(explorer.pick(items("a", "b", "c", "d"), n=2)) == 2
    assert explorer.pick(items("a", "b"), n=0) == []
    expose(explorer, "a", impressions=3, engagements=0)
    assert explorer.pick(items("a"), n=1) == []


def test_pick_prefers_items_users_engage_with() -> None:
    wins = 0
    trials = 200
    for seed in range(trials):
        explorer = Explorer(share=0.2, max_impressions=50, seed=seed)
        expose(explorer, "liked", impressions=20, engagements=18)
        expose(explorer, "ignored", impressions=20, engagements=0)
        (picked,) = explorer.pick(items("ignored", "liked"), n=1)
        wins += picked.item_id == "liked"
    assert wins >= 0.95 * trials


def test_new_item_is_tried_before_an_often_ignored_one() -> None:
    wins = 0
    trials = 200
    for seed in range(trials):
        explorer = Explorer(share=0.2, max_impressions=50, seed=seed)
        expose(explorer, "ignored", impressions=20, engagements=0)
        (picked,) = explorer.pick(items("ignored", "new"), n=1)
        wins += picked.item_id == "new"
    assert wins >= 0.9 * trials


def test_same_seed_picks_the_same_items() -> None:
    first = Explorer(share=0.2, max_impressions=5, seed=42).pick(items(*"abcdefgh"), n=3)
    second = Explorer(share=0.2, max_impressions=5, seed=42).pick(items(*"abcdefgh"), n=3)
    assert [item.item_id for item in first] == [item.item_id for item in second]


# --- where they go ---------------------------------------------------------------------------------------------


def test_explored_items_are_spread_through_the_list() -> None:
    exploited = items("a", "b", "c", "d")
    explored = items("x", "y", source="explore")
    placed = Explorer.place(exploited, explored)
    assert [item.item_id for item in placed] == ["a", "b", "x", "c", "y", "d"]


@pytest.mark.parametrize("n_exploit", range(1, 11))
@pytest.mark.parametrize("n_explore", range(6))
def test_place_keeps_everything_keeps_exploit_order_and_never_leads_with_exploration(
    n_exploit: int, n_explore: int
) -> None:
    exploited = items(*(f"e{i}" for i in range(n_exploit)))
    explored = items(*(f"x{i}" for i in range(n_explore)), source="explore")
    placed = [item.item_id for item in Explorer.place(exploited, explored)]
    assert sorted(placed) == sorted(item.item_id for item in exploited + explored)
    assert len(placed) == n_exploit + n_explore
    assert [item_id for item_id in placed if item_id.startswith("e")] == [item.item_id for item in exploited]
    assert [item_id for item_id in placed if item_id.startswith("x")] == [item.item_id for item in explored]
    assert placed[0] == "e0"
    if n_exploit >= n_explore + 2:  # room enough: no two explored items side by side
        assert not any(a.startswith("x") and b.startswith("x") for a, b in itertools.pairwise(placed))


def test_place_with_nothing_exploited_keeps_the_explored_items() -> None:
    explored = items("x", "y", source="explore")
    assert [item.item_id for item in Explorer.place([], explored)] == ["x", "y"]
    assert Explorer.place([], []) == []
