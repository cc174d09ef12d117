import base64
from collections import deque

import numpy as np
import orjson
import pytest

from streamrec.model.events import Event, EventType
from streamrec.stream.user_state import (
    InterestModel,
    StateRecordError,
    UserState,
    UserStateStore,
    decode_state,
    encode_state,
)

EMBEDDINGS = np.eye(4, dtype=np.float32)  # four orthogonal items: each vector component is one item's weight
WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "buy": 8.0}
DAY = 86_400.0


def model(**overrides) -> InterestModel:
    params = dict(
        embeddings=EMBEDDINGS,
        row_of={"a": 0, "b": 1, "c": 2, "d": 3},
        event_weights=WEIGHTS,
        half_life_s=DAY,
        max_recent_items=3,
        max_bought_items=2,
        model_version="v1",
    )
    params.update(overrides)
    return InterestModel(**params)


def ev(item: str, kind: str, ts: float) -> Event:
    return Event(user_id="u", item_id=item, event_type=EventType(kind), ts=ts)


def test_stronger_events_count_more_and_old_interest_decays() -> None:
    interest = model()
    state = interest.new_state("u")
    interest.apply(state, ev("a", "view", 0.0))
    interest.apply(state, ev("b", "buy", 2 * DAY))
    assert state.vector is not None
    np.testing.assert_allclose(state.vector, [0.25, 8.0, 0.0, 0.0])  # two half-lives later the view is a quarter
    assert state.vector_ts == 2 * DAY


def test_late_event_is_decayed_instead_of_rewinding_the_vector() -> None:
    interest = model()
    state = interest.new_state("u")
    interest.apply(state, ev("a", "click", DAY))
    interest.apply(state, ev("b", "click", 0.0))  # arrives late, happened a day earlier
    np.testing.assert_allclose(state.vector, [2.0, 1.0, 0.0, 0.0])
    assert state.vector_ts == DAY


def test_unknown_items_enter_sequence_and_purchases_but_not_the_vector() -> None:
    interest = model()
    state = interest.new_state("u")
    interest.apply(state, ev("new-item", "buy", 0.0))
    assert state.is_cold and state.vector is None
    assert [r.item_id for r in state.recent] == ["new-item"]
    assert "new-item" in state.bought
    interest.apply(state, ev("c", "view", 1.0))
    assert not state.is_cold
    assert interest.history_rows(state) == [2]


def test_sequence_and_purchases_are_bounded_most_recent_kept() -> None:
    interest = model()
    state = interest.new_state("u")
    for ts, item in enumerate(["a", "b", "c", "d"]):
        interest.apply(state, ev(item, "buy", float(ts)))
    assert [r.item_id for r in state.recent] == ["b", "c", "d"]
    assert list(state.bought) == ["c", "d"]
    assert state.n_events == 4


def test_new_model_version_rebuilds_vector_from_recent_sequence() -> None:
    old = model()
    state = old.new_state("u")
    old.apply(state, ev("a", "view", 0.0))
    swapped_embeddings = np.eye(4, dtype=np.float32)[::-1].copy()  # item a now points along the last axis
    new = model(embeddings=swapped_embeddings, model_version="v2")
    new.apply(state, ev("b", "view", 0.0))
    assert state.model_version == "v2"
    np.testing.assert_allclose(state.vector, [0.0, 0.0, 1.0, 1.0])


