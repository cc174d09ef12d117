"""Stage 3 — update user state: apply a batch's accepted events and commands to the users' states, in order.

Each user's interest vector, recent items and purchases move with their events (``user_state.py``); an event seen
before (redelivered after a crash) is answered again but never counted twice. Events applied for the first time
also feed the stream's aggregates, which hold no user id: co-visitation, exploration exposure and trending. A
``forget`` command erases the user's state; their earlier events in the batch are not answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.events import Event
from streamrec.model.segments import Segments
from streamrec.stream.aggregates import AggregateDeltas
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.explore import ExposureStats
from streamrec.stream.trending import TrendingBoard
from streamrec.stream.user_state import InterestModel, UserState, UserStateStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Trigger:
    """The latest event of a user in the batch: the one their recommendation answers."""

    partition: int
    event: Event
    received_at: float
    state: UserState
    segment: int | None = None


class StateUpdater:
    """Applies batches to the users' states; built for each served model (the interest model, co-visitation and
    segments are the model's), holding the stream's aggregates that outlive it."""

    def __init__(
        self,
        store: UserStateStore,
        interest: InterestModel,
        covisitation: CoVisitation | None,
        segments: Segments | None,
        exposure: ExposureStats,
        trending: TrendingBoard,
        category_of: Callable[[str], str | None],
        event_weights: Mapping[str, float],
        deltas: AggregateDeltas | None = None,
    ) -> None:
        """``deltas``, where given, records what this worker's events add to the aggregates, to share them."""
        self.store, self.interest, self.covisitation, self.segments = store, interest, covisitation, segments
        self.deltas = deltas
        self.exposure, self.trending, self.category_of, self.event_weights = (
            exposure,
            trending,
            category_of,
            event_weights,
        )

    def apply(
        self, accepted: Sequence[tuple[SourceRecord, Event | Command]], now: float
    ) -> tuple[dict[str, Trigger], dict[str, int]]:
        """Apply the batch in order; returns the users to answer (their latest event) and, for every user a
        command erased, the partition of their state."""
        triggers: dict[str, Trigger] = {}
        forgotten: dict[str, int] = {}
        applied: list[Event] = []
        for record, event in accepted:
            if isinstance(event, Command):
                # The only command is `forget`: the user's state goes, and their events earlier in the batch are
                # not answered. Aggregates they fed (trending, co-visitation, exposure) hold no user id.
                self.store.remove(record.partition, event.user_id)
                triggers.pop(event.user_id, None)
                forgotten[event.user_id] = record.partition
                log.info("forgot user %r (request %s)", event.user_id, event.request_id)
                continue
            state = self.store.get(record.partition, event.user_id)
            if state is None:
                state = self.interest.new_state(event.user_id)
                self.store.put(record.partition, state)
            if not state.already_applied(record.partition, record.offset):
                row = self.interest.row_of.get(event.item_id)
                if row is not None and self.covisitation is not None:
                    preceding = self.interest.latest_known(state, self.covisitation.window)
                    self.covisitation.add([row for _, row in preceding], row)
                    if self.deltas is not None:
                        self.deltas.covisit([item for item, _ in preceding], event.item_id)
                if state.record_engaged(event.item_id):
                    self.exposure.engaged(event.item_id)
                    if self.deltas is not None:
                        self.deltas.engaged[event.item_id] += 1
                self.interest.apply(state, event)
                state.last_partition, state.last_offset = record.partition, record.offset
                state.updated_at = now
                self.store.touch(record.partition, event.user_id)
                applied.append(event)
            # A user's later events in the batch supersede earlier ones: one recommendation per user per batch.
            triggers.pop(event.user_id, None)
            triggers[event.user_id] = Trigger(record.partition, event, record.received_at, state)
        self._assign_segments(list(triggers.values()))
        for event in applied:
            # Counted in the segment of the user as of the batch's end (one assignment per user and batch).
            weight, category = self.event_weights[event.event_type.value], self.category_of(event.item_id)
            segment = triggers[event.user_id].segment if event.user_id in triggers else None
            self.trending.add(event.item_id, weight, event.ts, category, segment)
            if self.deltas is not None:
                self.deltas.count(event.item_id, weight, event.ts, category, segment)
        return triggers, forgotten

    def _assign_segments(self, triggers: list[Trigger]) -> None:
        warm = [t for t in triggers if t.state.vector is not None]
        if self.segments is None or not warm:
            return
        assigned = self.segments.assign_users(np.stack([t.state.vector for t in warm]))
        for trigger, segment in zip(warm, assigned.tolist(), strict=True):
            trigger.segment = segment
