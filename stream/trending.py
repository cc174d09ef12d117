"""Real-time popularity: exponentially decayed, event-weighted interaction counts per item.

Cold-start users are served from here. Counts are kept scaled to a moving reference time so an update is
one addition and no stored count needs touching as time passes; they are rescaled only when the scale
factor would overflow float64.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

_RESCALE_AFTER_HALF_LIVES = 200.0  # 2**200 is far inside float64 range
TOP_CACHE_MIN = 256


class TrendingCounter:
    """Decayed counts of every item seen on the stream, including items the model does not know."""

    def __init__(self, half_life_s: float, initial_capacity: int = 1024) -> None:
        self.half_life_s = half_life_s
        self._slot_of: dict[str, int] = {}
        self._item_ids: list[str] = []
        self._scores = np.zeros(initial_capacity, dtype=np.float64)
        self._reference_ts: float | None = None
        self._top_cache: tuple[int, list[tuple[str, float]]] | None = None
        self._version = 0

    def __len__(self) -> int:
        return len(self._item_ids)

    def add(self, item_id: str, weight: float, ts: float) -> None:
        if self._reference_ts is None:
            self._reference_ts = ts
        exponent = (ts - self._reference_ts) / self.half_life_s
        if exponent > _RESCALE_AFTER_HALF_LIVES:
            self._scores *= 2.0 ** (-exponent)
            self._reference_ts = ts
            exponent = 0.0
        slot = self._slot_of.get(item_id)
        if slot is None:
            slot = len(self._item_ids)
            if slot == len(self._scores):
                self._scores = np.concatenate([self._scores, np.zeros_like(self._scores)])
            self._slot_of[item_id] = slot
            self._item_ids.append(item_id)
        self._scores[slot] += weight * 2.0**exponent
        self._version += 1

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items right now, with scores relative to the first (1.0)."""
        if self._top_cache is not None and self._top_cache[0] == self._version and len(self._top_cache[1]) >= n:
            return self._top_cache[1][:n]
        count = len(self._item_ids)
        if count == 0:
            return []
        scores = self._scores[:count]
        # Callers ask for slightly different lengths; computing a generous list once serves them all from cache.
        n_top = min(max(n, TOP_CACHE_MIN), count)
        best = np.argpartition(-scores, n_top - 1)[:n_top]
        best = best[np.argsort(-scores[best], kind="stable")]
        top_score = scores[best[0]]
        result = [(self._item_ids[i], float(scores[i] / top_score)) for i in best]
        self._top_cache = (self._version, result)
        return result[:n]


class TrendingBoard:
    """Trending at three scopes: the whole shop, each category, and each user segment.

    A cold-start user is served what rises in the categories they just touched and among users like them, not
    only what the whole shop buys. Scopes are created on first use; :attr:`max_scopes` bounds their number so a
    producer sending a new category on every event cannot exhaust memory (further scopes are not tracked).
    """

    def __init__(self, half_life_s: float, max_scopes: int = 100_000) -> None:
        self.half_life_s = half_life_s
        self.max_scopes = max_scopes
        self.overall = TrendingCounter(half_life_s)
        self.by_category: dict[str, TrendingCounter] = {}
        self.by_segment: dict[int, TrendingCounter] = {}

    def add(self, item_id: str, weight: float, ts: float, category: str | None, segment: int | None) -> None:
        self.overall.add(item_id, weight, ts)
        if category is not None:
            counter = self._scope(self.by_category, category)
            if counter is not None:
                counter.add(item_id, weight, ts)
        if segment is not None:
            counter = self._scope(self.by_segment, segment)
            if counter is not None:
                counter.add(item_id, weight, ts)

    def top(self, n: int) -> list[tuple[str, float]]:
        return self.overall.top(n)

    def top_in_category(self, category: str, n: int) -> list[tuple[str, float]]:
        counter = self.by_category.get(category)
        return [] if counter is None else counter.top(n)

    def top_in_segment(self, segment: int, n: int) -> list[tuple[str, float]]:
        counter = self.by_segment.get(segment)
        return [] if counter is None else counter.top(n)

    def _scope(self, scopes: dict[Any, TrendingCounter], key: Hashable) -> TrendingCounter | None:
        counter = scopes.get(key)
        if counter is None and len(self.by_category) + len(self.by_segment) < self.max_scopes:
            counter = scopes[key] = TrendingCounter(self.half_life_s, initial_capacity=64)
        return counter
