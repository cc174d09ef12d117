"""Stage 6 — filter and diversify: each user's final list from the personal ranking and trending.

:class:`ListBuilder` blends the personal ranking with context trending (``cold_start.py``), keeps what the business
rules allow (``rules.py``), refills the pool when rules emptied it, diversifies with category caps
(``diversify.py``), fills exploration slots (``explore.py``) and explains every item (``explain.py``), for all the
users of a batch. Candidates stay arrays until the final list (a per-candidate object would cost more than ranking
it); trending lists are computed once per batch and context; explanations are weighed for the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streamrec.stream.cold_start import (
    RankedKeys,
    TrendingRanking,
    fuse,
    personal_weight,
    trending_rankings,
)
from streamrec.stream.diversify import diversify
from streamrec.stream.explain import Explainer
from streamrec.stream.explore import Explorer
from streamrec.stream.filters import ScoredItem
from streamrec.stream.item_table import ItemTable
from streamrec.stream.rank import RankedCandidates
from streamrec.stream.rules import Request, RuleSet
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.user_state import UserState

TRENDING_DEPTH_STEP = 32
NO_CONTEXT = None


@dataclass(slots=True)
class ListRequest:
    """What one user's list is built from: ``ranked`` is the user's personal ranking (empty for a cold user),
    ``known`` how many of the user's events the model knows (it sets how far the personal ranking outweighs
    trending)."""

    state: UserState
    segment: int | None
    request: Request
    ranked: RankedCandidates
    known: int


class ListBuilder:
    """Builds each user's list; one per served model (it reads the model's item table).

    Candidates travel as arrays (:class:`RankedKeys`) from the ranking to the final list: an item is keyed by its
    table row, or by ``-1 - trending key`` when the model does not know it; its label indexes :attr:`labels`, the
    (source, context) pairs seen so far. Only the final list's items become objects.
    """

    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        explorer: Explorer,
        trending: TrendingBoard,
        items: ItemTable,
        explainer: Explainer,
        category_of: Callable[[str], str | None],
    ) -> None:
        self.settings, self.rules, self.explorer, self.trending = settings, rules, explorer, trending
        self.items, self.explainer, self.category_of = items, explainer, category_of
        self.labels: list[tuple[str, str | None]] = []
        self._label_of: dict[tuple[str, str | None], int] = {}
        self._trending_lists: dict[tuple, RankedKeys] = {}
        # Trending board key -> the item's table row (-1: unknown), for the table size it was computed at.
        self._row_of_key = np.empty(0, dtype=np.int64)
        self._rows_for_table_size = -1

    def build_batch(self, users: Sequence[ListRequest]) -> list[list[ScoredItem]]:
        """The final lists of a batch's users, explained together."""
        # Trending does not move within a batch's list building: its lists are shared by users alike, and
        # computed for all the batch's contexts at once.
        self._trending_lists = {}
        keys = [self._trending_key(user.state, user.segment) for user in users]
        contexts = list(dict.fromkeys(keys))
        for context, ranking in zip(contexts, trending_rankings(self.trending, contexts), strict=True):
            self._trending_lists[context] = self._ranking_keys(ranking)
        lists = [self._build(user, self._trending_lists[key]) for user, key in zip(users, keys, strict=True)]
        self.explainer.explain_many(lists, [user.state.recent for user in users])
        return lists

    def _build(self, user: ListRequest, context_trending: RankedKeys) -> list[ScoredItem]:
        """One user's list: blend, rules, diversity and category caps, exploration (unexplained).

        ``context_trending`` is the trending list of the user's context (at least as deep as :meth:`_head`)."""
        state, request, ranked, known = user.state, user.request, user.ranked, user.known
        settings = self.settings
        k = settings.top_k
        pool_size = self._pool_size()
        head = self._head(state)
        trending = context_trending.take(slice(0, head))
        weight = personal_weight(known, settings.cold_start_prior_events)
        personal = self._personal(ranked, slice(0, head))
        candidates = fuse(personal, trending, weight)
        pool = self._allowed(candidates, request, pool_size)
        if len(pool) < pool_size and len(candidates) < head + len(trending):
            # Heavy filtering emptied the head: let the rest of the personalised list and the whole shop's
            # trending refill the pool, below what it holds.
            extra = RankedKeys.concatenate([self._personal(ranked, slice(head, None)), self._overall_trending(head)])
            pool = self._refilled(pool, extra, request, pool_size - len(pool))
        size = min(k, len(pool))
        order = self._diversify(pool, size)
        if len(order) < size and settings.max_per_category:
            # The cap left slots empty: widen the pool with the rest of the ranking and trending once.
            extra = RankedKeys.concatenate([self._personal(ranked, slice(head, None)), trending, candidates])
            pool = self._refilled(pool, extra, request, 4 * pool_size)
            order = self._diversify(pool, size)
        n_explore = self.explorer.n_slots(len(order))
        exploited = order[: len(order) - n_explore]
        if not n_explore:
            final = self._items(pool, exploited)
        else:
            # New items the retrieval found for this user may rank below the pool: their scores rest on content
            # alone. Exploration considers them wherever they rank.
            left = np.ones(len(pool), dtype=bool)
            left[exploited] = False
            unexploited = pool.take(left)
            new_rows = np.flatnonzero(ranked.rows >= self.items.n_trained)
            if len(new_rows):
                new_items = self._personal(ranked, new_rows)
                new_items = new_items.take(~np.isin(new_items.keys, pool.keys))
                unexploited = RankedKeys.concatenate([unexploited, self._allowed(new_items, request, pool_size)])
            first = unexploited.rows >= self.items.n_trained
            picked = self.explorer.pick_positions(self._item_ids(unexploited.keys), n_explore, first)
            # Slots exploration could not fill go back to the exploited ranking.
            exploited = np.concatenate([exploited, order[len(order) - n_explore :][: n_explore - len(picked)]])
            explored = self._items(unexploited, picked)
            for item in explored:
                item.explore = True
            final = self.explorer.place(self._items(pool, exploited), explored)
        return final

    # --- candidates as arrays ---------------------------------------------------------------------------------
    def _personal(self, ranked: RankedCandidates, where: slice | np.ndarray) -> RankedKeys:
        """Ranks ``where`` of the personal ranking, keyed and labelled."""
        rows = ranked.rows[where]
        codes = np.array([self._label((name, NO_CONTEXT)) for name in ranked.source_names], dtype=np.int64)
        labels = codes[ranked.sources[where]] if len(codes) else np.empty(0, dtype=np.int64)
        return RankedKeys(rows, ranked.scores[where].astype(np.float64), labels, rows)

    def _head(self, state: UserState) -> int:
        """How deep the personal ranking and trending are read: enough to fill the pool after the rules."""
        return self._pool_size() + len(state.bought) + 1

    def _trending_key(self, state: UserState, segment: int | None) -> tuple[tuple[str, ...], int | None, int]:
        """The user's trending context: latest categories, segment, and the list's depth."""
        # Depths are rounded up so users who bought a little more or less share one list; the rounding depends
        # on the user alone, never on who else is in the batch.
        depth = -(-self._head(state) // TRENDING_DEPTH_STEP) * TRENDING_DEPTH_STEP
        return tuple(self._recent_categories(state)), segment, depth

    def _ranking_keys(self, ranking: TrendingRanking) -> RankedKeys:
        scope_labels = np.array([self._label(pair) for pair in ranking.explained_by], dtype=np.int64)
        return self._trending_keys(ranking.keys, ranking.scores, scope_labels[ranking.scopes])

    def _overall_trending(self, n: int) -> RankedKeys:
        """The whole shop's trending items, with the counts relative to the first."""
        keys, scores = self.trending.overall.top_keys(n)
        return self._trending_keys(keys, scores, np.full(len(keys), self._label(("trending", NO_CONTEXT))))

    def _trending_keys(self, board_keys: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> RankedKeys:
        rows = self._rows_of_board_keys(board_keys)
        keys = np.where(rows >= 0, rows, -1 - board_keys)
        # A trending list does not know the model's rows: explanations and exploration treat its items as such.
        return RankedKeys(keys, scores.astype(np.float64), labels, np.full(len(keys), -1, dtype=np.int64))

    def _rows_of_board_keys(self, board_keys: np.ndarray) -> np.ndarray:
        """Table rows of trending board keys, from a mapping kept up to date as the board and the table grow."""
        known = len(self._row_of_key)
        if len(self.items.item_ids) != self._rows_for_table_size:
            known, self._rows_for_table_size = 0, len(self.items.item_ids)
        if len(self.trending.overall) > known:
            row_of, item_id = self.items.row_of, self.trending.item_id
            added = np.array(
                [row_of.get(item_id(key), -1) for key in range(known, len(self.trending.overall))], dtype=np.int64
            )
            self._row_of_key = np.concatenate([self._row_of_key[:known], added])
        return self._row_of_key[board_keys]

    def _item_ids(self, keys: np.ndarray) -> list[str]:
        table, board_item = self.items.item_ids, self.trending.item_id
        return [table[key] if key >= 0 else board_item(-1 - key) for key in keys.tolist()]

    def _label(self, pair: tuple[str, str | None]) -> int:
        label = self._label_of.get(pair)
        if label is None:
            label = self._label_of[pair] = len(self.labels)
            self.labels.append(pair)
        return label

    def _allowed(self, candidates: RankedKeys, request: Request, size: int) -> RankedKeys:
        """The first ``size`` candidates no rule blocks, in order (candidates hold each item once)."""
        return candidates.take(self.rules.first_allowed(self._item_ids(candidates.keys), request, size))

    def _refilled(self, pool: RankedKeys, extra: RankedKeys, request: Request, size: int) -> RankedKeys:
        """``pool`` and after it up to ``size`` allowed items of ``extra`` not in it, in their order, scored below
        the whole pool.

        Refills come from lists on other scales (raw ranker scores, trending counts) than the blended pool: they
        must not jump ahead of it.
        """
        _, first_seen = np.unique(extra.keys, return_index=True)
        fresh = np.sort(first_seen)
        fresh = fresh[~np.isin(extra.keys[fresh], pool.keys)]
        added = self._allowed(extra.take(fresh), request, size)
        floor = float(pool.scores.min()) if len(pool) else 0.0
        step = max(abs(floor), 1.0) * 1e-3
        added.scores = floor - (np.arange(len(added)) + 1) * step
        return RankedKeys.concatenate([pool, added])

    def _items(self, candidates: RankedKeys, positions: np.ndarray) -> list[ScoredItem]:
        """The candidates at ``positions`` as the list's items."""
        chosen = candidates.take(positions)
        labels = self.labels
        return [
            ScoredItem(item_id, score, labels[label][0], row, labels[label][1])
            for item_id, score, label, row in zip(
                self._item_ids(chosen.keys),
                chosen.scores.tolist(),
                chosen.labels.tolist(),
                chosen.rows.tolist(),
                strict=True,
            )
        ]

    # --- diversity --------------------------------------------------------------------------------------------
    def _pool_size(self) -> int:
        """Allowed candidates that diversity and exploration choose from."""
        return max(3 * self.settings.top_k, 50)

    def _diversify(self, pool: RankedKeys, k: int) -> np.ndarray:
        settings = self.settings
        needs_categories = settings.max_per_category > 0 or settings.diversity_weight > 0
        return np.array(
            diversify(
                pool.scores,
                self._unit_vectors(pool.keys)
                if settings.diversity_weight > 0
                else np.zeros((len(pool), 1), np.float32),
                [self.category_of(item_id) for item_id in self._item_ids(pool.keys)]
                if needs_categories
                else [None] * len(pool),
                k,
                settings.diversity_weight,
                settings.max_per_category,
            ),
            dtype=np.int64,
        )

    def _unit_vectors(self, keys: np.ndarray) -> np.ndarray:
        vectors = self.items.unit_embeddings[np.maximum(keys, 0)]
        vectors[keys < 0] = 0.0  # an item the model does not know is like no other
        return vectors

    def _recent_categories(self, state: UserState, n: int = 3) -> list[str]:
        """Distinct categories of the user's latest items, most recent first."""
        categories: list[str] = []
        for item in reversed(state.recent):
            category = self.category_of(item.item_id)
            if category is not None and category not in categories:
                categories.append(category)
                if len(categories) == n:
                    break
        return categories
