"""Online evaluation: do users take up what they are shown?

Every list a user is shown is kept with their state (``UserState.last_list``). The user's next event, if it comes
within ``online_eval_window_s`` of the event the list answered (event time, so replays evaluate as live traffic
does), is checked against it: was its item in the list, at which position, from which candidate source and with
which explanation. That is the offline leave-one-out protocol (next item against the top-k) measured on live
traffic, per variant. Only the first event after a list counts: later ones in the same batch were not answered
by a new list. Events a list could never hold are not evaluated: another event on the item the list answered (the
cart and the buy after a view) and a repeat purchase (bought items are never recommended).

:class:`ListStatistics` adds what a list offers beyond hits: catalogue coverage (distinct items recommended) and
intra-list diversity (mean pairwise cosine distance of the items' embeddings, on a sample of lists per batch).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from streamrec.model.events import Event
from streamrec.stream.filters import ScoredItem
from streamrec.stream.item_table import ItemTable
from streamrec.stream.metrics import ONLINE_HIT_DEPTHS, WorkerMetrics
from streamrec.stream.user_state import ShownList, UserState

#: Lists whose diversity one batch measures: enough for a steady estimate, cheap on large batches.
DIVERSITY_SAMPLE = 32


@dataclass
class OnlineTally:
    """What one batch's events said about the lists shown before them."""

    evaluated: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    hits: collections.Counter[tuple[str, str, int]] = field(default_factory=collections.Counter)
    ranks: list[tuple[str, int]] = field(default_factory=list)
    source_hits: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    reason_hits: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def record(self, metrics: WorkerMetrics) -> None:
        for (variant, event_type), count in self.evaluated.items():
            metrics.online_evaluated.labels(variant, event_type).inc(count)
        for (variant, event_type, k), count in self.hits.items():
            metrics.online_hits.labels(variant, event_type, str(k)).inc(count)
        for variant, rank in self.ranks:
            metrics.online_hit_rank.labels(variant).observe(rank)
        for (variant, source), count in self.source_hits.items():
            metrics.online_source_hits.labels(variant, source).inc(count)
        for (variant, reason), count in self.reason_hits.items():
            metrics.online_reason_hits.labels(variant, reason).inc(count)


class OnlineEvaluation:
    """Checks each user's next event against the list they were last shown; counts per batch."""

    def __init__(self, window_s: float, depths: Sequence[int] = ONLINE_HIT_DEPTHS) -> None:
        self.window_s = window_s
        self.depths = tuple(depths)
        self.tally = OnlineTally()
        # Users whose list this batch already evaluated. The list itself stays in the state until the batch
        # publishes a new one: the read path serves it meanwhile.
        self._evaluated: set[str] = set()

    def observe(self, state: UserState, event: Event) -> None:
        """Evaluate ``event`` (applied for the first time) before it moves ``state``."""
        shown = state.last_list
        if shown is None or state.user_id in self._evaluated:
            return
        if event.item_id == shown.trigger_item or event.item_id in state.bought:
            return  # the list could not hold it: not an answer to the list
        self._evaluated.add(state.user_id)
        if not 0.0 <= event.ts - shown.trigger_ts <= self.window_s:
            return
        event_type = event.event_type.value
        tally = self.tally
        tally.evaluated[shown.variant, event_type] += 1
        try:
            position = shown.item_ids.index(event.item_id)
        except ValueError:
            return
        rank = position + 1
        for k in self.depths:
            if rank <= k:
                tally.hits[shown.variant, event_type, k] += 1
        tally.ranks.append((shown.variant, rank))
        tally.source_hits[shown.variant, shown.sources[position]] += 1
        tally.reason_hits[shown.variant, shown.reasons[position]] += 1

    def take(self) -> OnlineTally:
        """The batch's tally; the next batch starts afresh. The runtime records it once the batch is delivered,
        so a batch that is fenced and processed again by another worker is counted once."""
        tally, self.tally = self.tally, OnlineTally()
        self._evaluated.clear()
        return tally


def shown_list(items: Sequence[ScoredItem], variant: str, trigger: Event) -> ShownList:
    """What the online evaluation and the read path keep of a list published in answer to ``trigger``."""
    return ShownList.of(
        [item.item_id for item in items],
        [item.source for item in items],
        [item.reason_code.partition(":")[0] for item in items],
        variant,
        trigger.ts,
        trigger.item_id,
    )


class ListStatistics:
    """Coverage and diversity of one variant's published lists, over the rows of its model's item table."""

    def __init__(self, variant: str, items: ItemTable, rng_seed: int | None = None) -> None:
        self.variant = variant
        self.items = items
        self._recommended = np.zeros(len(items), dtype=bool)
        self._rng = np.random.default_rng(rng_seed)

    def observe(self, lists: Sequence[Sequence[ScoredItem]], metrics: WorkerMetrics) -> None:
        if not lists:
            return
        row_of = self.items.row_of
        rows_per_list = [[row for item in items if (row := row_of.get(item.item_id)) is not None] for items in lists]
        if len(self._recommended) < len(self.items):  # live items joined the table
            self._recommended = np.concatenate(
                [self._recommended, np.zeros(len(self.items) - len(self._recommended), dtype=bool)]
            )
        for rows in rows_per_list:
            self._recommended[rows] = True
        covered = int(self._recommended.sum())
        metrics.items_covered.labels(self.variant).set(covered)
        metrics.catalog_coverage.labels(self.variant).set(covered / max(1, len(self.items.index)))
        sample = [rows for rows in rows_per_list if len(rows) > 1]
        if len(sample) > DIVERSITY_SAMPLE:
            picked = self._rng.choice(len(sample), DIVERSITY_SAMPLE, replace=False)
            sample = [sample[i] for i in picked]
        unit = self.items.unit_embeddings
        histogram = metrics.list_diversity.labels(self.variant)
        for rows in sample:
            histogram.observe(intra_list_diversity(unit[rows]))


def intra_list_diversity(unit_vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 − cosine) of a list's unit-length item vectors; 0 for fewer than two."""
    n = len(unit_vectors)
    if n < 2:
        return 0.0
    similarity = unit_vectors @ unit_vectors.T
    off_diagonal = float(similarity.sum() - np.trace(similarity))
    return 1.0 - off_diagonal / (n * (n - 1))