def test_state_roundtrips_through_the_changelog_encoding() -> None:
    interest = model()
    state = interest.new_state("u")
    interest.apply(state, ev("a", "cart", 5.0))
    interest.apply(state, ev("x", "buy", 6.0))
    state.last_partition, state.last_offset = 3, 41
    state.record_shown(["b", "c"])
    state.updated_at = 1_795_430_000.5
    restored = decode_state(encode_state(state), max_recent_items=3)
    assert restored.user_id == "u"
    np.testing.assert_array_equal(restored.vector, state.vector)
    assert [(r.item_id, r.event_type, r.ts) for r in restored.recent] == [("a", "cart", 5.0), ("x", "buy", 6.0)]
    assert list(restored.bought) == ["x"]
    assert (restored.vector_ts, restored.model_version, restored.n_events) == (5.0, "v1", 2)
    assert restored.already_applied(3, 41) and not restored.already_applied(3, 42)
    assert not restored.already_applied(2, 41)
    assert restored.recent.maxlen == 3
    assert restored.shown == {"b": 1, "c": 1} and restored.updated_at == 1_795_430_000.5


def test_decode_state_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        decode_state(b'{"format": 99}', 3)


def _valid_record() -> dict:
    interest = model()
    state = interest.new_state("u")
    interest.apply(state, ev("a", "cart", 5.0))
    return orjson.loads(encode_state(state))


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",  # found in a production-like changelog: made the whole restore raise
        b"null",
        b"42",
        b"not json at all",
        b"{}",
        b'{"format": 2}',
        b"\xff\xfe",
    ],
)
def test_a_malformed_state_record_raises_one_error_type(payload: bytes) -> None:
    with pytest.raises(StateRecordError):
        decode_state(payload, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", 7),
        ("user_id", ""),
        ("vector", "***not base64***"),
        ("vector", base64.b64encode(np.array([np.nan, 1.0], dtype="<f4").tobytes()).decode()),
        ("vector", ""),
        ("recent", [["a", "view"]]),
        ("recent", [["a", "view", "yesterday"]]),
        ("recent", "a,b"),
        ("bought", [1, 2]),
        ("n_events", "3"),
        ("last_offset", 1.5),
        ("shown", ["a"]),
        ("vector_ts", float("inf")),
        ("model_version", 3),
    ],
)
def test_a_state_record_with_a_bad_field_is_refused(field: str, value: object) -> None:
    record = _valid_record()
    record[field] = value
    with pytest.raises(StateRecordError):
        decode_state(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY), 3)


def test_states_written_before_updated_at_still_read() -> None:
    record = _valid_record()
    record["format"] = 1
    del record["updated_at"]
    state = decode_state(orjson.dumps(record), 3)
    assert state.updated_at == 0.0 and [r.item_id for r in state.recent] == ["a"]


def test_store_removes_one_user() -> None:
    interest = model()
    store = UserStateStore()
    store.put(0, interest.new_state("u0"))
    assert store.remove(0, "u0") is True
    assert store.remove(0, "u0") is False and store.get(0, "u0") is None


def test_store_groups_users_by_partition() -> None:
    interest = model()
    store = UserStateStore()
    store.put(0, interest.new_state("u0"))
    store.put(1, interest.new_state("u1"))
    store.put(1, interest.new_state("u2"))
    assert len(store) == 3 and store.partitions() == [0, 1]
    assert store.drop_partition(1) == 2
    assert store.get(1, "u1") is None and store.get(0, "u0") is not None


def test_the_store_evicts_only_the_users_updated_before_the_cut_whatever_their_insertion_order() -> None:
    store = UserStateStore()
    for partition, user, updated in [(0, "a", 10.0), (0, "b", 20.0), (1, "c", 5.0), (0, "d", 30.0)]:
        state = UserState(user, deque())
        state.updated_at = updated
        store.put(partition, state)
    # "a" is updated again: it becomes partition 0's most recent, behind "b" and "d".
    store.get(0, "a").updated_at = 40.0
    store.touch(0, "a")

    assert store.evict_idle(25.0, limit=1) == {"b": 0}  # a bounded sweep leaves the rest for the next one
    assert store.evict_idle(25.0) == {"c": 1}
    assert sorted((p, u) for p in store.partitions() for u in ("a", "b", "c", "d") if store.get(p, u)) == [
        (0, "a"),
        (0, "d"),
    ]
    assert store.evict_idle(25.0) == {}
