"""Real-time popularity: exponentially decayed, event-weighted interaction counts per item.

Cold-start users are served from here. Counts are kept scaled to a moving reference time so an update is
one addition and no stored count needs touching as time passes; they are rescaled only when the scale
factor would overflow float64.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
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
        self._keys = np.zeros(initial_capacity, dtype=np.int64)
        self._top_cache: _Ranking | None = None
        self._version = 0

    def __len__(self) -> int:
        return len(self._item_ids)

    def add(self, item_id: str, weight: float, ts: float, key: int | None = None) -> int:
        """Count ``weight`` for ``item_id`` at event time ``ts``; returns the item's slot in this counter.

        ``key`` is an integer the caller knows the item by (:meth:`top_keys` returns it; the item's own slot by
        default): it lets scoped counters be merged without comparing item id strings.
        """
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
                self._keys = np.concatenate([self._keys, np.zeros_like(self._keys)])
            self._slot_of[item_id] = slot
            self._item_ids.append(item_id)
            self._keys[slot] = slot if key is None else key
        self._scores[slot] += weight * 2.0**exponent
        self._version += 1
        return slot

    def item_id(self, slot: int) -> str:
        return self._item_ids[slot]

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items right now, with scores relative to the first (1.0)."""
        ranking = self._ranking(n)
        if ranking.listed is None:
            ranking.listed = [
                (self._item_ids[slot], score)
                for slot, score in zip(ranking.slots.tolist(), ranking.relative.tolist(), strict=True)
            ]
        return ranking.listed[:n]

    def top_keys(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top` as arrays: the items' keys (see :meth:`add`) and their relative scores, best first."""
        ranking = self._ranking(n)
        return ranking.keys[:n], ranking.relative[:n]

    def _ranking(self, n: int) -> _Ranking:
        held = self._top_cache
        if (
            held is not None
            and held.version == self._version
            and (len(held.slots) >= n or len(held.slots) == len(self))
        ):
            return held
        scores = self._scores[: len(self._item_ids)]
        # Callers ask for slightly different lengths; computing a generous list once serves them all from cache.
        n_top = min(max(n, TOP_CACHE_MIN), len(scores))
        slots = np.argpartition(-scores, n_top - 1)[:n_top] if n_top else np.empty(0, dtype=np.int64)
        slots = slots[np.argsort(-scores[slots], kind="stable")]
        relative = scores[slots] / scores[slots[0]] if n_top else np.empty(0)
        self._top_cache = _Ranking(self._version, slots, self._keys[slots], relative)
        return self._top_cache


@dataclass(slots=True)
class _Ranking:
    """A counter's top items at one version: slots, keys and relative scores, best first."""

    version: int
    slots: np.ndarray
    keys: np.ndarray
    relative: np.ndarray
    listed: list[tuple[str, float]] | None = None


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
        # Every item is counted overall, so its overall slot is the key all scopes know it by.
        key = self.overall.add(item_id, weight, ts)
        if category is not None:
            counter = self._scope(self.by_category, category)
            if counter is not None:
                counter.add(item_id, weight, ts, key)
        if segment is not None:
            counter = self._scope(self.by_segment, segment)
            if counter is not None:
                counter.add(item_id, weight, ts, key)

    def top(self, n: int) -> list[tuple[str, float]]:
        return self.overall.top(n)

    def item_id(self, key: int) -> str:
        """The item a key of :meth:`top_keys` (or of a scope's ``top_keys``) stands for."""
        return self.overall.item_id(key)

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
