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
from dataclasses import dataclass

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


@dataclass(slots=True)
class RankedKeys:
    """A ranked list as arrays, best first: what :func:`fuse` reads and returns.

    ``keys`` identify items across the lists being fused (the list builder uses the item's table row, or a
    negative code for an item the model does not know); ``labels`` say where each item came from (an index into
    the caller's table of (source, context) pairs); ``rows`` are the items' table rows as the list knew them
    (-1: unknown to that list).
    """

    keys: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, where: np.ndarray | slice) -> RankedKeys:
        return RankedKeys(self.keys[where], self.scores[where], self.labels[where], self.rows[where])

    @staticmethod
    def concatenate(lists: Sequence[RankedKeys]) -> RankedKeys:
        return RankedKeys(*(np.concatenate([getattr(part, name) for part in lists]) for name in RANKED_FIELDS))


RANKED_FIELDS = ("keys", "scores", "labels", "rows")


@dataclass(slots=True)
class TrendingRanking:
    """The trending items for one context, best first: trending board keys, fused scores, and for each item the
    index of the scope that explains it in ``explained_by`` ((source, context) per scope)."""

    keys: np.ndarray
    scores: np.ndarray
    scopes: np.ndarray
    explained_by: list[tuple[str, str | None]]


def trending_ranking(board: TrendingBoard, categories: Sequence[str], segment: int | None, n: int) -> TrendingRanking:
    """Up to ``n`` trending items for a user whose latest categories are ``categories`` (most recent first)."""
    return trending_rankings(board, [(categories, segment, n)])[0]


def trending_rankings(
    board: TrendingBoard, contexts: Sequence[tuple[Sequence[str], int | None, int]]
) -> list[TrendingRanking]:
    """:func:`trending_ranking` of each (categories, segment, n) context, computed together: a batch's users need
    many contexts, and one pass over all their scopes costs about what one context alone does."""
    scoped: list[list[tuple[float, str, str | None, tuple[np.ndarray, np.ndarray]]]] = []
    for categories, segment, n in contexts:
        scopes: list[tuple[float, str, str | None, tuple[np.ndarray, np.ndarray]]] = []
        for position, category in enumerate(categories):
            counter = board.by_category.get(category)
            if counter is not None:
                weight = LATEST_CATEGORY_WEIGHT if position == 0 else EARLIER_CATEGORY_WEIGHT
                scopes.append((weight, "trending_in", category, counter.top_keys(n)))
        if segment is not None and (counter := board.by_segment.get(segment)) is not None:
            scopes.append((SEGMENT_WEIGHT, "trending_segment", str(segment), counter.top_keys(n)))
        scopes.append((OVERALL_WEIGHT, "trending", None, board.overall.top_keys(n)))
        scoped.append(scopes)
    lists = [top for scopes in scoped for *_, top in scopes]
    sizes = np.array([len(top[0]) for top in lists], dtype=np.int64)
    keys = np.concatenate([top[0] for top in lists]).astype(np.int64, copy=False)
    contributions = np.concatenate([weight * top[1] for scopes in scoped for weight, *_, top in scopes])
    scope_of = np.repeat(np.concatenate([np.arange(len(scopes)) for scopes in scoped]), sizes)
    context_of = np.repeat(np.repeat(np.arange(len(scoped)), [len(scopes) for scopes in scoped]), sizes)
    width = np.int64(keys.max() + 1) if len(keys) else np.int64(1)
    pairs, first_seen, inverse = np.unique(context_of * width + keys, return_index=True, return_inverse=True)
    scores = np.bincount(inverse, weights=contributions)
    # The scope that contributed most explains the item (the earliest scope on a tie).
    explaining_scope = scope_of[_strongest(contributions, inverse)]
    context = pairs // width
    # Per context, best first; ties keep the order the scopes listed the items in.
    order = np.lexsort((first_seen, -scores, context))
    bounds = np.searchsorted(context[order], np.arange(len(scoped) + 1))
    rankings = []
    for number, ((_, _, n), scopes) in enumerate(zip(contexts, scoped, strict=True)):
        best = order[bounds[number] : min(bounds[number + 1], bounds[number] + n)]
        explained_by = [(source, context) for _, source, context, _ in scopes]
        rankings.append(TrendingRanking(pairs[best] % width, scores[best], explaining_scope[best], explained_by))
    return rankings


