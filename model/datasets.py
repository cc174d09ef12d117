"""Loaders that turn event files into an :class:`~streamrec.model.event_log.EventLog`,
, the input of training and evaluation.

Four formats are understood (see ``shared/README.md`` for the public data sets):

* ``jsonl`` - one event per line in the event contract of :mod:`streamrec.stream.events` (what the worker consumes).
* ``beauty`` - Amazon Beauty ``Beauty.txt``: ``user item item ...`` per line, in time order, no timestamps.
* ``taobao`` - Taobao UserBehavior CSV ``user,item,category,behavior,timestamp`` without a header.
* ``diginetica`` - ``train_sessions.txt``: one anonymous session of item ids per line, no timestamps.

The loaders build columns with plain ``str.split``/``csv`` and numpy rather than one validated object per row:
the shared files hold up to a million interactions and are loaded by every training run and test.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from streamrec.model.event_log import EVENT_TYPE_CODES, EventLog
from streamrec.model.events import EventType

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "beauty", "taobao", "diginetica")

BEAUTY_START_TS = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
"""Synthetic time of each Beauty user's first purchase. The file only gives the order of a user's purchases."""
BEAUTY_STEP_S = 86_400.0
"""Beauty purchases of one user are spaced a day apart, so time order equals the file's order."""

DIGINETICA_START_TS = datetime(2016, 1, 1, tzinfo=UTC).timestamp()
"""Synthetic start of the Diginetica stream; the CIKM Cup 2016 logs cover the first half of 2016."""
DIGINETICA_SESSION_GAP_S = 60.0
"""Consecutive sessions start this far apart: 186,670 sessions then span about four months, close to the original
log, and sessions overlap in time like concurrent visitors do."""
DIGINETICA_VIEW_GAP_S = 60.0
"""Time between two views within a Diginetica session."""

TAOBAO_BEHAVIORS: dict[str, EventType] = {
    "pv": EventType.VIEW,
    "fav": EventType.CLICK,  # a favourite is interest short of a cart: the closest contract type is a click
    "cart": EventType.CART,
    "buy": EventType.BUY,
}

_MAX_REPORTED_PROBLEMS = 5
_INT_TOKEN = re.compile(rb"^\s*\d+(\s+\d+)*\s*$")


