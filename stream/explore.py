"""Stage 6c — explore: give a share of the slots to under-exposed items, so the system keeps learning.

A recommender that only exploits never learns about new or rarely shown items. A configurable share of each
list's slots (``exploration_share``) goes to items drawn from the user's allowed candidates beyond the exploited
items. Items indexed from their content since the last training come first, wherever the retrieval ranked them for
this user: the model knows nothing of them yet, and this is how a new item reaches its first shoppers. Then every
item with fewer than ``exploration_max_impressions`` impressions gets a Thompson-sampling draw from
``Beta(1 + engagements, 1 + impressions − engagements)`` and the highest draws win. An item with no impressions
has a wide posterior and is tried soon; an item shown often and never touched stops being explored.

The slot count is ``share · k`` rounded at random to a neighbouring integer (so the expected share is exact), and
explored items are spread evenly through the list rather than appended, because an item at the bottom of a list
is rarely seen and would learn nothing. Each is marked ``explore`` in the output so A/B analysis can separate
exploration from exploitation. Exposure statistics are per worker and in memory: they rebuild from the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streamrec.stream.filters import ScoredItem


class ExposureStats:
    """Impressions (times recommended) and engagements (times then touched by that user) of each item."""

    def __init__(self) -> None:
        self._stats: dict[str, list[float]] = {}

    def shown(self, item_id: str) -> None:
        self._stats.setdefault(item_id, [0.0, 0.0])[0] += 1.0

    def engaged(self, item_id: str) -> None:
        self._stats.setdefault(item_id, [0.0, 0.0])[1] += 1.0

    def add(self, item_id: str, shown: float = 0.0, engaged: float = 0.0) -> None:
        """Counts another worker saw (``stream/aggregates.py``)."""
        stats = self._stats.setdefault(item_id, [0.0, 0.0])
        stats[0] += shown
        stats[1] += engaged

    def counts(self, item_id: str) -> tuple[float, float]:
        """(impressions, engagements) of the item."""
        stats = self._stats.get(item_id)
        return (0.0, 0.0) if stats is None else (stats[0], stats[1])

    def posterior(self, item_id: str) -> tuple[float, float]:
        """Beta parameters of the item's engagement rate."""
        return _beta_parameters(*self.counts(item_id))

    def __len__(self) -> int:
        return len(self._stats)


class Explorer:
    """Chooses how many slots to explore and which items fill them."""

    def __init__(
        self, share: float, max_impressions: int, seed: int | None = None, exposure: ExposureStats | None = None
    ) -> None:
        """``exposure``: the stream's impression counts, shared by every variant's explorer (default: its own)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("exploration share must lie in [0, 1]")
        self.share = share
        self.max_impressions = max_impressions
        self.exposure = exposure if exposure is not None else ExposureStats()
        self._rng = np.random.default_rng(seed)

    def n_slots(self, k: int) -> int:
        expected = self.share * k
        whole = int(expected)
        return min(k, whole + int(self._rng.random() < expected - whole))

    def pick(
        self, pool: Sequence[ScoredItem], n: int, first: Callable[[ScoredItem], bool] | None = None
    ) -> list[ScoredItem]:
        """Up to ``n`` under-exposed items of ``pool`` by Thompson sampling, marked as exploration.

        Items for which ``first`` is true (items indexed from their content since the last training, about
        which the model has no collaborative evidence at all) are explored before any other.
        """
        marks = None if first is None else np.array([first(item) for item in pool], dtype=bool)
        picked = [pool[i] for i in self.pick_positions([item.item_id for item in pool], n, marks).tolist()]
        for item in picked:
            item.explore = True
        return picked

    def pick_positions(self, item_ids: Sequence[str], n: int, first: np.ndarray | None = None) -> np.ndarray:
        """:meth:`pick` over item ids: the positions of the picked items, in the order they were picked."""
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        counts = self.exposure.counts
        exposure = np.array([counts(item_id) for item_id in item_ids], dtype=np.float64).reshape(-1, 2)
        eligible = np.flatnonzero(exposure[:, 0] < self.max_impressions)
        if not len(eligible):
            return eligible
        draws = self._rng.beta(*_beta_parameters(exposure[eligible, 0], exposure[eligible, 1]))
        if first is not None:
            draws += first[eligible]  # draws lie in [0, 1]
        return eligible[np.argsort(-draws, kind="stable")[:n]]

    @staticmethod
    def place(exploited: Sequence[ScoredItem], explored: Sequence[ScoredItem]) -> list[ScoredItem]:
        """Exploited items in order with explored ones spread evenly among them (never in the first slot)."""
        total = len(exploited) + len(explored)
        positions = {round((i + 1) * total / (len(explored) + 1)) for i in range(len(explored))}
        out: list[ScoredItem] = []
        exploit, explore = iter(exploited), iter(explored)
        for position in range(total):
            source = explore if position in positions else exploit
            item = next(source, None) or next(exploit, None) or next(explore, None)
            if item is not None:
                out.append(item)
        return out


def _beta_parameters(impressions: Any, engagements: Any) -> tuple[Any, Any]:
    """Beta(1 + engagements, 1 + impressions − engagements): a uniform prior updated by the exposure counts (floats
    or arrays of them)."""
    engagements = np.minimum(engagements, impressions)
    return 1.0 + engagements, 1.0 + impressions - engagements
