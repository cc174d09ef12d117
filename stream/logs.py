"""Logging that stays readable when the broker goes away.

With the broker down, the Kafka clients log every failed connection, metadata refresh and fetch: thousands of lines
a second across a worker's consumers and producer, which buries the one line that matters and fills disks.
:class:`RepeatLimiter` lets the first record of each message template through per window and counts the rest,
reporting the count on the next one it lets through.
"""

from __future__ import annotations

import logging
import threading
import time

THIRD_PARTY = ("aiokafka", "kafka", "faust", "mode", "asyncio")
WINDOW_S = 10.0
MAX_TEMPLATES = 10_000


class RepeatLimiter(logging.Filter):
    """At most one record per (logger, level, message template) every ``window_s`` seconds.

    Applies to the Kafka and stream libraries at every level, and to everyone's warnings and errors; streamrec's
    own information lines (a rebalance, a model swap) always pass.
    """

    def __init__(self, window_s: float = WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (last passed at, suppressed since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and not record.name.startswith(THIRD_PARTY):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._last[key] = (last[0], last[1] + 1)
                return False
            if len(self._last) >= MAX_TEMPLATES:
                self._last.clear()
            self._last[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} [{last[1]} more like this in the last {now - last[0]:.0f} s]"
            record.args = None
        return True


def limit_repeats(window_s: float = WINDOW_S) -> None:
    """Install a :class:`RepeatLimiter` on every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RepeatLimiter) for existing in handler.filters):
            handler.addFilter(RepeatLimiter(window_s))