class LineProblems:
    """Counts rejected input lines and keeps the first few reasons, so one warning can summarise them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.examples: list[str] = []

    def add(self, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _MAX_REPORTED_PROBLEMS:
            self.examples.append(f"line {line_no}: {reason}")

    def warn(self) -> None:
        if self.count:
            log.warning("%s: skipped %d invalid line(s), first: %s", self.path, self.count, "; ".join(self.examples))


# --- format detection ------------------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name and, for ``.txt`` files, its first line.

    ``.txt`` is ambiguous: Beauty and Diginetica are both lines of integers, so a name containing ``session``
    means Diginetica. A first line with a tab is a Diginetica test-prefix file, which holds no event stream.
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "taobao"
    if suffix == ".txt":
        if "session" in path.name.lower():
            return "diginetica"
        first = first_nonblank_line(path)
        if b"\t" in first:
            raise ValueError(
                f"{path}: tab-separated lines look like Diginetica test prefixes; "
                "read them with load_session_prefixes(), they are not an event stream"
            )
        if path.name == "Beauty.txt" or _INT_TOKEN.match(first):
            return "beauty"
    raise ValueError(
        f"cannot tell the format of {path}: use .jsonl/.json (events), .csv (taobao), Beauty.txt or "
        f"*session*.txt, or pass fmt= one of {', '.join(FORMATS)}"
    )


def first_nonblank_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                return line
    return b""


def load_dataset(path: Path, fmt: str) -> EventLog:
    """Load a public data set file (``beauty``, ``taobao`` or ``diginetica``) into a time-ordered
    :class:`EventLog`. Event files in the contract (``jsonl``) are read by
    :func:`streamrec.stream.app.event_files.load_events`, which validates them as the worker does."""
    loaders = {"beauty": load_beauty, "taobao": load_taobao, "diginetica": load_diginetica}
    if fmt not in loaders:
        raise ValueError(f"unknown data set format {fmt!r}; expected one of {', '.join(loaders)}")
    return loaders[fmt](path)


def event_log_of(
    users: list[str], items: list[str], types: np.ndarray | list[int], stamps: np.ndarray | list[float], name: str
) -> EventLog:
    """Build the columns with the dtypes :class:`EventLog` documents, then stable-sort them by time."""
    return EventLog(
        np.array(users, dtype=object),
        np.array(items, dtype=object),
        np.asarray(types, dtype=np.int8),
        np.asarray(stamps, dtype=np.float64),
        name,
    ).sorted_by_time()


def _positions(lengths: list[int]) -> np.ndarray:
    """``0..n-1`` for each run of length ``n``, concatenated: the index of every interaction in its sequence.

    One vectorised pass instead of an ``np.arange`` per line, which dominated the Diginetica load time.
    """
    counts = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.float64) - np.repeat(starts, counts)


# --- Amazon Beauty ---------------------------------------------------------------------------------------------


def load_beauty(path: Path) -> EventLog:
    """Amazon Beauty as ``buy`` events (each interaction is the review of a purchase).

    Timestamps are synthetic: a user's n-th purchase happens ``n`` days after 2020-01-01 UTC. This keeps each
    user's order, which is all leave-one-out evaluation needs; times across users carry no meaning.
    """
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    problems = LineProblems(path)
    with Path(path).open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) < 2:
                problems.add(line_no, "user without items")
                continue
            users.extend([tokens[0]] * (len(tokens) - 1))
            items.extend(tokens[1:])
            lengths.append(len(tokens) - 1)
    problems.warn()
    stamps = BEAUTY_START_TS + BEAUTY_STEP_S * _positions(lengths)
    types = np.full(len(items), EVENT_TYPE_CODES[EventType.BUY.value], dtype=np.int8)
    return event_log_of(users, items, types, stamps, path.stem)


def load_item_attributes(path: Path) -> dict[str, list[str]]:
    """``Beauty_item2attributes.json``: item id -> attribute ids (category and brand), all as strings."""
    raw = orjson.loads(Path(path).read_bytes())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of item id -> attribute list")
    attributes: dict[str, list[str]] = {}
    for item, values in raw.items():
        if not isinstance(values, list):
            raise ValueError(f"{path}: attributes of item {item} are not a list")
        attributes[str(item)] = [str(value) for value in values]
    return attributes


# --- Taobao UserBehavior ---------------------------------------------------------------------------------------


def _taobao_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        yield from enumerate(csv.reader(handle), start=1)


def load_taobao(path: Path) -> EventLog:
    """Taobao UserBehavior CSV; ``pv``/``fav``/``cart``/``buy`` become view/click/cart/buy.

    Rows with the wrong field count, an unknown behaviour or a non-numeric timestamp are skipped and counted.
    """
    users: list[str] = []
    items: list[str] = []
    types: list[int] = []
    stamps: list[float] = []
    codes = {name: EVENT_TYPE_CODES[kind.value] for name, kind in TAOBAO_BEHAVIORS.items()}
    problems = LineProblems(path)
    for line_no, row in _taobao_rows(path):
        if not row:
            continue
        if len(row) != 5:
            problems.add(line_no, f"{len(row)} fields instead of 5")
            continue
        user, item, _category, behavior, stamp = row
        code = codes.get(behavior)
        if code is None:
            problems.add(line_no, f"unknown behavior {behavior[:20]!r}")
            continue
        try:
            ts = float(stamp)
        except ValueError:
            problems.add(line_no, f"timestamp {stamp[:20]!r} is not a number")
            continue
        if not user or not item:
            problems.add(line_no, "empty user or item id")
            continue
        users.append(user)
        items.append(item)
        types.append(code)
        stamps.append(ts)
    problems.warn()
    return event_log_of(users, items, types, stamps, path.stem)


def load_taobao_categories(path: Path) -> dict[str, str]:
    """Item id -> category id from a Taobao CSV. An item listed under several categories keeps the last one."""
    categories: dict[str, str] = {}
    for _line_no, row in _taobao_rows(path):
        if len(row) == 5 and row[1] and row[2]:
            categories[row[1]] = row[2]
    return categories


# --- Diginetica ------------------------------------------------------------------------------------------------


def load_diginetica(path: Path) -> EventLog:
    """Diginetica training sessions as ``view`` events of one user per session, ``s<line number>``.

    Session ``k`` starts ``k`` minutes after 2016-01-01 UTC and its views are a minute apart: the file's session
    order becomes stream order, and a replay interleaves concurrent sessions as a live shop would.
    """
    users: list[str] = []
    items: list[str] = []
    lengths: list[int] = []
    line_numbers: list[int] = []
    for line_no, line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        users.extend([f"s{line_no}"] * len(tokens))
        items.extend(tokens)
        lengths.append(len(tokens))
        line_numbers.append(line_no)
    session_starts = DIGINETICA_START_TS + DIGINETICA_SESSION_GAP_S * (np.asarray(line_numbers, np.float64) - 1)
    stamps = np.repeat(session_starts, lengths) + DIGINETICA_VIEW_GAP_S * _positions(lengths)
    types = np.full(len(items), EVENT_TYPE_CODES[EventType.VIEW.value], dtype=np.int8)
    return event_log_of(users, items, types, stamps, path.stem)


def load_session_prefixes(path: Path) -> list[tuple[list[str], str]]:
    """Diginetica ``test_prefixes.txt``: ``(prefix items, next item)`` pairs for next-item evaluation."""
    prefixes: list[tuple[list[str], str]] = []
    problems = LineProblems(path)
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        prefix, sep, target = line.rstrip("\r\n").partition("\t")
        items = prefix.split()
        target = target.strip()
        if not sep or not items or not target or len(target.split()) != 1:
            problems.add(line_no, "expected 'prefix items<TAB>next item'")
            continue
        prefixes.append((items, target))
    problems.warn()
    return prefixes


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with Path(path).open(encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)
