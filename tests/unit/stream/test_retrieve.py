"""Stage 4 — retrieve: the query of each user, the sources the settings ask for, and their merged proposals."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.events import Event, EventType
from streamrec.stream.item_table import ItemTable
from streamrec.stream.retrieve import Retriever
from streamrec.stream.rules import Request
from streamrec.stream.settings import Settings
from streamrec.stream.sources import UserQuery
from streamrec.stream.user_state import InterestModel, UserState


class FixedSource:
    def __init__(self, name: str, rows: list[list[int]]) -> None:
        self.name, self.rows = name, rows

    def candidates(self, users: Sequence[UserQuery]) -> list[np.ndarray]:
        return [np.array(rows, dtype=np.int64) for rows in self.rows[: len(users)]]


def _query(vector_dim: int = 4) -> UserQuery:
    return UserQuery.of(np.zeros(vector_dim, dtype=np.float32), [], 10, set())


def test_proposals_are_merged_in_source_order_and_observed_per_user(artifacts: ModelArtifacts) -> None:
    items = ItemTable(artifacts, max_live_items=0)
    ann = FixedSource("ann", [[5, 3, 1], [2]])
    covisitation = FixedSource("covisitation", [[3, 7], [4]])
    seen: dict[str, dict[str, list[int]]] = {}
    retriever = Retriever([ann, covisitation], items)

    found = retriever.retrieve(
        ["u1", "u2"],
        [_query(), _query()],
        lambda user, proposed: seen.__setitem__(user, {k: v.tolist() for k, v in proposed.items()}),
    )

    assert found.source_names == ["ann", "covisitation"]
    assert [rows.tolist() for rows in found.rows] == [[5, 3, 1, 7], [2, 4]]
    # A row a collaborative source proposed too is explained by it.
    assert [codes.tolist() for codes in found.origin] == [[0, 1, 0, 1], [0, 1]]
    assert seen == {"u1": {"ann": [5, 3, 1], "covisitation": [3, 7]}, "u2": {"ann": [2], "covisitation": [4]}}


def test_the_settings_choose_the_sources_ann_first(artifacts: ModelArtifacts) -> None:
    items = ItemTable(artifacts, max_live_items=0)
    covisitation = CoVisitation(len(artifacts.item_ids))
    names = [s.name for s in Retriever.for_model(Settings(), artifacts, items, covisitation).sources]
    assert names[0] == "ann" and "covisitation" in names
    only_ann = Settings(covisitation_candidates=0, item_knn_candidates=0)
    assert [s.name for s in Retriever.for_model(only_ann, artifacts, items, covisitation).sources] == ["ann"]


def test_the_query_excludes_purchases_the_current_item_and_the_requests_own(artifacts: ModelArtifacts) -> None:
    settings = Settings()
    items = ItemTable(artifacts, max_live_items=0)
    interest = InterestModel.from_settings(settings, items.embeddings, items.row_of, artifacts.version)
    first, bought, current, on_page = artifacts.item_ids[:4]
    state = UserState("u1", deque(maxlen=settings.max_recent_items))
    for ts, (item, kind) in enumerate([(first, EventType.VIEW), (bought, EventType.BUY), (current, EventType.VIEW)]):
        interest.apply(state, Event("u1", item, kind, 1_800_000_000.0 + ts))
    trigger = Event("u1", current, EventType.VIEW, 1_800_000_002.0, context={"exclude_items": [on_page, "unknown"]})

    query = Retriever([], items).query(interest, Request.of(state, trigger))

    row_of = artifacts.row_of
    assert query.excluded == {row_of[bought], row_of[current], row_of[on_page]}
    assert query.history == (row_of[first], row_of[bought], row_of[current])
    assert query.vector is state.vector
