"""Leave-one-out over interactions: runs of one user's events on one item."""

from __future__ import annotations

import numpy as np

from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.splits import leave_one_out

V, C, B = EventType.VIEW, EventType.CLICK, EventType.BUY


def make_log(rows: list[tuple[str, str, EventType, float]]) -> EventLog:
    return EventLog.from_events(Event(user, item, kind, ts) for user, item, kind, ts in rows)


ROW_OF = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}


def test_last_interaction_is_test_second_last_is_validation() -> None:
    # u1 interleaves with u2 in time; its funnel on "b" (view, click) is one interaction.
    log = make_log(
        [
            ("u1", "a", V, 1.0),
            ("u2", "c", V, 1.5),
            ("u1", "b", V, 2.0),
            ("u1", "b", C, 3.0),
            ("u2", "d", V, 3.5),
            ("u1", "c", V, 4.0),
            ("u1", "d", B, 5.0),
            ("u2", "e", V, 6.0),
        ]
    )
    split = leave_one_out(log, ROW_OF)
    assert split.users.tolist() == ["u1", "u2"]
    assert split.offsets.tolist() == [0, 5, 8]
    assert split.items.tolist() == [0, 1, 1, 2, 3, 2, 3, 4]
    assert split.timestamps[:5].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert split.targets("test").tolist() == [3, 4]
    assert split.targets("valid").tolist() == [2, 3]
    assert split.history(0, "test") == slice(0, 4)
    assert split.history(0, "valid") == slice(0, 3)
    # Every event of the "b" funnel predicts the next interaction ("c").
    assert split.next_item[:5].tolist() == [1, 2, 2, 3, -1]
    # Train targets stop before the validation item: a -> b is the only train transition of u1 (b -> c would
    # leak the validation target); u2 has a single train interaction and nothing to learn.
    assert split.train_targets().tolist() == [1, -1, -1, -1, -1, -1, -1, -1]
    # A refit learns every transition before the test item: b -> c (the validation item) from each "b" event.
    assert split.train_targets("test").tolist() == [1, 2, 2, -1, -1, 3, -1, -1]
    # A validation user keeps its validation item out while the others learn theirs.
    assert split.train_targets("test", validating=np.array([0])).tolist() == [1, -1, -1, -1, -1, 3, -1, -1]
    assert split.train_targets("test", validating=np.array([1])).tolist() == [1, 2, 2, -1, -1, -1, -1, -1]
    assert split.user_of.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_users_with_fewer_than_three_interactions_are_dropped() -> None:
    log = make_log(
        [
            ("short", "a", V, 1.0),
            ("short", "a", C, 2.0),  # one interaction repeated is still one
            ("short", "b", V, 3.0),
            ("long", "a", V, 1.0),
            ("long", "b", V, 2.0),
            ("long", "a", V, 3.0),  # coming back to an item is a new interaction
        ]
    )
    split = leave_one_out(log, ROW_OF)
    assert split.users.tolist() == ["long"]
    assert split.items.tolist() == [0, 1, 0]
    assert split.targets("test").tolist() == [0]
    assert split.interaction_starts().tolist() == [True, True, True]


def test_unknown_items_are_dropped_before_counting() -> None:
    log = make_log([("u", "a", V, 1.0), ("u", "zzz", V, 2.0), ("u", "b", V, 3.0), ("u", "c", V, 4.0)])
    split = leave_one_out(log, ROW_OF)
    assert split.items.tolist() == [0, 1, 2]
    assert leave_one_out(log, {"a": 0}).n_users == 0


def test_empty_log_gives_an_empty_split() -> None:
    empty = EventLog(np.array([], dtype=object), np.array([], dtype=object), np.array([], dtype=np.int8), np.array([]))
    split = leave_one_out(empty, ROW_OF)
    assert split.n_users == 0 and split.n_events == 0
    assert split.offsets.tolist() == [0]
