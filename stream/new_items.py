"""Learn new items: a live item's row moves from its text toward what its shoppers say, as their events arrive.

An item added live from the catalog starts at its content row (``catalog_sync.py``). Each event on it by a user the
ranker knows adds that user's ranker state to the item's running sum: the state of the user's trained history, which
a live item is not part of, so the state the user was in when they picked the item. When the item's count reaches
1, 2, 4, 8, ... events, up to ``new_item_learning_events``, its row is embedded again (``model/shoppers.py``: the
model's map from shoppers' mean state to a row, fitted at training on the trained items, blended with the content
row ``new_item_shopper_prior : count``) as a new row, the old one tombstoned, since an HNSW index cannot change a
vector in place. A row moves at most log2(limit) + 1 times before the next training learns the item; each move takes
one of the ``max_live_items`` rows. ``streamrec eval --catalog`` measures the same rule offline (the
``content+shoppers`` placement of ``model/cold_items.py``). Versions trained without a catalogue hold no map, and
their live items keep their content rows.

The sums live with the served model's item table: a model swap starts them afresh, with the new model's states.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamrec.model.shoppers import ShopperProjection, learned_rows
from streamrec.stream.item_table import ItemTable


class NewItemLearner:
    """The shoppers' states of one served model's live items, and the rows they move those items to."""

    def __init__(
        self, items: ItemTable, projection: ShopperProjection | None, prior: float, learning_events: int
    ) -> None:
        self.items, self.projection, self.prior = items, projection, prior
        # Without the model's map there is nothing to move a row to.
        self.learning_events = learning_events if projection is not None else 0
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._due: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether any event could teach a row: learning is on and the table holds live items."""
        return self.learning_events > 0 and self.items.n_live > 0

    def learns(self, item_id: str) -> bool:
        """Whether an event on ``item_id`` would teach its row anything: a live item still short of the limit."""
        row = self.items.row_of.get(item_id)
        return row is not None and row >= self.items.n_trained and self._counts.get(item_id, 0) < self.learning_events

    def observe(self, item_ids: Sequence[str], states: np.ndarray) -> None:
        """Events on ``item_ids`` by users whose ranker states are the rows of ``states``."""
        for item_id, state in zip(item_ids, states, strict=True):
            if not self.learns(item_id) or not np.all(np.isfinite(state)):
                continue
            count = self._counts.get(item_id, 0) + 1
            self._counts[item_id] = count
            self._sums[item_id] = self._sums.get(item_id, 0.0) + state.astype(np.float64)
            if count & (count - 1) == 0 or count == self.learning_events:  # 1, 2, 4, 8, ... and the last
                self._due.add(item_id)

    @property
    def due(self) -> bool:
        """Whether some item reached its next step since the last :meth:`refresh`."""
        return bool(self._due)

    def refresh(self) -> int:
        """Move every item whose count reached its next step to its learned row; how many moved."""
        moved = 0
        for item_id in sorted(self._due):
            content = self.items.content_of.get(item_id)
            if content is None or self.projection is None:
                continue
            sums, counts = self._sums[item_id][None, :], np.array([float(self._counts[item_id])])
            row = learned_rows(content[None, :], self.projection.project(sums, counts), counts, self.prior)[0]
            moved += self.items.move(item_id, row) is not None
        self._due.clear()
        return moved

    def events_of(self, item_id: str) -> int:
        """Shoppers learned from so far on ``item_id`` (a funnel on it counts once)."""
        return self._counts.get(item_id, 0)
