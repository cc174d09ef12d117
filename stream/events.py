"""What arrives on topic ``events`` besides events (:class:`~streamrec.model.events.Event`): commands about a user,
and the raw record a runtime hands to the pipeline.

The JSON Schema in ``stream/schemas/event.schema.json`` describes the contract for producers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CommandType(StrEnum):
    """Control messages that travel on the events topic, in order with the user's own events."""

    FORGET = "forget"  # erase the user's state and recommendations (right to be forgotten)


COMMAND_TYPES: tuple[str, ...] = tuple(t.value for t in CommandType)


@dataclass(slots=True, frozen=True)
class Command:
    """An accepted control message about one user, e.g. ``{"command": "forget", "user_id": "u42", "ts": ...}``.

    It is sent keyed by the user id like the user's events, so it lands on their partition and is applied after
    every event produced before it.
    """

    user_id: str
    command: CommandType
    ts: float | None = None
    request_id: str | None = None


@dataclass(slots=True)
class SourceRecord:
    """A raw message as the transport delivered it, before decoding.

    ``received_at`` is wall-clock time when the worker consumed it, used for the consume-time latency metric.
    """

    value: bytes | None
    key: bytes | None
    partition: int
    offset: int
    received_at: float
    topic: str = "events"
    headers: list[tuple[str, bytes]] = field(default_factory=list)
