"""Event files in the contract (JSONL, one event per line): read with the worker's own validation, written for replay.

:func:`load_events` reads any supported file: JSONL here, the public data sets through
:func:`streamrec.model.datasets.load_dataset`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamrec.model.datasets import (
    FORMATS,
    LineProblems,
    detect_format,
    event_log_of,
    first_nonblank_line,
    load_dataset,
)
from streamrec.model.event_log import EVENT_TYPE_CODES, EventLog
from streamrec.model.events import Event
from streamrec.stream.rejection import InvalidEvent
from streamrec.stream.validate import ValidationRules, validate


def load_events(path: Path, fmt: str = "auto") -> EventLog:
    """Load an event file of any supported format into a time-ordered :class:`EventLog`.

    Raises ``ValueError`` for a missing file or an unknown format, so a CLI can report both the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"event file not found: {path}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown event file format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    return load_jsonl(path) if fmt == "jsonl" else load_dataset(path, fmt)


FILE_RULES = ValidationRules(min_event_ts=-math.inf, max_clock_skew_s=math.inf, reject_key_mismatch=False)
"""Event files are checked by the worker's own contract, except that any past or future time is accepted: a log
may be replayed long after it was written, and simulated shops may lie in the future."""


def event_from_json(obj: Any) -> Event:
    """An :class:`Event` from one decoded contract object; raises ``ValueError`` naming what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", f"JSON {type(obj).__name__}, expected an object")
    return validate(obj, None, FILE_RULES, now=0.0)


def iter_jsonl_events(path: Path) -> Iterator[Event]:
    """The valid events of a JSONL file in file order; invalid lines are skipped and summarised in one warning.

    Skipping rather than failing mirrors the worker, which dead-letters bad messages and carries on: one corrupt
    line in a day of logs should not stop a training run.
    """
    problems = LineProblems(path)
    with Path(path).open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield event_from_json(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                problems.add(line_no, f"invalid JSON ({exc.msg})")
            except ValueError as exc:
                problems.add(line_no, str(exc))
    problems.warn()


def load_jsonl(path: Path) -> EventLog:
    """A JSONL file in the event contract. Raises ``ValueError`` when no line at all is a valid event.

    The file is read line by line into columns; each distinct id is kept once (every later occurrence points to
    the same string), so ten million events of a million users and items take hundreds of megabytes, not
    gigabytes.
    """
    users: list[str] = []
    items: list[str] = []
    types = array("b")
    stamps = array("d")
    ids: dict[str, str] = {}
    for event in iter_jsonl_events(path):
        users.append(ids.setdefault(event.user_id, event.user_id))
        items.append(ids.setdefault(event.item_id, event.item_id))
        types.append(EVENT_TYPE_CODES[event.event_type.value])
        stamps.append(event.ts)
    if not users and first_nonblank_line(path):
        raise ValueError(f"{path}: no line is a valid event (is it really an event file?)")
    return event_log_of(users, items, np.frombuffer(types, np.int8), np.frombuffer(stamps, np.float64), path.stem)


def write_events_jsonl(events: Iterable[Event], path: Path) -> int:
    """Write events as contract JSONL (the format replay and ``load_events`` read); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as handle:
        for event in events:
            handle.write(orjson.dumps(event.to_json_dict()))
            handle.write(b"\n")
            count += 1
    return count
