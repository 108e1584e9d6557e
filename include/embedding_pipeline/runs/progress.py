"""Progress lines in the task log while a long task works: rows done of the total, rows per second,
time left - at most one line every few seconds, so a 30-minute embed task is not silent until its
"Done" and a 3-second one does not flood the log.

Set ``EMBEDDING_PROGRESS_SECONDS`` to change the interval (0 logs every batch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
DEFAULT_INTERVAL_S = 5.0

log = logging.getLogger(__name__)


def _interval() -> float:
    raw = os.environ.get("EMBEDDING_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts rows of one task (``what``: e.g. ``embed c0003``) towards ``total`` (None: unknown,
    then no percentage or ETA) and logs a line when ``interval_s`` has passed since the last one."""

    def __init__(
        self,
        what: str,
        total: int | None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.what, self.total, self.clock, self.log = what, total, clock, logger
        self.interval_s = _interval() if interval_s is None else interval_s
        self.started = self.last = clock()
        self.done = 0

    def advance(self, rows: int) -> None:
        self.update(self.done + rows)

    def update(self, done: int) -> None:
        """``done`` rows so far; logs when the interval has passed (and never past the end)."""
        self.done = done
        now = self.clock()
        if now - self.last >= self.interval_s and (self.total is None or done < self.total):
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            return f"{self.what}: {self.done:,} rows, {rate:,.0f} rows/s"
        share = self.done / self.total if self.total else 1.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f", ETA {_duration(left)}" if left is not None else ""
        return f"{self.what}: {self.done:,}/{self.total:,} rows ({share:.0%}), {rate:,.0f} rows/s{eta}"

    def track(self, batches: Iterable[T], size: Callable[[T], int]) -> Iterator[T]:
        """Yield ``batches``, counting ``size(batch)`` rows after each one is consumed."""
        for batch in batches:
            yield batch
            self.advance(size(batch))
