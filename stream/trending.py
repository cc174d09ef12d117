"""Real-time popularity: exponentially decayed, event-weighted interaction counts per item.

Cold-start users are served from here. Counts are kept scaled to a moving reference time so an update is
one addition and no stored count needs touching as time passes; they are rescaled only when the scale
factor would overflow float64.
"""

from __future__ import annotations

import numpy as np

_RESCALE_AFTER_HALF_LIVES = 200.0  # 2**200 is far inside float64 range


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
        n_top = min(n, count)
        best = np.argpartition(-scores, n_top - 1)[:n_top]
        best = best[np.argsort(-scores[best], kind="stable")]
        top_score = scores[best[0]]
        result = [(self._item_ids[i], float(scores[i] / top_score)) for i in best]
        self._top_cache = (self._version, result)
        return result
