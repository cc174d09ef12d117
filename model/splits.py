"""Leave-one-out split of an event log, per user, over *interactions*.

An interaction is a maximal run of consecutive events of one user on one item: a view → click → cart → buy
funnel on the same product is one interaction, because the thing to predict is the *next item*, and the
worker never recommends the item the user is on anyway. The split holds the raw events, though, not just the
interactions: the worker's ranker input and interest vector are built from every event (repeats and event
types included), so training and evaluation must see the same.

Per user (users with fewer than 3 interactions are dropped):

* test: the last interaction — its item is the target, every event before it is the history;
* validation: the second-last interaction, with the events before it as history;
* train: the events before the validation interaction. Each train event's target is the item of the next
  interaction, as long as that interaction is itself in the train part (the validation item is never a
  training target).

Events are stored once, concatenated user after user (CSR layout with ``offsets``), so the split of a
multi-million-event log costs a few flat arrays rather than millions of small objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamrec.model.event_log import EventLog

Stage = Literal["valid", "test"]
MIN_INTERACTIONS = 3


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Every kept user's events in time order, with the positions of the validation and test interactions.

    Arrays of length ``n_events`` are indexed by *event position*; arrays of length ``n_users`` by user.
    """

    users: np.ndarray  # object [U]: user ids
    offsets: np.ndarray  # int64 [U + 1]: events of user u are positions offsets[u]:offsets[u + 1]
    items: np.ndarray  # int64 [N]: item rows
    event_types: np.ndarray  # int8 [N]: codes into streamrec.model.events.EVENT_TYPES
    timestamps: np.ndarray  # float64 [N]: event time, non-decreasing within a user
    next_item: np.ndarray  # int64 [N]: item row of the next interaction, -1 within the last one
    next_start: np.ndarray  # int64 [N]: position where the next interaction starts (user end in the last)
    valid_start: np.ndarray  # int64 [U]: position of the first event of the validation interaction
    test_start: np.ndarray  # int64 [U]: position of the first event of the test interaction

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def user_of(self) -> np.ndarray:
        """int64 [N]: the user index of each event position."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.offsets))

    def train_targets(self, before: Stage = "valid", validating: np.ndarray | None = None) -> np.ndarray:
        """int64 [N]: each event's target item row when the target comes before the ``before`` stage's
        interaction, -1 for events that have none.

        With ``before="valid"`` (training) validation and test events, and the last train interaction (whose next
        item is the validation target), get -1; with ``before="test"`` (a refit) the validation item is a target too,
        except for the users ``validating`` (indices), whose validation item stays held out.
        """
        ends = self.history_end(before)
        if validating is not None:
            ends = ends.copy()
            ends[validating] = self.valid_start[validating]
        user_end = np.repeat(ends, np.diff(self.offsets))
        trainable = self.next_start < user_end
        return np.where(trainable, self.next_item, -1)

    def history_end(self, stage: Stage) -> np.ndarray:
        """int64 [U]: exclusive end position of each user's history for ``stage`` (it starts at ``offsets``)."""
        if stage == "valid":
            return self.valid_start
        if stage == "test":
            return self.test_start
        raise ValueError(f"unknown stage {stage!r}")

    def targets(self, stage: Stage) -> np.ndarray:
        """int64 [U]: each user's held-out item row for ``stage``."""
        return self.items[self.history_end(stage)]

    def history(self, user: int, stage: Stage) -> slice:
        """Event positions of ``user``'s history before the ``stage`` target."""
        return slice(int(self.offsets[user]), int(self.history_end(stage)[user]))

    def interaction_starts(self) -> np.ndarray:
        """bool [N]: whether each event opens an interaction (differs in item from the user's previous one)."""
        starts = np.ones(self.n_events, dtype=bool)
        starts[1:] = self.items[1:] != self.items[:-1]
        starts[self.offsets[:-1]] = True
        return starts


def leave_one_out(log: EventLog, row_of: Mapping[str, int]) -> LeaveOneOutSplit:
    """Split ``log`` per user; events on items missing from ``row_of`` (the model's vocabulary) are dropped."""
    rows = np.fromiter((row_of.get(item, -1) for item in log.item_ids), dtype=np.int64, count=len(log))
    known = rows >= 0
    user_codes_all = _user_codes(log.user_ids)
    # Stable sort by user keeps each user's events in the log's (time) order.
    order = np.flatnonzero(known)
    order = order[np.argsort(user_codes_all[order], kind="stable")]
    user_codes = user_codes_all[order]
    items = rows[order]
    n = len(order)

    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user_codes[1:] != user_codes[:-1]
    new_interaction = new_user.copy()
    new_interaction[1:] |= items[1:] != items[:-1]

    # Count interactions per user and keep users with enough of them.
    user_start = np.flatnonzero(new_user)
    interactions_per_user = np.add.reduceat(new_interaction.astype(np.int64), user_start) if n else user_start
    keep_user = interactions_per_user >= MIN_INTERACTIONS
    keep_event = np.repeat(keep_user, np.diff(np.append(user_start, n)))

    order, items = order[keep_event], items[keep_event]
    new_user, new_interaction = new_user[keep_event], new_interaction[keep_event]
    n = len(order)
    offsets = np.append(np.flatnonzero(new_user), n).astype(np.int64)

    # For every event: where the next interaction starts, and its item (-1 past the user's last one).
    interaction_start = np.flatnonzero(new_interaction)
    interaction_of = np.cumsum(new_interaction) - 1
    following = np.append(interaction_start[1:], n)  # start of the interaction after each interaction
    next_start = following[interaction_of]
    user_end = np.repeat(offsets[1:], np.diff(offsets))
    in_same_user = next_start < user_end
    next_start = np.where(in_same_user, next_start, user_end)
    next_item = np.where(in_same_user, items[np.minimum(next_start, n - 1)] if n else next_start, -1)

    # The last and second-last interaction starts of each user.
    user_of_interaction = np.searchsorted(offsets, interaction_start, side="right") - 1
    last_of_user = np.append(np.flatnonzero(np.diff(user_of_interaction)), len(interaction_start) - 1)
    test_start = interaction_start[last_of_user] if n else np.empty(0, dtype=np.int64)
    valid_start = interaction_start[last_of_user - 1] if n else np.empty(0, dtype=np.int64)

    return LeaveOneOutSplit(
        users=np.asarray(log.user_ids[order[offsets[:-1]]], dtype=object),
        offsets=offsets,
        items=items.astype(np.int64),
        event_types=log.event_types[order].astype(np.int8),
        timestamps=log.timestamps[order].astype(np.float64),
        next_item=next_item.astype(np.int64),
        next_start=next_start.astype(np.int64),
        valid_start=valid_start.astype(np.int64),
        test_start=test_start.astype(np.int64),
    )


def _user_codes(user_ids: np.ndarray) -> np.ndarray:
    """Dense integer codes of the user ids (sorting integers is far cheaper than sorting Python strings)."""
    codes: dict[object, int] = {}
    return np.fromiter((codes.setdefault(u, len(codes)) for u in user_ids), dtype=np.int64, count=len(user_ids))
