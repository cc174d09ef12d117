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

import numpy as np

from streamrec.stream.filters import ScoredItem
from streamrec.stream.trending import TrendingBoard

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
    scopes: list[tuple[float, str, str | None, tuple[np.ndarray, np.ndarray]]] = []
    for position, category in enumerate(categories):
        counter = board.by_category.get(category)
        if counter is not None:
            weight = LATEST_CATEGORY_WEIGHT if position == 0 else EARLIER_CATEGORY_WEIGHT
            scopes.append((weight, "trending_in", category, counter.top_keys(n)))
    if segment is not None and (counter := board.by_segment.get(segment)) is not None:
        scopes.append((SEGMENT_WEIGHT, "trending_segment", str(segment), counter.top_keys(n)))
    scopes.append((OVERALL_WEIGHT, "trending", None, board.overall.top_keys(n)))
    keys = np.concatenate([top[0] for *_, top in scopes])
    if not len(keys):
        return []
    contributions = np.concatenate([weight * top[1] for weight, *_, top in scopes])
    scope_of = np.repeat(np.arange(len(scopes)), [len(top[0]) for *_, top in scopes])
    unique, first_seen, inverse = np.unique(keys, return_index=True, return_inverse=True)
    scores = np.bincount(inverse, weights=contributions)
    # The scope that contributed most explains the item (the earliest scope on a tie).
    by_strength = np.lexsort((np.arange(len(keys)), -contributions, inverse))
    grouped = inverse[by_strength]
    group_start = np.ones(len(grouped), dtype=bool)
    group_start[1:] = grouped[1:] != grouped[:-1]
    explaining_scope = scope_of[by_strength[group_start]]
    best = np.lexsort((first_seen, -scores))[:n]  # ties keep the order the scopes listed the items in
    out = []
    listed = zip(unique[best].tolist(), scores[best].tolist(), explaining_scope[best].tolist(), strict=True)
    for key, score, scope in listed:
        _, source, context, _ = scopes[scope]
        out.append(ScoredItem(board.item_id(key), score, source, context=context))
    return out


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
