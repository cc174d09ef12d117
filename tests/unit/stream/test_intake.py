import orjson

from streamrec.model.events import Event
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.intake import Intake
from streamrec.stream.metrics import NullMetrics
from streamrec.stream.results import REASON_HEADER, SOURCE_HEADER, StageClock
from streamrec.stream.settings import Settings

NOW = 1_800_000_000.0


def record(value: bytes | None, offset: int, key: bytes | None = b"u1") -> SourceRecord:
    return SourceRecord(value, key, partition=0, offset=offset, received_at=NOW)


def event(user: str = "u1", item: str = "i1") -> bytes:
    return orjson.dumps({"user_id": user, "item_id": item, "event_type": "view", "ts": NOW - 1})


def test_every_record_is_accepted_or_dead_lettered_in_order() -> None:
    records = [
        record(event(item="i1"), 0),
        record(b"{not json", 1),
        record(orjson.dumps({"command": "forget", "user_id": "u1"}), 2),
        record(None, 3),
        record(orjson.dumps({"user_id": "u1", "event_type": "view", "ts": NOW}), 4),
        record(event(item="i2"), 5),
    ]
    clock = StageClock()
    admitted = Intake(Settings(), NullMetrics()).admit(records, NOW, clock)

    assert [r.offset for r, _ in admitted.accepted] == [0, 2, 5]
    assert isinstance(admitted.accepted[0][1], Event) and isinstance(admitted.accepted[1][1], Command)
    reasons = [dict(m.headers)[REASON_HEADER].decode() for m in admitted.dead_letters]
    assert reasons == ["not_json", "empty_payload", "missing_field"]
    assert [dict(m.headers)[SOURCE_HEADER] for m in admitted.dead_letters] == [
        b"events/0/1",
        b"events/0/3",
        b"events/0/4",
    ]
    assert {m.topic for m in admitted.dead_letters} == {Settings().dead_letter_topic}
    assert set(clock.seconds) == {"decode", "validate"}


def test_a_payload_over_the_limit_is_rejected_before_parsing() -> None:
    settings = Settings(max_payload_bytes=256)
    admitted = Intake(settings, NullMetrics()).admit([record(b"[" * 300, 0)], NOW, StageClock())
    assert not admitted.accepted
    assert dict(admitted.dead_letters[0].headers)[REASON_HEADER] == b"payload_too_large"
