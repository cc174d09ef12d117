from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from streamrec.stream.app import replay as replay_module
from streamrec.stream.app.replay import is_retimable, open_messages, pacing_delay, prepare_message
from streamrec.stream.errors import StreamrecError

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


class _FakeFuture:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def add_errback(self, callback) -> None:
        if self.error is not None:
            callback(self.error)


class _FakeKafkaProducer:
    """Fails the sends whose value is b"lost"; records what was flushed and closed."""

    instances: ClassVar[list[_FakeKafkaProducer]] = []

    def __init__(self, **config: object) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.flushed = self.closed = False
        _FakeKafkaProducer.instances.append(self)

    def send(self, topic: str, key: bytes | None, value: bytes) -> _FakeFuture:
        self.sent.append((topic, key, value))
        return _FakeFuture(RuntimeError("broker said no") if value == b"lost" else None)

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True


def test_undelivered_messages_raise_after_everything_was_flushed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "KafkaProducer", _FakeKafkaProducer)
    with replay_module._DeliveringProducer("127.0.0.1:1", "events", "messages") as producer:
        producer.send(b"u1", b"kept")
    assert producer.sent == 1 and _FakeKafkaProducer.instances[-1].flushed

    expected = r"2 of 3 messages were not delivered to topic 'events': RuntimeError\('broker said no'\)"
    with (
        pytest.raises(StreamrecError, match=expected),
        replay_module._DeliveringProducer("127.0.0.1:1", "events", "messages") as producer,
    ):
        for value in (b"lost", b"kept", b"lost"):
            producer.send(None, value)
    fake = _FakeKafkaProducer.instances[-1]
    assert fake.flushed and fake.closed and [value for _, _, value in fake.sent] == [b"lost", b"kept", b"lost"]


def test_an_error_inside_the_block_closes_the_producer_without_flushing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_module, "KafkaProducer", _FakeKafkaProducer)
    with (
        pytest.raises(KeyboardInterrupt),
        replay_module._DeliveringProducer("127.0.0.1:1", "items", "catalog records") as producer,
    ):
        producer.send(b"i1", b"lost")
        raise KeyboardInterrupt
    fake = _FakeKafkaProducer.instances[-1]
    assert fake.closed and not fake.flushed
