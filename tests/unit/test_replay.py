from pathlib import Path

import orjson
import pytest

from stream.replay import is_retimable, open_messages, pacing_delay, prepare_message

MIN_TS = 946_684_800.0
NOW = 1_800_000_000.0


def test_retime_sets_ts_to_now_and_keys_by_user() -> None:
    key, value = prepare_message(b'{"user_id": 42, "ts": 1511658000, "x": [1]}', True, NOW, MIN_TS)
    assert key == b"42"
    assert orjson.loads(value) == {"user_id": 42, "ts": NOW, "x": [1]}


def test_without_retime_the_line_is_sent_unchanged() -> None:
    line = b'{"user_id": "u1",  "ts": 1511658000}'
    assert prepare_message(line, False, NOW, MIN_TS) == (b"u1", line)


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'{"ts": 1511658000}', b'{"user_id": null}', b'{"user_id": true, "ts": 1}'],
)
def test_lines_without_a_usable_user_have_no_key(line: bytes) -> None:
    key, _value = prepare_message(line, True, NOW, MIN_TS)
    assert key is None


@pytest.mark.parametrize("ts", [0, -5, "yesterday", None, True, [1], "1999-12-31T00:00:00Z"])
def test_bad_timestamps_stay_bad_so_they_reach_the_dead_letters(ts: object) -> None:
    assert not is_retimable(ts, MIN_TS)
    line = orjson.dumps({"user_id": "u", "ts": ts})
    assert prepare_message(line, True, NOW, MIN_TS) == (b"u", line)


@pytest.mark.parametrize("ts", [1511658000, 1511658000.5, "2017-11-26T01:00:00Z", "2017-11-26T01:00:00"])
def test_plausible_timestamps_are_retimable(ts: object) -> None:
    assert is_retimable(ts, MIN_TS)


def test_pacing_keeps_an_absolute_schedule() -> None:
    assert pacing_delay(1_000, None, 0.0) == 0.0
    assert pacing_delay(100, 100.0, 0.5) == pytest.approx(0.5)  # ahead of schedule: wait
    assert pacing_delay(100, 100.0, 2.0) == 0.0  # behind: catch up without sleeping
    assert pacing_delay(1, 100_000.0, 0.0) == 0.0  # less than the minimum sleep: batch it up


def test_jsonl_lines_are_sent_raw_and_other_formats_converted(tmp_path: Path) -> None:
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_bytes(b'{"user_id": "u"}\r\n\nbroken\n')
    messages, total = open_messages(jsonl)
    assert list(messages) == [b'{"user_id": "u"}', b"broken"]
    assert total == 3
    csv = tmp_path / "taobao.csv"
    csv.write_text("1,100,7,pv,1511658010\n")
    messages, total = open_messages(csv)
    assert [orjson.loads(m) for m in messages] == [
        {"user_id": "1", "item_id": "100", "event_type": "view", "ts": 1511658010.0}
    ]
    assert total == 1
