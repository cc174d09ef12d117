import logging
import time
from pathlib import Path

import numpy as np
import pytest

from streamrec.model.datasets import (
    BEAUTY_START_TS,
    detect_format,
    load_dataset,
    load_item_attributes,
    load_session_prefixes,
    load_taobao_categories,
)
from streamrec.model.event_log import EVENT_TYPE_CODES, EventLog
from tests.paths import SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data not found beside the repo")

VIEW, CLICK, CART, BUY = (EVENT_TYPE_CODES[t] for t in ("view", "click", "cart", "buy"))


def load_events(path: Path) -> EventLog:
    return load_dataset(path, detect_format(path))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


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
    with caplog.at_level(logging.WARNING, logger="streamrec.model.datasets"):
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