def trending_candidates(
    board: TrendingBoard, categories: Sequence[str], segment: int | None, n: int
) -> list[ScoredItem]:
    """:func:`trending_ranking` as items."""
    ranking = trending_ranking(board, categories, segment, n)
    out = []
    listed = zip(ranking.keys.tolist(), ranking.scores.tolist(), ranking.scopes.tolist(), strict=True)
    for key, score, scope in listed:
        source, context = ranking.explained_by[scope]
        out.append(ScoredItem(board.item_id(key), score, source, context=context))
    return out


def fuse(personal: RankedKeys, trending: RankedKeys, weight: float) -> RankedKeys:
    """One list from both, by weighted reciprocal-rank fusion; ``weight`` is the personalised list's share.

    Each item keeps the label of the list that contributed more to it (the personal list's on a tie) and the
    first known row; its score becomes the fused score. Equal scores keep the order items were first listed in.
    """
    if weight >= 1.0 or not len(trending):
        return personal
    if weight <= 0.0 or not len(personal):
        return trending
    both = RankedKeys.concatenate([personal, trending])
    added = np.concatenate(
        [
            weight / (RRF_OFFSET + np.arange(len(personal)) + 1),
            (1.0 - weight) / (RRF_OFFSET + np.arange(len(trending)) + 1),
        ]
    )
    _, first_seen, inverse = np.unique(both.keys, return_index=True, return_inverse=True)
    scores = np.bincount(inverse, weights=added)
    # An item has one row wherever it is known: the trending list's, replaced by the personal list's where known.
    rows = np.full(len(scores), -1, dtype=np.int64)
    rows[inverse[len(personal) :]] = trending.rows
    known = personal.rows >= 0
    rows[inverse[: len(personal)][known]] = personal.rows[known]
    labels = both.labels[_strongest(added, inverse)]
    order = np.lexsort((first_seen, -scores))
    return RankedKeys(both.keys[first_seen[order]], scores[order], labels[order], rows[order])


def _strongest(contributions: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group (``groups`` numbered 0..G-1), the position of its largest contribution (the earliest on a tie)."""
    by_strength = np.lexsort((np.arange(len(contributions)), -contributions, groups))
    grouped = groups[by_strength]
    group_start = np.ones(len(grouped), dtype=bool)
    group_start[1:] = grouped[1:] != grouped[:-1]
    return by_strength[group_start]


def blend(personal: Sequence[ScoredItem], trending: Sequence[ScoredItem], weight: float) -> list[ScoredItem]:
    """:func:`fuse` over items. The result never shares item objects with ``trending``."""
    if weight >= 1.0 or not trending:
        return list(personal)
    key_of: dict[str, int] = {}
    labels: dict[tuple[str, str | None], int] = {}

    def as_keys(items: Sequence[ScoredItem]) -> RankedKeys:
        return RankedKeys(
            np.array([key_of.setdefault(item.item_id, len(key_of)) for item in items], dtype=np.int64),
            np.array([item.score for item in items], dtype=np.float64),
            np.array([labels.setdefault((item.source, item.context), len(labels)) for item in items], dtype=np.int64),
            np.array([item.row for item in items], dtype=np.int64),
        )

    fused = fuse(as_keys(personal), as_keys(trending), weight)
    item_ids, label_names = list(key_of), list(labels)
    # Fresh objects: later stages mark and explain items per user, and trending lists are shared.
    return [
        ScoredItem(item_ids[key], score, label_names[label][0], row, label_names[label][1])
        for key, score, label, row in zip(
            fused.keys.tolist(), fused.scores.tolist(), fused.labels.tolist(), fused.rows.tolist(), strict=True
        )
    ]
