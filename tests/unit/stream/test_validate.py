import sys
import unicodedata
from typing import Any

import pytest

from streamrec.model.events import EventType
from streamrec.stream.events import Command, CommandType
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.validate import (
    FORBIDDEN_CATEGORIES,
    FORBIDDEN_ID_CHARACTERS,
    ValidationRules,
    validate,
    validate_command,
)

NOW = 1_800_000_000.0
RULES = ValidationRules(max_id_length=16, min_event_ts=946_684_800.0, max_clock_skew_s=3600.0)


def event(**overrides: Any) -> dict[str, Any]:
    base = {"user_id": "u1", "item_id": "i9", "event_type": "cart", "ts": NOW - 10}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def test_accepts_a_valid_event_and_ignores_unknown_fields() -> None:
    accepted = validate(
        event(event_id="e1", session_id="s1", context={"page": "home"}, extra_field=[1, 2]), b"u1", RULES, NOW
    )
    assert (accepted.user_id, accepted.item_id, accepted.event_type) == ("u1", "i9", EventType.CART)
    assert accepted.ts == NOW - 10
    assert (accepted.event_id, accepted.session_id, accepted.context) == ("e1", "s1", {"page": "home"})


def test_integer_ids_become_strings_and_iso_timestamps_are_parsed() -> None:
    accepted = validate(event(user_id=42, item_id=7, ts="2027-01-15T08:00:00Z"), None, RULES, NOW)
    assert (accepted.user_id, accepted.item_id) == ("42", "7")
    assert accepted.ts == 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_naive_iso_timestamp_is_utc() -> None:
    assert validate(event(ts="2027-01-15T08:00:00"), None, RULES, NOW).ts == 1_800_000_000.0


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"user_id": ...}, "missing_field"),
        ({"item_id": None}, "missing_field"),
        ({"event_type": ...}, "missing_field"),
        ({"ts": ...}, "missing_field"),
        ({"user_id": ""}, "empty_id"),
        ({"item_id": "   "}, "empty_id"),
        ({"user_id": "u" * 17}, "id_too_long"),
        ({"item_id": 1.5}, "invalid_type"),
        ({"user_id": True}, "invalid_type"),
        ({"item_id": {"id": 1}}, "invalid_type"),
        ({"event_type": "purchase"}, "unknown_event_type"),
        ({"event_type": 3}, "unknown_event_type"),
        ({"ts": "yesterday"}, "invalid_timestamp"),
        ({"ts": True}, "invalid_timestamp"),
        ({"ts": [1]}, "invalid_timestamp"),
        ({"ts": float("nan")}, "invalid_timestamp"),
        ({"ts": 0}, "timestamp_out_of_range"),
        ({"ts": NOW + 7200}, "timestamp_out_of_range"),
        ({"ts": 1e300}, "timestamp_out_of_range"),
        ({"context": "not an object"}, "invalid_type"),
        ({"session_id": ""}, "empty_id"),
    ],
)
def test_rejections_carry_a_reason(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate(event(**overrides), None, RULES, NOW)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_key_must_match_user_id_when_set() -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate(event(), b"someone-else", RULES, NOW)
    assert caught.value.reason == "key_mismatch"
    lenient = ValidationRules(reject_key_mismatch=False)
    assert validate(event(), b"someone-else", lenient, NOW).user_id == "u1"


@pytest.mark.parametrize(
    "user_id",
    ["u\x001", "u\n1", "admin\u202e1u", "u\u200b1", "u\u2066x", "\ufeffu1", "u\x7f"],
)
def test_ids_with_control_or_format_characters_are_rejected(user_id: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate(event(user_id=user_id), None, RULES, NOW)
    assert caught.value.reason == "invalid_characters"
    assert "U+" in caught.value.detail


def test_the_forbidden_characters_are_exactly_unicodes_control_and_format_classes() -> None:
    forbidden = {"Cc", "Cf", "Zl", "Zp", "Cs"}
    assert forbidden == FORBIDDEN_CATEGORIES
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = unicodedata.category(char) in forbidden
        assert (FORBIDDEN_ID_CHARACTERS.fullmatch(char) is not None) == expected, f"U+{code:04X}"


def test_ordinary_unicode_ids_are_accepted() -> None:
    for user_id in ["Zoë", "用户-42", "müller@shop", "user 7", "👟-fan"]:
        assert validate(event(user_id=user_id), None, RULES, NOW).user_id == user_id


def test_a_forget_command_is_read_from_its_keyed_message() -> None:
    command = validate_command({"command": "forget", "user_id": "u1", "ts": NOW, "request_id": "r-1"}, b"u1", RULES)
    assert command == Command("u1", CommandType.FORGET, NOW, "r-1")


@pytest.mark.parametrize(
    ("payload", "key", "reason"),
    [
        ({"command": "delete_everything", "user_id": "u1"}, b"u1", "unknown_command"),
        ({"command": "forget"}, b"u1", "missing_field"),
        ({"command": "forget", "user_id": "u1"}, None, "key_mismatch"),
        ({"command": "forget", "user_id": "u1"}, b"u2", "key_mismatch"),
        ({"command": "forget", "user_id": "u1", "ts": "soon"}, b"u1", "invalid_timestamp"),
    ],
)
def test_malformed_commands_are_rejected(payload: dict[str, Any], key: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_command(payload, key, RULES)
    assert caught.value.reason == reason
