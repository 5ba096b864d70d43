"""A progress line on stderr for long runs: done/total, rate, time left; only when the stream is a terminal, so logs
and pipes get nothing extra."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class Progress:
    """``label done/total (rate/s, time left)``, redrawn in place on each :py:meth:`update`.

    Parameters
    ----------
    total : int
        Items to do.
    label : str
        What is being done.
    stream : text stream
        Where to draw (stderr by default); nothing is drawn unless it is a terminal.
    clock : callable
        Seconds, monotonic (for tests).
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.clock = total, label, clock
        self.stream = stream if stream is not None else sys.stderr
        self.shown = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.began = clock()

    def update(self, count: int = 1) -> None:
        self.done += count
        if not self.shown:
            return
        elapsed = max(self.clock() - self.began, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.stream.write(f"\r{self.label} {self.done}/{self.total} ({rate:.3g}/s, {_duration(left)} left)")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
