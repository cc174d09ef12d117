"""Stages 1 and 2 for a whole batch: each raw record decoded (``decode.py``) and validated (``validate.py``).

A record that fails either becomes a dead letter carrying its reason; the rest go on, in order, as typed events
and commands. Nothing is dropped silently: every record of the batch is accepted or dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamrec.model.events import Event
from streamrec.stream.decode import decode
from streamrec.stream.events import Command, SourceRecord
from streamrec.stream.metrics import WorkerMetrics
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.results import OutgoingMessage, StageClock, dead_letter
from streamrec.stream.settings import Settings
from streamrec.stream.validate import ValidationRules, validate, validate_command


@dataclass(frozen=True, slots=True)
class Admitted:
    """A batch after intake: what goes on to the user state, and what goes to the dead-letter topic."""

    accepted: list[tuple[SourceRecord, Event | Command]]
    dead_letters: list[OutgoingMessage]


class Intake:
    """Decodes and validates the records of a batch, counting events by type and rejections by reason."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics) -> None:
        self.rules = ValidationRules.from_settings(settings)
        self.max_payload_bytes = settings.max_payload_bytes
        self.dead_letter_topic = settings.dead_letter_topic
        self.dead_letter_max_bytes = settings.dead_letter_max_bytes
        self.metrics = metrics

    def admit(self, records: Sequence[SourceRecord], now: float, clock: StageClock) -> Admitted:
        dead_letters: list[OutgoingMessage] = []
        accepted: list[tuple[SourceRecord, Event | Command]] = []
        with clock("decode"):
            decoded = [self._decode(record, dead_letters) for record in records]
        with clock("validate"):
            for record, payload in zip(records, decoded, strict=True):
                if payload is not None:
                    event = self._validate(record, payload, now, dead_letters)
                    if event is not None:
                        accepted.append((record, event))
        return Admitted(accepted, dead_letters)

    def _decode(self, record: SourceRecord, dead_letters: list[OutgoingMessage]) -> dict | None:
        try:
            return decode(record.value, self.max_payload_bytes)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None

    def _validate(
        self, record: SourceRecord, payload: dict, now: float, dead_letters: list[OutgoingMessage]
    ) -> Event | Command | None:
        try:
            if "command" in payload:
                return validate_command(payload, record.key, self.rules)
            event = validate(payload, record.key, self.rules, now)
        except InvalidEvent as rejection:
            dead_letters.append(self._dead_letter(record, rejection))
            return None
        self.metrics.events_consumed.labels(event.event_type.value).inc()
        return event

    def _dead_letter(self, record: SourceRecord, rejection: InvalidEvent) -> OutgoingMessage:
        self.metrics.events_invalid.labels(rejection.reason).inc()
        return dead_letter(record, rejection, self.dead_letter_topic, self.dead_letter_max_bytes)
