"""Why an input message was rejected: the reason codes of the dead-letter topic and of the metrics."""

from __future__ import annotations

#: Every reason a message can be dead-lettered for. Fixed so metric label values stay bounded.
REJECTION_REASONS: tuple[str, ...] = (
    "empty_payload",
    "payload_too_large",
    "not_json",
    "not_an_object",
    "missing_field",
    "invalid_type",
    "empty_id",
    "id_too_long",
    "invalid_characters",
    "unknown_event_type",
    "unknown_command",
    "invalid_timestamp",
    "timestamp_out_of_range",
    "key_mismatch",
    "invalid_value",
    "processing_error",
)


class InvalidEvent(ValueError):
    """An input message that cannot be accepted. ``reason`` is one of :data:`REJECTION_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
