"""Stage 1 — decode: raw Kafka message bytes to a JSON object."""

from __future__ import annotations

from typing import Any

import orjson

from streamrec.stream.rejection import InvalidEvent


def decode(value: bytes | None, max_payload_bytes: int) -> dict[str, Any]:
    """Parse one message value as a JSON object, or raise :class:`InvalidEvent`.

    The size check comes first so an oversized payload is never parsed.
    """
    if not value:
        raise InvalidEvent("empty_payload", "message has no value")
    if len(value) > max_payload_bytes:
        raise InvalidEvent("payload_too_large", f"{len(value)} bytes > limit {max_payload_bytes}")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", str(exc)[:200]) from None
    if not isinstance(parsed, dict):
        raise InvalidEvent("not_an_object", f"JSON {type(parsed).__name__}, expected an object")
    return parsed
