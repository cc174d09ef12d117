"""Stage 6 — filter and diversify: one user's final list from the personal ranking and trending.

:class:`ListBuilder` blends the personal ranking with context trending (``cold_start.py``), keeps what the business
rules allow (``rules.py``, ``filters.py``), refills the pool when rules emptied it, diversifies with category caps
(``diversify.py``), fills exploration slots (``explore.py``) and explains every item (``explain.py``). Items are
never changed in place: a refill or a blend hands on copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from streamrec.stream.cold_start import blend, personal_weight, trending_candidates
from streamrec.stream.diversify import diversify
from streamrec.stream.explain import Explainer
from streamrec.stream.explore import Explorer
from streamrec.stream.filters import ScoredItem, allowed_pool
from streamrec.stream.item_table import ItemTable
from streamrec.stream.rank import RankedCandidates
from streamrec.stream.rules import Request, RuleSet
from streamrec.stream.settings import Settings
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.user_state import UserState

TRENDING_DEPTH_STEP = 32


class ListBuilder:
    """Builds each user's list; one per served model (it reads the model's item table)."""

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
        self._trending_lists: dict[tuple, list[ScoredItem]] = {}

    def start_batch(self) -> None:
        """Trending does not move within a batch's list building: its lists are shared by users alike."""
        self._trending_lists = {}

    def build(
        self, state: UserState, segment: int | None, request: Request, ranked: RankedCandidates, known: int
    ) -> list[ScoredItem]:
        """The final list of one user: blend, rules, diversity and category caps, exploration, explanations.

        ``ranked`` is the user's personal ranking (empty for a cold user), ``known`` how many of the user's
        events the model knows (it sets how far the personal ranking outweighs trending)."""
        settings = self.settings
        k = settings.top_k
        pool_size = self._pool_size()
        head = pool_size + len(state.bought) + 1  # enough to fill the pool after the rules
        trending = self._trending_for(tuple(self._recent_categories(state)), segment, head)
        weight = personal_weight(known, settings.cold_start_prior_events)
        candidates = blend(ranked.items(0, head), trending, weight)
        pool = allowed_pool(candidates, request, self.rules, pool_size)
        if len(pool) < pool_size and len(candidates) < head + len(trending):
            # Heavy filtering emptied the head: let the rest of the personalised list and the whole shop's
            # trending refill the pool, below what it holds.
            extra = [*ranked.items(head), *(ScoredItem(i, s, "trending") for i, s in self.trending.top(head))]
            pool += self._ranked_after(pool, extra, request, pool_size - len(pool))
        size = min(k, len(pool))
        order = self._diversify(pool, size)
        if len(order) < size and settings.max_per_category:
            # The cap left slots empty: widen the pool with the rest of the ranking and trending once.
            pool += self._ranked_after(pool, [*ranked.items(head), *trending, *candidates], request, 4 * pool_size)
            order = self._diversify(pool, size)
        n_explore = self.explorer.n_slots(len(order))
        exploited = [pool[i] for i in order[: len(order) - n_explore]]
        explored: list[ScoredItem] = []
        if n_explore:
            chosen = {item.item_id for item in exploited}
            unexploited = [item for item in pool if item.item_id not in chosen]
            # New items the retrieval found for this user may rank below the pool: their scores rest on content
            # alone. Exploration considers them wherever they rank.
            held = {item.item_id for item in pool}
            unexploited += allowed_pool(
                (c for c in ranked.from_row(self.items.n_trained) if c.item_id not in held),
                request,
                self.rules,
                pool_size,
            )
            explored = self.explorer.pick(unexploited, n_explore, first=lambda item: item.row >= self.items.n_trained)
            # Slots exploration could not fill go back to the exploited ranking.
            exploited += [pool[i] for i in order[len(order) - n_explore :]][: n_explore - len(explored)]
        final = self.explorer.place(exploited, explored)
        self.explainer.explain(final, state.recent)
        return final

    def _trending_for(self, categories: tuple[str, ...], segment: int | None, n: int) -> list[ScoredItem]:
        """The context trending list, shared by the batch's users with the same categories and segment."""
        # Lengths are rounded up so users who bought a little more or less share one list; the rounding depends
        # on the user alone, never on who else is in the batch.
        depth = -(-n // TRENDING_DEPTH_STEP) * TRENDING_DEPTH_STEP
        key = (categories, segment, depth)
        held = self._trending_lists.get(key)
        if held is None:
            held = self._trending_lists[key] = trending_candidates(self.trending, categories, segment, depth)
        # Items are handed on to the blend, which copies them; the list itself is never changed.
        return held[:n]

    def _ranked_after(
        self, pool: list[ScoredItem], extra: list[ScoredItem], request: Request, size: int
    ) -> list[ScoredItem]:
        """Up to ``size`` allowed items of ``extra`` not in ``pool``, in their order, scored below the whole pool.

        Refills come from lists on other scales (raw ranker scores, trending counts) than the blended pool: they
        must not jump ahead of it.
        """
        taken = {item.item_id for item in pool}
        added = allowed_pool((c for c in extra if c.item_id not in taken), request, self.rules, size)
        floor = min((item.score for item in pool), default=0.0)
        step = max(abs(floor), 1.0) * 1e-3
        return [replace(item, score=floor - (n + 1) * step) for n, item in enumerate(added)]

    def _pool_size(self) -> int:
        """Allowed candidates that diversity and exploration choose from."""
        return max(3 * self.settings.top_k, 50)

    def _diversify(self, pool: list[ScoredItem], k: int) -> list[int]:
        settings = self.settings
        needs_categories = settings.max_per_category > 0 or settings.diversity_weight > 0
        return diversify(
            np.array([item.score for item in pool]),
            self._unit_vectors(pool) if settings.diversity_weight > 0 else np.zeros((len(pool), 1), np.float32),
            [self.category_of(item.item_id) for item in pool] if needs_categories else [None] * len(pool),
            k,
            settings.diversity_weight,
            settings.max_per_category,
        )

    def _unit_vectors(self, pool: list[ScoredItem]) -> np.ndarray:
        rows = np.array(
            [item.row if item.row >= 0 else self.items.row_of.get(item.item_id, -1) for item in pool], dtype=np.int64
        )
        vectors = self.items.unit_embeddings[np.maximum(rows, 0)]
        vectors[rows < 0] = 0.0  # an item the model does not know is like no other
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
