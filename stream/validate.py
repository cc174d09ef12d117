"""Stage 2 — validate: a decoded JSON object to a typed :class:`~streamrec.model.events.Event`.

Unknown fields are ignored so producers can add fields without breaking workers. Integer ids are accepted
and turned into strings because many shops key users and items by number.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streamrec.model.events import EVENT_TYPES, Event, EventType
from streamrec.stream.events import COMMAND_TYPES, Command, CommandType

if TYPE_CHECKING:
    from streamrec.stream.settings import Settings
from streamrec.stream.rejection import InvalidEvent

FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

# Unicode assigns these classes only in the Basic and Supplementary Multilingual planes and in plane 14 (tags);
# scanning those three keeps the import at a few milliseconds. tests/unit/test_validate.py checks every code
# point of the running Python's Unicode version, so a class added elsewhere would fail there.
_SCANNED_PLANES = (range(0x0000, 0x20000), range(0xE0000, 0xF0000))


def _character_class(categories: frozenset[str]) -> re.Pattern[str]:
    """A regex class of every code point whose ``unicodedata`` category is in ``categories``, as ranges."""
    ranges: list[tuple[int, int]] = []
    for plane in _SCANNED_PLANES:
        for code in plane:
            if unicodedata.category(chr(code)) not in categories:
                continue
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    parts = (re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges)
    return re.compile(f"[{''.join(parts)}]")


#: Characters no id may hold: Unicode control (Cc), format (Cf: bidi overrides, zero-width and invisible marks),
#: line and paragraph separators (Zl, Zp) and lone surrogates (Cs), taken from the running Python's Unicode
#: tables. They make ids that print alike differ, reorder text in dashboards and logs, or end a C string early.
FORBIDDEN_ID_CHARACTERS = _character_class(FORBIDDEN_CATEGORIES)


@dataclass(frozen=True, slots=True)
class ValidationRules:
    """The limits an event must respect; built from :class:`~streamrec.stream.settings.Settings`."""

    max_id_length: int = 256
    min_event_ts: float = 946_684_800.0
    max_clock_skew_s: float = 86_400.0
    reject_key_mismatch: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationRules:
        return cls(
            max_id_length=settings.max_id_length,
            min_event_ts=settings.min_event_ts,
            max_clock_skew_s=settings.max_clock_skew_s,
            reject_key_mismatch=settings.reject_key_mismatch,
        )


def _required_id(payload: dict[str, Any], name: str, max_length: int) -> str:
    if name not in payload or payload[name] is None:
        raise InvalidEvent("missing_field", f"`{name}` is required")
    return _id_value(payload[name], name, max_length)


def _optional_id(payload: dict[str, Any], name: str, max_length: int) -> str | None:
    value = payload.get(name)
    return None if value is None else _id_value(value, name, max_length)


def _id_value(value: Any, name: str, max_length: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent("invalid_type", f"`{name}` must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise InvalidEvent("empty_id", f"`{name}` is empty")
    if len(text) > max_length:
        raise InvalidEvent("id_too_long", f"`{name}` has {len(text)} characters > {max_length}")
    forbidden = FORBIDDEN_ID_CHARACTERS.search(text)
    if forbidden is not None:
        raise InvalidEvent(
            "invalid_characters", f"`{name}` holds the control or format character U+{ord(forbidden.group()):04X}"
        )
    return text


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive strings are taken as UTC)."""
    if isinstance(value, bool):
        raise InvalidEvent("invalid_timestamp", "`ts` must be epoch seconds or ISO-8601, got a boolean")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent("invalid_timestamp", f"`ts` {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise InvalidEvent("invalid_timestamp", f"`ts` must be a number or string, got {type(value).__name__}")
    if not math.isfinite(ts):
        raise InvalidEvent("invalid_timestamp", "`ts` is not finite")
    return ts


def validate(payload: dict[str, Any], key: bytes | None, rules: ValidationRules, now: float) -> Event:
    """Check one decoded event against the contract, or raise :class:`InvalidEvent`."""
    user_id = _required_id(payload, "user_id", rules.max_id_length)
    item_id = _required_id(payload, "item_id", rules.max_id_length)

    event_type = payload.get("event_type")
    if event_type is None:
        raise InvalidEvent("missing_field", "`event_type` is required")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("unknown_event_type", f"{str(event_type)[:40]!r} is not one of {EVENT_TYPES}")

    if "ts" not in payload or payload["ts"] is None:
        raise InvalidEvent("missing_field", "`ts` is required")
    ts = parse_timestamp(payload["ts"])
    if ts < rules.min_event_ts or ts > now + rules.max_clock_skew_s:
        raise InvalidEvent("timestamp_out_of_range", f"`ts` {ts:.3f} outside accepted range")

    context = payload.get("context")
    if context is not None and not isinstance(context, dict):
        raise InvalidEvent("invalid_type", "`context` must be an object")

    # State is partitioned by the message key: a key other than the user id would split a user's state.
    if rules.reject_key_mismatch and key is not None and key.decode("utf-8", "replace") != user_id:
        raise InvalidEvent("key_mismatch", "message key differs from `user_id`")

    return Event(
        user_id=user_id,
        item_id=item_id,
        event_type=EventType(event_type),
        ts=ts,
        event_id=_optional_id(payload, "event_id", rules.max_id_length),
        session_id=_optional_id(payload, "session_id", rules.max_id_length),
        context=context,
    )


def validate_command(payload: dict[str, Any], key: bytes | None, rules: ValidationRules) -> Command:
    """Check a control message (a JSON object with a ``command`` field), or raise :class:`InvalidEvent`.

    Unlike an event, a command must carry its key: it only reaches the user's partition, and so their state, when
    it is keyed by the user id like their events.
    """
    command = payload.get("command")
    if command not in COMMAND_TYPES:
        raise InvalidEvent("unknown_command", f"{str(command)[:40]!r} is not one of {COMMAND_TYPES}")
    user_id = _required_id(payload, "user_id", rules.max_id_length)
    if key is None or key.decode("utf-8", "replace") != user_id:
        raise InvalidEvent("key_mismatch", "a command must be keyed by its `user_id`")
    ts = payload.get("ts")
    return Command(
        user_id=user_id,
        command=CommandType(command),
        ts=None if ts is None else parse_timestamp(ts),
        request_id=_optional_id(payload, "request_id", rules.max_id_length),
    )
