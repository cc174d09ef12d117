import logging
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from model.datasets import (
    BEAUTY_START_TS,
    detect_format,
    load_events,
    load_item_attributes,
    load_session_prefixes,
    load_taobao_categories,
    write_events_jsonl,
)
from model.event_log import EVENT_TYPE_CODES
from stream.events import Event, EventType

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not found beside the repo")

VIEW, CLICK, CART, BUY = (EVENT_TYPE_CODES[t] for t in ("view", "click", "cart", "buy"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- jsonl --------------------------------------------------------------------------------------------------


def test_jsonl_loads_contract_events_in_time_order(tmp_path: Path) -> None:
    lines = [
        {"user_id": "u1", "item_id": "i2", "event_type": "cart", "ts": 200.5, "session_id": "s"},
        {"user_id": 7, "item_id": 9, "event_type": "view", "ts": "1970-01-01T00:01:40Z", "event_id": "e1"},
        {"user_id": "u1", "item_id": "i2", "event_type": "buy", "ts": "1970-01-01T00:05:00", "context": {}},
    ]
    path = _write(tmp_path / "e.jsonl", "\n".join(orjson.dumps(x).decode() for x in lines) + "\n\n")
    log = load_events(path)
    assert log.user_ids.tolist() == ["7", "u1", "u1"]  # integer ids become strings
    assert log.item_ids.tolist() == ["9", "i2", "i2"]
    assert log.event_types.tolist() == [VIEW, CART, BUY]
    assert log.timestamps.tolist() == [100.0, 200.5, 300.0]  # ISO with and without zone (naive = UTC)
    assert log.event_types.dtype == np.int8 and log.timestamps.dtype == np.float64


def test_jsonl_skips_invalid_lines_and_reports_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = '{"user_id": "u", "item_id": "i", "event_type": "view", "ts": 1}'
    bad = [
        "not json",
        "[1, 2]",
        '{"item_id": "i", "event_type": "view", "ts": 1}',
        '{"user_id": "u", "item_id": "i", "event_type": "like", "ts": 1}',
        '{"user_id": "u", "item_id": "i", "event_type": "view", "ts": "yesterday"}',
        '{"user_id": true, "item_id": "i", "event_type": "view", "ts": 1}',
        '{"user_id": "u", "item_id": "i", "event_type": "view"}',
    ]
    path = _write(tmp_path / "e.jsonl", "\n".join([good, *bad, good]) + "\n")
    with caplog.at_level(logging.WARNING, logger="model.datasets"):
        log = load_events(path)
    assert len(log) == 2
    message = caplog.text
    assert "skipped 7 invalid line(s)" in message
    assert "line 2: invalid JSON" in message and "line 3: not_an_object" in message
    assert "line 4: missing_field: `user_id` is required" in message


def test_jsonl_without_any_event_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "attributes.json", '{"1": [1, 2]}\n')
    with pytest.raises(ValueError, match="no line is a valid event"):
        load_events(path)


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    events = [
        Event("u1", "i1", EventType.VIEW, 10.0, event_id="e0", session_id="s0", context={"device": "app"}),
        Event("u1", "i1", EventType.BUY, 20.0),
    ]
    path = tmp_path / "nested" / "out.jsonl"
    assert write_events_jsonl(events, path) == 2
    assert orjson.loads(path.read_bytes().splitlines()[0])["context"] == {"device": "app"}
    log = load_events(path)
    assert [(e.user_id, e.item_id, e.event_type, e.ts) for e in log.events()] == [
        ("u1", "i1", EventType.VIEW, 10.0),
        ("u1", "i1", EventType.BUY, 20.0),
    ]


# --- Beauty -------------------------------------------------------------------------------------------------


def test_beauty_lines_become_daily_purchases(tmp_path: Path) -> None:
    path = _write(tmp_path / "Beauty.txt", "1 10 11 12\n2 11 13\n")
    log = load_events(path)
    assert len(log) == 5
    assert set(log.event_types.tolist()) == {BUY}
    sequences = log.user_sequences()
    assert log.item_ids[sequences["1"]].tolist() == ["10", "11", "12"]
    assert log.timestamps[sequences["2"]].tolist() == [BEAUTY_START_TS, BEAUTY_START_TS + 86_400]
    assert np.all(np.diff(log.timestamps) >= 0)


def test_item_attributes_are_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "Beauty_item2attributes.json", '{"4": [1, 2, 3], "83": [4]}')
    assert load_item_attributes(path) == {"4": ["1", "2", "3"], "83": ["4"]}


# --- Taobao -------------------------------------------------------------------------------------------------


TAOBAO_ROWS = """\
1,100,7,pv,1511658010
1,100,7,fav,1511658020
2,200,8,cart,1511658000
1,100,7,buy,1511658030
2,300,8,like,1511658040
2,300,8,pv,soon
3,400
"""


