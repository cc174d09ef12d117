"""Stage 4 — retrieve: every candidate source asked once for all warm users of a batch, their proposals merged.

The sources (``sources.py``) are chosen from the settings and the model: the ANN over the interest vector always,
co-visitation counted from the stream and the trained item-kNN where configured. Each user's query is read once
and shared by every source and the ranker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.stream.item_table import ItemTable
from streamrec.stream.rules import Request
from streamrec.stream.settings import Settings
from streamrec.stream.sources import AnnSource, CandidateSource, CoVisitationSource, ItemKnnSource, UserQuery, merge
from streamrec.stream.user_state import InterestModel

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts

#: Called with (user id, {source name: candidate rows}) for every personalised user.
CandidateObserver = Callable[[str, dict[str, np.ndarray]], None]


@dataclass(frozen=True, slots=True)
class Candidates:
    """The merged candidates of a batch's users, aligned with the queries they answer."""

    rows: list[np.ndarray]  # int64 item rows per user, the first source's order first
    origin: list[np.ndarray]  # int8 per row: the index in ``source_names`` of the source that explains it
    source_names: list[str]


class Retriever:
    """Builds each user's :class:`UserQuery` and merges what every configured source proposes for it."""

    def __init__(self, sources: Sequence[CandidateSource], items: ItemTable) -> None:
        self.sources = list(sources)
        self.items = items

    @classmethod
    def for_model(
        cls, settings: Settings, artifacts: ModelArtifacts, items: ItemTable, covisitation: CoVisitation
    ) -> Retriever:
        """The sources the settings and the model ask for, the ANN first (it leads the merge)."""
        sources: list[CandidateSource] = [AnnSource(items, settings.n_candidates)]
        if settings.covisitation_candidates:
            sources.append(CoVisitationSource(covisitation, settings.covisitation_candidates))
        if artifacts.item_knn is not None and artifacts.blend_weight > 0 and settings.item_knn_candidates:
            sources.append(ItemKnnSource(artifacts.item_knn, settings.item_knn_candidates))
        return cls(sources, items)

    def query(self, interest: InterestModel, request: Request) -> UserQuery:
        """One user's query. The known-item history (oldest first) is read once for every source and the ranker,
        which, like the item-kNN, knows only the trained rows; live items enter them as candidates."""
        row_of = self.items.row_of
        excluded = [*request.state.bought, request.trigger.item_id, *request.exclude_items]
        excluded_rows = {row for item in excluded if (row := row_of.get(item)) is not None}
        history = interest.history_rows(request.state)
        return UserQuery.of(request.state.vector, history, self.items.n_trained, excluded_rows)

    def retrieve(
        self, user_ids: Sequence[str], users: Sequence[UserQuery], observer: CandidateObserver | None = None
    ) -> Candidates:
        """The merged candidates of ``users``; ``observer`` (evaluation's) sees what each source proposed."""
        proposed = {source.name: source.candidates(users) for source in self.sources}
        if observer is not None:
            for i, user_id in enumerate(user_ids):
                observer(user_id, {name: rows[i] for name, rows in proposed.items()})
        rows, origin = merge(proposed)
        return Candidates(rows, origin, list(proposed))
