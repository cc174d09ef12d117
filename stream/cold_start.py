"""Cold start: trending items that fit the user's context, blended smoothly into personalised results.

A user with no known item gets trending items; a user with a long history gets the ranker's list. In between,
the two lists are fused by weighted reciprocal rank (Cormack et al., 2009): an item at rank ``r`` of a list adds
``weight / (RRF_OFFSET + r)``, with the personalised list weighted ``n / (n + cold_start_prior_events)`` for a user
with ``n`` events on known items and trending weighted the rest. So one event already moves the list toward the
user, and trending fades out as evidence accumulates — a blend, not a cliff. Rank fusion needs no common scale
between ranker logits and popularity counts.

The trending list itself mixes three scopes (``stream/trending.py``): the categories of the user's latest items
(most recent first), the user's segment, and the whole shop, each contributing its relative trending score times
a scope weight, so "rising in what you just looked at" leads and the whole shop breaks ties.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream.filters import ScoredItem
from stream.trending import TrendingBoard

RRF_OFFSET = 10.0
"""Damps the difference between the first ranks; 10 lets a list's top item beat the other list's 5th or so."""

LATEST_CATEGORY_WEIGHT = 1.0
EARLIER_CATEGORY_WEIGHT = 0.5
SEGMENT_WEIGHT = 0.7
OVERALL_WEIGHT = 0.3


def personal_weight(known_events: int, prior_events: float) -> float:
    """Weight of the personalised list for a user with ``known_events`` events on items the model knows."""
    if known_events <= 0:
        return 0.0
    if prior_events <= 0:
        return 1.0
    return known_events / (known_events + prior_events)


def trending_candidates(
    board: TrendingBoard, categories: Sequence[str], segment: int | None, n: int
) -> list[ScoredItem]:
    """Up to ``n`` trending items for a user whose latest categories are ``categories`` (most recent first)."""
    scopes: list[tuple[float, str, str | None, list[tuple[str, float]]]] = []
    for position, category in enumerate(categories):
        weight = LATEST_CATEGORY_WEIGHT if position == 0 else EARLIER_CATEGORY_WEIGHT
        scopes.append((weight, "trending_in", category, board.top_in_category(category, n)))
    if segment is not None:
        scopes.append((SEGMENT_WEIGHT, "trending_segment", str(segment), board.top_in_segment(segment, n)))
    scopes.append((OVERALL_WEIGHT, "trending", None, board.top(n)))
    merged: dict[str, ScoredItem] = {}
    strongest: dict[str, float] = {}
    for weight, source, context, top in scopes:
        for item_id, relative in top:
            contribution = weight * relative
            item = merged.get(item_id)
            if item is None:
                merged[item_id] = ScoredItem(item_id, contribution, source, context=context)
                strongest[item_id] = contribution
                continue
            item.score += contribution
            if contribution > strongest[item_id]:  # the scope that matters most explains the item
                strongest[item_id] = contribution
                item.source, item.context = source, context
    return sorted(merged.values(), key=lambda item: -item.score)[:n]


def blend(personal: Sequence[ScoredItem], trending: Sequence[ScoredItem], weight: float) -> list[ScoredItem]:
    """One list from both, by weighted reciprocal-rank fusion; ``weight`` is the personalised list's share.

    Each item keeps the provenance of the list that contributed more to it; its score becomes the fused score.
    The result never shares item objects with ``trending``.
    """
    if weight >= 1.0 or not trending:
        return list(personal)
    if weight <= 0.0 or not personal:
        # Fresh objects: later stages mark and explain items per user, and trending lists are shared.
        return [ScoredItem(item.item_id, item.score, item.source, item.row, item.context) for item in trending]
    fused: dict[str, ScoredItem] = {}
    contribution: dict[str, float] = {}
    for share, ranked in ((weight, personal), (1.0 - weight, trending)):
        for rank, item in enumerate(ranked):
            added = share / (RRF_OFFSET + rank + 1)
            held = fused.get(item.item_id)
            if held is None:
                fused[item.item_id] = ScoredItem(item.item_id, added, item.source, item.row, item.context)
                contribution[item.item_id] = added
                continue
            held.score += added
            if held.row < 0:
                held.row = item.row
            if added > contribution[item.item_id]:
                contribution[item.item_id] = added
                held.source, held.context = item.source, item.context
    return sorted(fused.values(), key=lambda item: -item.score)