def test_taobao_maps_behaviours_and_skips_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    with caplog.at_level(logging.WARNING, logger="model.datasets"):
        log = load_events(path)
    assert log.user_ids.tolist() == ["2", "1", "1", "1"]
    assert log.event_types.tolist() == [CART, VIEW, CLICK, BUY]
    assert log.timestamps[0] == 1511658000.0
    assert "skipped 3 invalid line(s)" in caplog.text


def test_taobao_categories(tmp_path: Path) -> None:
    path = _write(tmp_path / "UserBehavior.csv", TAOBAO_ROWS)
    assert load_taobao_categories(path) == {"100": "7", "200": "8", "300": "8"}


# --- Diginetica ---------------------------------------------------------------------------------------------


def test_diginetica_sessions_become_users_with_minute_spaced_views(tmp_path: Path) -> None:
    path = _write(tmp_path / "train_sessions.txt", "1 2\n3 4 5\n")
    log = load_events(path)
    sequences = log.user_sequences()
    assert sorted(sequences) == ["s1", "s2"]
    assert log.item_ids[sequences["s2"]].tolist() == ["3", "4", "5"]
    assert np.diff(log.timestamps[sequences["s2"]]).tolist() == [60.0, 60.0]
    assert set(log.event_types.tolist()) == {VIEW}


def test_session_prefixes(tmp_path: Path) -> None:
    path = _write(tmp_path / "test_prefixes.txt", "1 2 3\t4\n5\t6\nbroken line\n")
    assert load_session_prefixes(path) == [(["1", "2", "3"], "4"), (["5"], "6")]


# --- format detection and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("events.jsonl", "", "jsonl"),
        ("events.json", "", "jsonl"),
        ("slice.csv", "", "taobao"),
        ("Beauty.txt", "", "beauty"),
        ("Sports.txt", "1 2 3\n", "beauty"),
        ("train_sessions.txt", "1 2\n", "diginetica"),
    ],
)
def test_format_detection(tmp_path: Path, name: str, content: str, fmt: str) -> None:
    assert detect_format(_write(tmp_path / name, content)) == fmt


def test_unknown_and_missing_files_raise_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_events(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_events(_write(tmp_path / "events.parquet", "x"))
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_events(_write(tmp_path / "notes.txt", "hello world\n"))
    with pytest.raises(ValueError, match="test prefixes"):
        load_events(_write(tmp_path / "test_prefixes.txt", "1 2\t3\n"))
    with pytest.raises(ValueError, match="unknown event file format"):
        load_events(_write(tmp_path / "e.jsonl", ""), fmt="parquet")


# --- the shared data sets: documented counts ------------------------------------------------------------------


@needs_shared
def test_shared_beauty_counts() -> None:
    started = time.perf_counter()
    log = load_events(SHARED_DATA / "amazon-beauty" / "Beauty.txt")
    assert time.perf_counter() - started < 3.0
    assert len(log) == 198_502
    assert len(set(log.user_ids)) == 22_363
    assert len(set(log.item_ids)) == 12_101
    attributes = load_item_attributes(SHARED_DATA / "amazon-beauty" / "Beauty_item2attributes.json")
    assert len({a for values in attributes.values() for a in values}) == 637


@needs_shared
def test_shared_taobao_slice_counts() -> None:
    log = load_events(SHARED_DATA / "taobao" / "UserBehavior_slice.csv")
    assert len(log) == 110_300
    assert np.bincount(log.event_types, minlength=4).tolist() == [98_361, 3_383, 6_063, 2_493]
    assert len(set(log.user_ids)) == 66_454 and len(set(log.item_ids)) == 84_793
    assert len(set(load_taobao_categories(SHARED_DATA / "taobao" / "UserBehavior_slice.csv").values())) == 3_913


@needs_shared
def test_shared_taobao_head_loads_fast() -> None:
    started = time.perf_counter()
    log = load_events(SHARED_DATA / "taobao" / "UserBehavior_head.csv")
    assert time.perf_counter() - started < 3.0
    assert len(log) == 84_475
    assert np.bincount(log.event_types, minlength=4).tolist() == [75_872, 2_356, 4_497, 1_750]
    assert len(set(log.user_ids)) == 815


@needs_shared
def test_shared_diginetica_counts() -> None:
    log = load_events(SHARED_DATA / "diginetica" / "train_sessions.txt")
    assert len(set(log.user_ids)) == 186_670
    assert len(log) - 186_670 == 719_470  # every session of n items holds n - 1 next-item pairs
    prefixes = load_session_prefixes(SHARED_DATA / "diginetica" / "test_prefixes.txt")
    assert len(prefixes) == 60_858
