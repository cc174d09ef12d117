from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamrec.stream.cold_start import (
    blend,
    personal_weight,
    trending_candidates,
    trending_ranking,
    trending_rankings,
)
from streamrec.stream.filters import ScoredItem
from streamrec.stream.trending import TrendingBoard

PRIOR = 2.0
HOUR = 3600.0


def personal(n: int = 20) -> list[ScoredItem]:
    return [ScoredItem(f"p{i}", 10.0 - i * 0.1, "ann", row=i) for i in range(n)]


def trending(n: int = 10) -> list[ScoredItem]:
    return [ScoredItem(f"t{i}", 1.0 - i * 0.05, "trending") for i in range(n)]


def ids(items: list[ScoredItem]) -> list[str]:
    return [item.item_id for item in items]


# --- the weight of the personalised list -----------------------------------------------------------------------


def test_personal_weight_is_zero_without_events_and_grows_with_them() -> None:
    assert personal_weight(0, PRIOR) == 0.0
    assert personal_weight(-1, PRIOR) == 0.0
    assert personal_weight(1, PRIOR) == pytest.approx(1 / 3)
    assert personal_weight(2, PRIOR) == pytest.approx(0.5)
    weights = [personal_weight(n, PRIOR) for n in range(1, 100)]
    assert all(a < b for a, b in itertools.pairwise(weights))
    assert weights[-1] < 1.0


def test_personal_weight_without_a_prior_is_all_or_nothing() -> None:
    assert personal_weight(1, 0.0) == 1.0
    assert personal_weight(0, 0.0) == 0.0


# --- blending --------------------------------------------------------------------------------------------------


def test_full_personal_weight_returns_the_personal_list_unchanged() -> None:
    mine = personal()
    blended = blend(mine, trending(), 1.0)
    assert blended == mine
    assert all(a is b for a, b in zip(blended, mine, strict=True))


def test_zero_personal_weight_returns_the_trending_list() -> None:
    assert ids(blend(personal(), trending(), 0.0)) == ids(trending())


def test_an_empty_list_leaves_the_other_one() -> None:
    assert ids(blend(personal(), [], 0.5)) == ids(personal())
    assert ids(blend([], trending(), 0.5)) == ids(trending())


def test_top_trending_item_leads_for_a_one_event_user_but_not_for_an_experienced_one() -> None:
    newcomer = blend(personal(), trending(), personal_weight(1, PRIOR))
    regular = blend(personal(), trending(), personal_weight(50, PRIOR))
    assert newcomer[0].item_id == "t0"
    assert ids(newcomer).index("p0") < ids(newcomer).index("p1")  # personal order survives the fusion
    assert "t0" not in ids(regular[:10])
    assert ids(regular[:10]) == [f"p{i}" for i in range(10)]


def test_blend_moves_gradually_toward_the_personal_list() -> None:
    def personal_in_top_5(events: int) -> int:
        top = blend(personal(), trending(), personal_weight(events, PRIOR))[:5]
        return sum(item.source == "ann" for item in top)

    counts = [personal_in_top_5(events) for events in (1, 2, 4, 8, 30)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]
    assert 0 < counts[1] < 5  # a blend, not a cliff


def test_blend_has_no_duplicates_and_is_sorted_by_fused_score() -> None:
    mine = [*personal(5), ScoredItem("t0", 1.0, "ann", row=99)]
    blended = blend(mine, trending(5), 0.5)
    assert len(ids(blended)) == len(set(ids(blended))) == 10
    scores = [item.score for item in blended]
    assert scores == sorted(scores, reverse=True)


def test_shared_item_keeps_provenance_of_the_list_that_contributed_more() -> None:
    mine = [ScoredItem(f"p{i}", 1.0, "ann", row=i) for i in range(8)]
    mine.insert(0, ScoredItem("mostly-mine", 1.0, "covisitation", row=50))
    mine.append(ScoredItem("mostly-trending", 1.0, "ann", row=60))
    shop = [ScoredItem("mostly-trending", 1.0, "trending_in", context="shoes")]
    shop += [ScoredItem(f"t{i}", 1.0, "trending") for i in range(7)]
    shop.append(ScoredItem("mostly-mine", 1.0, "trending_segment", context="4"))
    blended = {item.item_id: item for item in blend(mine, shop, 0.5)}
    assert (blended["mostly-mine"].source, blended["mostly-mine"].context) == ("covisitation", None)
    assert (blended["mostly-trending"].source, blended["mostly-trending"].context) == ("trending_in", "shoes")
    assert blended["mostly-trending"].row == 60  # the model's row is kept whichever list explains the item
    assert blended["mostly-mine"].score == pytest.approx(0.5 / 11 + 0.5 / 19)


def test_blend_does_not_modify_its_inputs() -> None:
    mine, shop = personal(3), trending(3)
    blend(mine, shop, 0.5)
    assert [item.score for item in mine] == [item.score for item in personal(3)]
    assert [item.source for item in shop] == ["trending"] * 3


# --- trending candidates ---------------------------------------------------------------------------------------


def board() -> TrendingBoard:
    trend = TrendingBoard(half_life_s=HOUR)
    trend.add("pop", 10.0, 0.0, category="tv", segment=None)
    trend.add("shoe1", 2.0, 0.0, category="shoes", segment=None)
    trend.add("shoe2", 1.0, 0.0, category="shoes", segment=None)
    trend.add("toy", 1.0, 0.0, category="toys", segment=3)
    return trend


