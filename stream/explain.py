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
COLLABORATIVE, SIMILAR = 1, 2
#: How an item of each personal source is anchored: by co-occurrence or by embedding similarity.
_ANCHOR_KIND = {**dict.fromkeys(COLLABORATIVE_SOURCES, COLLABORATIVE), "ann": SIMILAR}
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
        anchors_of = [self._anchors(recent) for recent in recents]
        flat = [item for items in lists for item in items]
        # Which anchor each item points to, weighed over every (item, anchor) pair of the batch at once.
        kinds = np.array(
            [0 if item.explore or item.row < 0 else _ANCHOR_KIND.get(item.source, 0) for item in flat],
            dtype=np.int64,
        )
        anchor_of: list[RecentItem | None] = [None] * len(flat)
        if kinds.any():
            n_anchors = np.array([len(anchors) for anchors in anchors_of], dtype=np.int64)
            list_of = np.repeat(np.arange(len(lists)), [len(items) for items in lists])
            anchor_rows = np.array([row for anchors in anchors_of for row, _ in anchors], dtype=np.int64)
            anchor_start = np.cumsum(n_anchors) - n_anchors
            item_rows = np.array([item.row for item in flat], dtype=np.int64)
            wanting = np.flatnonzero((kinds > 0) & (n_anchors[list_of] > 0))
            counts = n_anchors[list_of[wanting]]
            pair_item = np.repeat(wanting, counts)
            rank = np.arange(len(pair_item)) - np.repeat(np.cumsum(counts) - counts, counts)
            pair_anchor = anchor_start[list_of[pair_item]] + rank
            keep = anchor_rows[pair_anchor] != item_rows[pair_item]  # never the item itself
            pair_item, rank, pair_anchor = pair_item[keep], rank[keep], pair_anchor[keep]
            affinity = np.zeros(len(pair_item))
            collaborative = kinds[pair_item] == COLLABORATIVE
            if collaborative.any():
                affinity[collaborative] = self.co_occurrence(
                    anchor_rows[pair_anchor[collaborative]], item_rows[pair_item[collaborative]]
                )
            if not collaborative.all():
                similar = ~collaborative
                unit = self.items.unit_embeddings
                affinity[similar] = np.einsum(
                    "ij,ij->i", unit[anchor_rows[pair_anchor[similar]]], unit[item_rows[pair_item[similar]]]
                )
            # Per item, the anchor with the largest affinity; on a tie the most recent (anchors are most recent
            # first).
            order = np.lexsort((rank, -affinity, pair_item))
            first = np.ones(len(order), dtype=bool)
            first[1:] = pair_item[order[1:]] != pair_item[order[:-1]]
            recent_anchors = [entry for anchors in anchors_of for _, entry in anchors]
            for item, anchor in zip(pair_item[order[first]].tolist(), pair_anchor[order[first]].tolist(), strict=True):
                anchor_of[item] = recent_anchors[anchor]
        for item, anchor in zip(flat, anchor_of, strict=True):
            item.reason_code, item.reason = self._explain_one(item, anchor)

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
