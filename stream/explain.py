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
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(anchors, rows)``: how strongly the collaborative sources (co-visitation, the item-kNN) tie each pair
    ``(anchors[i], rows[i])``."""

    def co_occurrence(anchors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        strength = covisitation.strengths_of_pairs(anchors, rows)
        if item_knn is not None:
            strength += item_knn.similarities_of_pairs(anchors, rows)
        return strength

    return co_occurrence


class Explainer:
    """Fills ``reason`` and ``reason_code`` of the items of lists, a batch's lists at once.

    ``co_occurrence(anchor_rows, rows)`` gives the strength of the collaborative sources' link of each pair;
    ``title_of`` gives display names (the item id where the catalog has none).
    """

    def __init__(
        self,
        items: ItemRows,
        co_occurrence: Callable[[np.ndarray, np.ndarray], np.ndarray],
        title_of: Callable[[str], str | None],
    ) -> None:
        self.items = items
        self.co_occurrence = co_occurrence
        self.title_of = title_of

    def explain(self, items: Sequence[ScoredItem], recent: Sequence[RecentItem]) -> None:
        self.explain_many([items], [recent])

    def explain_many(self, lists: Sequence[Sequence[ScoredItem]], recents: Sequence[Sequence[RecentItem]]) -> None:
        """Explain each list by its user's recent items (``recents``, aligned with ``lists``)."""
        # Every (item, anchor) pair to weigh, over the whole batch: the item's list and position, the anchor's
        # rank among its user's anchors, both rows.
        pairs: dict[bool, list[tuple[int, int, int, int, int]]] = {True: [], False: []}
        anchors_of: list[list[tuple[int, RecentItem]]] = []
        for number, (items, recent) in enumerate(zip(lists, recents, strict=True)):
            anchors = self._anchors(recent)
            anchors_of.append(anchors)
            if not anchors:
                continue
            for position, item in enumerate(items):
                if not item.explore and item.row >= 0:
                    collaborative = item.source in COLLABORATIVE_SOURCES
                    if collaborative or item.source == "ann":
                        target = pairs[collaborative]
                        for rank, (row, _) in enumerate(anchors):
                            if row != item.row:  # never the item itself
                                target.append((number, position, rank, row, item.row))
        anchor_of: dict[tuple[int, int], RecentItem] = {}  # (list, position) -> the recent item that explains it
        for collaborative, listed in pairs.items():
            if not listed:
                continue
            numbers, positions, ranks, anchor_rows, rows = np.array(listed, dtype=np.int64).T
            if collaborative:
                affinity = np.asarray(self.co_occurrence(anchor_rows, rows), dtype=np.float64)
            else:
                unit = self.items.unit_embeddings
                affinity = np.einsum("ij,ij->i", unit[anchor_rows], unit[rows])
            # Per item, the anchor with the largest affinity; on a tie the most recent (anchors are most recent first).
            group = numbers * (positions.max() + 1) + positions
            order = np.lexsort((ranks, -affinity, group))
            first = np.ones(len(order), dtype=bool)
            first[1:] = group[order[1:]] != group[order[:-1]]
            for number, position, rank in zip(
                numbers[order[first]].tolist(),
                positions[order[first]].tolist(),
                ranks[order[first]].tolist(),
                strict=True,
            ):
                anchor_of[(number, position)] = anchors_of[number][rank][1]
        for number, items in enumerate(lists):
            for position, item in enumerate(items):
                item.reason_code, item.reason = self._explain_one(item, anchor_of.get((number, position)))

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

    def _name(self, item_id: str) -> str:
        title = self.title_of(item_id)
        return f"“{title}”" if title else f"item {item_id}"
