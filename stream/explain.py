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

from streamrec.index.covisitation import CoVisitation
from streamrec.model.baselines import ItemKNNModel
from streamrec.stream.filters import ScoredItem
from streamrec.stream.user_state import RecentItem

ANCHOR_WINDOW = 5
"""How many of the user's latest known items an explanation may point to."""

COLLABORATIVE_SOURCES = ("covisitation", "item_knn")
#: Candidate sources that read the user's own history; the others (trending) need none.
PERSONAL_SOURCES = ("ann", *COLLABORATIVE_SOURCES)
_VERBS = {"view": "viewed", "click": "clicked", "cart": "added to your cart", "buy": "bought"}


class ItemRows(Protocol):
    """What explanations read of the item table: rows and their current unit-length embeddings."""

    row_of: dict[str, int]

    @property
    def unit_embeddings(self) -> np.ndarray: ...


def co_occurrence_of(
    covisitation: CoVisitation, item_knn: ItemKNNModel | None
) -> Callable[[list[int], list[int]], np.ndarray]:
    """``[anchors, rows]``: how strongly the collaborative sources (co-visitation, the item-kNN) tie each pair."""

    def co_occurrence(anchors: list[int], rows: list[int]) -> np.ndarray:
        strength = covisitation.strengths(anchors, rows)
        if item_knn is not None:
            strength += item_knn.similarities_between(anchors, rows)
        return strength

    return co_occurrence


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
        anchor_of: dict[int, RecentItem] = {}  # position in ``items`` -> the recent item that explains it
        if anchors:
            anchor_rows = np.fromiter((row for row, _ in anchors), dtype=np.int64, count=len(anchors))
            collaborative = [i for i, item in enumerate(items) if _needs_anchor(item, COLLABORATIVE_SOURCES)]
            if collaborative:
                rows = [items[i].row for i in collaborative]
                strengths = np.asarray(self.co_occurrence(anchor_rows.tolist(), rows), dtype=np.float64)
                self._pick_anchors(strengths, anchor_rows, np.asarray(rows), collaborative, anchors, anchor_of)
            similar = [i for i, item in enumerate(items) if _needs_anchor(item, ("ann",))]
            if similar:
                rows = np.fromiter((items[i].row for i in similar), dtype=np.int64, count=len(similar))
                cosines = self._cosines(anchor_rows, rows)
                self._pick_anchors(cosines, anchor_rows, rows, similar, anchors, anchor_of)
        for i, item in enumerate(items):
            item.reason_code, item.reason = self._explain_one(item, anchor_of.get(i))

    @staticmethod
    def _pick_anchors(
        affinity: np.ndarray,
        anchor_rows: np.ndarray,
        rows: np.ndarray,
        positions: list[int],
        anchors: list[tuple[int, RecentItem]],
        anchor_of: dict[int, RecentItem],
    ) -> None:
        """For each column of ``affinity [anchors, items]``, the anchor with the largest value, never the item
        itself; on a tie the most recent anchor (anchors are most recent first)."""
        is_self = anchor_rows[:, None] == rows[None, :]
        affinity = np.where(is_self, -np.inf, affinity)
        best = np.argmax(affinity, axis=0)
        usable = ~is_self.all(axis=0)
        for position, anchor, ok in zip(positions, best.tolist(), usable.tolist(), strict=True):
            if ok:
                anchor_of[position] = anchors[anchor][1]

    def _explain_one(self, item: ScoredItem, anchor: RecentItem | None) -> tuple[str, str]:
        if item.explore:
            return "explore", "Something new you might like"
        if item.source in COLLABORATIVE_SOURCES and anchor is not None:
            return f"bought_together:{anchor.item_id}", f"Often chosen with {self._name(anchor.item_id)}"
        if item.source == "ann" and anchor is not None:
            verb = _VERBS.get(anchor.event_type, "viewed")
            return f"similar_to_recent:{anchor.item_id}", f"Similar to {self._name(anchor.item_id)}, which you {verb}"
        if item.source in PERSONAL_SOURCES:
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

    def _cosines(self, anchor_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[anchors, items]`` cosine similarity of the embeddings."""
        unit = self.items.unit_embeddings
        return unit[anchor_rows] @ unit[rows].T

    def _name(self, item_id: str) -> str:
        title = self.title_of(item_id)
        return f"“{title}”" if title else f"item {item_id}"


def _needs_anchor(item: ScoredItem, sources: tuple[str, ...]) -> bool:
    return not item.explore and item.source in sources and item.row >= 0