def test_item_trending_in_the_latest_category_outranks_a_more_popular_item_elsewhere() -> None:
    candidates = trending_candidates(board(), ["shoes"], segment=None, n=10)
    assert ids(candidates)[:2] == ["shoe1", "shoe2"]
    assert ids(candidates).index("pop") > ids(candidates).index("shoe1")
    assert (candidates[0].source, candidates[0].context) == ("trending_in", "shoes")
    by_id = {item.item_id: item for item in candidates}
    assert (by_id["pop"].source, by_id["pop"].context) == ("trending", None)
    assert by_id["shoe1"].score == pytest.approx(1.0 + 0.3 * 0.2)  # category scope plus the whole shop


def test_segment_scope_contributes_and_explains_its_items() -> None:
    candidates = trending_candidates(board(), ["shoes"], segment=3, n=10)
    assert ids(candidates) == ["shoe1", "toy", "shoe2", "pop"]
    toy = candidates[1]
    assert (toy.source, toy.context) == ("trending_segment", "3")


def test_latest_category_weighs_more_than_earlier_ones() -> None:
    candidates = trending_candidates(board(), ["toys", "shoes"], segment=3, n=10)
    assert ids(candidates) == ["toy", "shoe1", "pop", "shoe2"]
    assert (candidates[0].source, candidates[0].context) == ("trending_in", "toys")  # its strongest scope
    assert (candidates[1].source, candidates[1].context) == ("trending_in", "shoes")


def test_without_context_the_whole_shop_trends() -> None:
    candidates = trending_candidates(board(), [], segment=None, n=10)
    assert ids(candidates) == ["pop", "shoe1", "shoe2", "toy"]
    assert {item.source for item in candidates} == {"trending"}
    unknown = trending_candidates(board(), ["garden"], segment=77, n=10)
    assert ids(unknown) == ids(candidates)


def test_trending_candidates_respect_n_and_an_empty_board() -> None:
    assert ids(trending_candidates(board(), ["shoes"], segment=3, n=2)) == ["shoe1", "toy"]
    assert trending_candidates(TrendingBoard(half_life_s=HOUR), ["shoes"], segment=1, n=5) == []


def _reference_trending(board: TrendingBoard, categories: list[str], segment: int | None, n: int) -> list[tuple]:
    """The definition, item by item: each scope adds weight × relative score; the strongest scope explains."""
    scopes = [
        (1.0 if position == 0 else 0.5, "trending_in", category, board.top_in_category(category, n))
        for position, category in enumerate(categories)
    ]
    if segment is not None:
        scopes.append((0.7, "trending_segment", str(segment), board.top_in_segment(segment, n)))
    scopes.append((0.3, "trending", None, board.top(n)))
    merged: dict[str, list] = {}
    for weight, source, context, top in scopes:
        for item_id, relative in top:
            held = merged.setdefault(item_id, [0.0, -1.0, source, context])
            held[0] += weight * relative
            if weight * relative > held[1]:
                held[1:] = [weight * relative, source, context]
    ranked = sorted(merged.items(), key=lambda pair: -pair[1][0])[:n]
    return [(item_id, round(score, 9), source, context) for item_id, (score, _, source, context) in ranked]


@pytest.mark.parametrize("seed", range(5))
def test_trending_candidates_match_the_item_by_item_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    trend = TrendingBoard(half_life_s=HOUR)
    for _ in range(400):
        item = f"i{rng.integers(60)}"
        trend.add(
            item,
            float(rng.choice([1.0, 2.0, 5.0])),
            float(rng.uniform(0, HOUR)),
            f"c{rng.integers(4)}",
            int(rng.integers(3)),
        )
    for categories, segment in ((["c1", "c0", "c3"], 2), (["c2"], None), ([], 1), (["c9"], 7)):
        got = trending_candidates(trend, categories, segment, n=25)
        assert [(i.item_id, round(i.score, 9), i.source, i.context) for i in got] == _reference_trending(
            trend, categories, segment, 25
        )
    # A batch's contexts ranked together give each context's own ranking, whatever else is in the batch.
    contexts = [(["c1", "c0"], 2, 25), (["c2"], None, 7), ([], 1, 40), (["c1", "c0"], 2, 25), (["c9"], 7, 3)]
    together = trending_rankings(trend, contexts)
    for context, ranking in zip(contexts, together, strict=True):
        alone = trending_ranking(trend, *context)
        assert ranking.keys.tolist() == alone.keys.tolist() and ranking.scores.tolist() == alone.scores.tolist()
        assert [ranking.explained_by[s] for s in ranking.scopes] == [alone.explained_by[s] for s in alone.scopes]
        assert len(ranking.keys) <= context[2]


def test_blend_never_hands_out_the_shared_trending_items() -> None:
    shared = [ScoredItem("t1", 1.0, "trending"), ScoredItem("t2", 0.5, "trending")]
    for personal, weight in (
        ([], 0.5),
        ([ScoredItem("p", 1.0, "ann", row=3)], 0.0),
        ([ScoredItem("p", 1.0, "ann")], 0.5),
    ):
        out = blend(personal, shared, weight)
        assert {id(item) for item in out}.isdisjoint(id(item) for item in shared)
