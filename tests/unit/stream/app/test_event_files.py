"""Event files in the contract: JSONL read with the worker's validation, written for replay; any format by name."""

import logging
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamrec.model.event_log import EVENT_TYPE_CODES
from streamrec.model.events import Event, EventType
from streamrec.stream.app.event_files import load_events, write_events_jsonl

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
    with caplog.at_level(logging.WARNING, logger="streamrec.model.datasets"):
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
