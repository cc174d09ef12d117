"""Stage 3 — update user state: apply a batch's accepted events and commands to the users' states, in order.

Each user's interest vector, recent items and purchases move with their events (``user_state.py``); an event seen
before (redelivered after a crash) is answered again but never counted twice. Events applied for the first time
also feed the stream's aggregates, which hold no user id: co-visitation (of every model served, whatever the user's
variant), exploration exposure and trending; and, before it moves the user's state, the online evaluation checks
the event against the list the user was last shown. A ``forget`` command erases the user's state; their earlier
events in the batch are not answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streamrec.index.covisitation import CoVisitation
from streamrec.model.events import Event
from streamrec.model.segments import Segments
from streamrec.stream.aggregates import AggregateDeltas
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.explore import ExposureStats
from streamrec.stream.online_eval import OnlineEvaluation
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
    variant: str = "default"
    segment: int | None = None


class UserModel(Protocol):
    """What updating a user's state needs of the model that serves them (``serving.ServedModel``)."""

    interest: InterestModel
    segments: Segments | None

    @property
    def counted_covisitation(self) -> CoVisitation | None:
        """The co-visitation the stream feeds; None when no variant serving the model reads it."""


class StateUpdater:
    """Applies batches to the users' states, each with the model of the user's variant, and feeds the stream's
    aggregates, which outlive every model."""

    def __init__(
        self,
        store: UserStateStore,
        models: Mapping[str, UserModel],
        assign: Callable[[str], str],
        exposure: ExposureStats,
        trending: TrendingBoard,
        category_of: Callable[[str], str | None],
        event_weights: Mapping[str, float],
        deltas: AggregateDeltas | None = None,
        online: OnlineEvaluation | None = None,
    ) -> None:
        """``models`` maps each variant to its model and is read live (a swap replaces an entry); ``assign`` names
        a user's variant. ``deltas``, where given, records what this worker's events add to the aggregates, to
        share them; ``online``, where given, evaluates each user's next event against their last list."""
        self.store, self.models, self.assign = store, models, assign
        self.deltas, self.online = deltas, online
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
        # Each model counts co-visitation in its own rows, from every user's events.
        covisited = {id(c): (m.interest, c) for m in self.models.values() if (c := m.counted_covisitation) is not None}
        for record, event in accepted:
            if isinstance(event, Command):
                # The only command is `forget`: the user's state goes, and their events earlier in the batch are
                # not answered. Aggregates they fed (trending, co-visitation, exposure) hold no user id.
                self.store.remove(record.partition, event.user_id)
                triggers.pop(event.user_id, None)
                forgotten[event.user_id] = record.partition
                log.info("forgot user %r (request %s)", event.user_id, event.request_id)
                continue
            variant = self.assign(event.user_id)
            interest = self.models[variant].interest
            state = self.store.get(record.partition, event.user_id)
            if state is None:
                state = interest.new_state(event.user_id)
                self.store.put(record.partition, state)
            if not state.already_applied(record.partition, record.offset):
                if self.online is not None:
                    self.online.observe(state, event)
                self._covisit(list(covisited.values()), state, event)
                if state.record_engaged(event.item_id):
                    self.exposure.engaged(event.item_id)
                    if self.deltas is not None:
                        self.deltas.engaged[event.item_id] += 1
                interest.apply(state, event)
                state.last_partition, state.last_offset = record.partition, record.offset
                state.updated_at = now
                self.store.touch(record.partition, event.user_id)
                applied.append(event)
            # A user's later events in the batch supersede earlier ones: one recommendation per user per batch.
            triggers.pop(event.user_id, None)
            triggers[event.user_id] = Trigger(record.partition, event, record.received_at, state, variant)
        self._assign_segments(list(triggers.values()))
        for event in applied:
            # Counted in the segment of the user as of the batch's end (one assignment per user and batch).
            weight, category = self.event_weights[event.event_type.value], self.category_of(event.item_id)
            segment = triggers[event.user_id].segment if event.user_id in triggers else None
            self.trending.add(event.item_id, weight, event.ts, category, segment)
            if self.deltas is not None:
                self.deltas.count(event.item_id, weight, event.ts, category, segment)
        return triggers, forgotten

    def _covisit(self, covisited: list[tuple[InterestModel, CoVisitation]], state: UserState, event: Event) -> None:
        """Count the event's item as visited after the user's latest items, in every model's co-visitation."""
        shared = self.deltas is None
        for interest, covisitation in covisited:
            row = interest.row_of.get(event.item_id)
            if row is None:
                continue
            preceding = interest.latest_known(state, covisitation.window)
            covisitation.add([row for _, row in preceding], row)
            if not shared and self.deltas is not None:  # once per event, in the first model that knows the item
                self.deltas.covisit([item for item, _ in preceding], event.item_id)
                shared = True

    def _assign_segments(self, triggers: list[Trigger]) -> None:
        """Each warm user's segment, in the segments of their variant's model (one call per model)."""
        by_variant: dict[str, list[Trigger]] = {}
        for trigger in triggers:
            if trigger.state.vector is not None:
                by_variant.setdefault(trigger.variant, []).append(trigger)
        for variant, warm in by_variant.items():
            segments = self.models[variant].segments
            if segments is None:
                continue
            assigned = segments.assign_users(np.stack([t.state.vector for t in warm]))
            for trigger, segment in zip(warm, assigned.tolist(), strict=True):
                trigger.segment = segment
