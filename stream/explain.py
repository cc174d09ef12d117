"""Stage 6d — explain: a human-readable ``reason`` and a machine ``reason_code`` for every recommended item.

The explanation follows from how the item was found, never from a guess after the fact:

==============================  ===========================================================================
code                            when
==============================  ===========================================================================
``similar_to_recent:<item>``    retrieved by the ANN index from the interest vector; ``<item>`` is the recent
                                item whose embedding is closest to it
``bought_together:<item>``      proposed by co-visitation or the item-kNN; ``<item>`` is the recent item it
                                co-occurs with most
``trending_in:<category>``      trending in a category the user just touched
``trending_in_segment:<id>``    trending among users of the same segment
``for_you``                     personalised, with no other recent item to point to
``trending``                    trending across the shop
``explore``                     an exploration slot (``explore: true``)
==============================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from stream.filters import ScoredItem
from stream.user_state import RecentItem

ANCHOR_WINDOW = 5
"""How many of the user's latest known items an explanation may point to."""

_VERBS = {"view": "viewed", "click": "clicked", "cart": "added to your cart", "buy": "bought"}


class ItemRows(Protocol):
    """What explanations read of the item table: rows and their current embeddings."""

    row_of: dict[str, int]

    @property
    def embeddings(self) -> np.ndarray: ...


class Explainer:
    """Fills ``reason`` and ``reason_code`` of the items of one list.

    ``co_occurrence(anchor_rows, rows)`` gives ``[anchors, rows]`` strengths of the collaborative sources' links;
    ``title_of`` gives display names (the item id where the catalog has none).
    """

    def __init__(
        self,
        items: ItemRows,
        co_occurrence: Callable[[list[int], list[int]], np.ndarray],
        title_of: Callable[[str], str | None],
    ) -> None:
        self.items = items
        self.co_occurrence = co_occurrence
        self.title_of = title_of

    def explain(self, items: Sequence[ScoredItem], recent: Sequence[RecentItem]) -> None:
        anchors = self._anchors(recent)
        collaborative = [item.row for item in items if item.source in ("covisitation", "item_knn") and item.row >= 0]
        links: dict[tuple[int, int], float] = {}  # (anchor row, row) -> strength, computed once per list
        if anchors and collaborative:
            strengths = self.co_occurrence([row for row, _ in anchors], collaborative)
            for i, (anchor, _) in enumerate(anchors):
                for j, row in enumerate(collaborative):
                    links[anchor, row] = float(strengths[i, j])
        for item in items:
            item.reason_code, item.reason = self._explain_one(item, anchors, links)

    def _explain_one(
        self, item: ScoredItem, anchors: list[tuple[int, RecentItem]], links: dict[tuple[int, int], float]
    ) -> tuple[str, str]:
        anchors = [pair for pair in anchors if pair[0] != item.row]
        if item.explore:
            return "explore", "Something new you might like"
        if item.source in ("covisitation", "item_knn") and anchors and item.row >= 0:
            anchor = max(anchors, key=lambda pair: links.get((pair[0], item.row), 0.0))[1]
            return f"bought_together:{anchor.item_id}", f"Often chosen with {self._name(anchor.item_id)}"
        if item.source == "ann" and anchors and item.row >= 0:
            rows = np.fromiter((row for row, _ in anchors), dtype=np.int64, count=len(anchors))
            anchor = anchors[int(np.argmax(self._cosine(rows, item.row)))][1]
            verb = _VERBS.get(anchor.event_type, "viewed")
            return f"similar_to_recent:{anchor.item_id}", f"Similar to {self._name(anchor.item_id)}, which you {verb}"
        if item.source in ("ann", "covisitation", "item_knn"):
            return "for_you", "Picked for you from your recent activity"
        if item.source == "trending_in" and item.context is not None:
            return f"trending_in:{item.context}", f"Trending in {item.context}"
        if item.source == "trending_segment" and item.context is not None:
            return f"trending_in_segment:{item.context}", "Popular right now with shoppers like you"
        return "trending", "Trending now"

    def _anchors(self, recent: Sequence[RecentItem]) -> list[tuple[int, RecentItem]]:
        """(row, recent item) of the latest distinct known items, most recent first."""
        anchors: list[tuple[int, RecentItem]] = []
        seen: set[int] = set()
        for entry in reversed(recent):
            row = self.items.row_of.get(entry.item_id)
            if row is not None and row not in seen:
                seen.add(row)
                anchors.append((row, entry))
                if len(anchors) == ANCHOR_WINDOW:
                    break
        return anchors

    def _cosine(self, rows: np.ndarray, row: int) -> np.ndarray:
        embeddings = self.items.embeddings
        anchors = embeddings[rows]
        target = embeddings[row]
        norms = np.linalg.norm(anchors, axis=1) * max(float(np.linalg.norm(target)), 1e-12)
        return (anchors @ target) / np.maximum(norms, 1e-12)

    def _name(self, item_id: str) -> str:
        title = self.title_of(item_id)
        return f"“{title}”" if title else f"item {item_id}"
