"""What every contract test reads: the shared trained model, an item-kNN fit on its shop, and a batch of users."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.baselines import ItemKNNModel
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event
from streamrec.model.splits import leave_one_out
from streamrec.stream.sources import UserQuery


@pytest.fixture(scope="module")
def item_knn(shop: tuple[list[Event], list[dict]], artifacts: ModelArtifacts) -> ItemKNNModel:
    # With transitions, as training serves it where shoppers move in an order: the similarity is directed.
    split = leave_one_out(EventLog.from_events(shop[0]), artifacts.row_of)
    return ItemKNNModel.fit(split, len(artifacts.item_ids), max_neighbors=50, transition_weight=2.0)


@pytest.fixture(scope="module")
def histories(shop: tuple[list[Event], list[dict]], artifacts: ModelArtifacts) -> list[list[int]]:
    """Known-item rows of each simulated shopper, oldest first."""
    by_user: dict[str, list[int]] = {}
    for event in sorted(shop[0], key=lambda e: e.ts):
        row = artifacts.row_of.get(event.item_id)
        if row is not None:
            by_user.setdefault(event.user_id, []).append(row)
    return list(by_user.values())


@pytest.fixture(scope="module")
def users(histories: list[list[int]], artifacts: ModelArtifacts) -> list[UserQuery]:
    """Twelve users: their latest items, an interest vector near them, their last item and one more excluded; the
    last user has a history of one item, so a source may have little or nothing for them."""
    embeddings = artifacts.item_embeddings
    chosen = [*[h[-12:] for h in histories if len(h) >= 4][:11], histories[0][-1:]]
    return [
        UserQuery.of(
            embeddings[history].mean(axis=0).astype(np.float32),
            history,
            len(artifacts.item_ids),
            {history[-1], (history[0] + 7) % len(artifacts.item_ids)},
        )
        for history in chosen
    ]
