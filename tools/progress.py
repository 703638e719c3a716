"""A progress display for CLI steps that take more than a second, and counts of long ones."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress"]

_FRAMES = "|/-\\"
_NON_TTY_LINES = 10
"""Count lines a :meth:`Progress.counting` step writes at most on a non-terminal stream."""


class Progress:
    """Shows a spinner with elapsed time on a terminal for steps longer than ``delay`` seconds.

    On a non-terminal stream a step longer than ``delay`` prints one line when it ends; shorter
    steps print nothing. ``enabled=False`` silences it (``--quiet``).
    """

    default_delay = 1.0
    """Seconds a step runs before anything is shown, unless ``delay`` is given."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True,
                 delay: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.delay = self.default_delay if delay is None else delay
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        with self._timed(message, threading.Event()):
            yield

    @contextmanager
    def _timed(self, message: str, counted: threading.Event) -> Iterator[None]:
        """:meth:`step`; the spinner stops drawing once ``counted`` is set (a count line
        has taken its place)."""
        start = time.perf_counter()
        stop = threading.Event()
        thread = None
        if self.enabled and self.tty:
            thread = threading.Thread(target=self._spin, args=(message, start, stop, counted),
                                      daemon=True)
            thread.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            elapsed = time.perf_counter() - start
            if self.enabled and elapsed >= self.delay:
                end = "\r\033[K" if self.tty else ""
                if ok:
                    self.stream.write(f"{end}optc: {message}: done in {elapsed:.1f} s\n")
                else:  # the error line that follows says what failed
                    self.stream.write(end)
                self.stream.flush()

    def _spin(self, message: str, start: float, stop: threading.Event,
              counted: threading.Event) -> None:
        if stop.wait(self.delay):
            return
        i = 0
        while not stop.is_set() and not counted.is_set():
            elapsed = time.perf_counter() - start
            self.stream.write(f"\r\033[K{_FRAMES[i % 4]} {message}... {elapsed:.1f} s")
            self.stream.flush()
            i += 1
            stop.wait(0.1)

    @contextmanager
    def counting(self, message: str, unit: str = "examples") -> Iterator[Callable[[int, int], None]]:
        """Like :meth:`step`, for a step that reports ``(done, total)`` through the callback it
        yields (``optc.tasks.evaluate``'s ``progress``): on a terminal one rewritten line
        ``message: done/total unit, rate, ETA``; elsewhere a line at each tenth of the total
        (at most 10), so that a log shows the run advancing without thousands of lines.
        Nothing is shown during the first ``delay`` seconds."""
        start = time.perf_counter()
        state = {"shown": 0.0, "tenth": 0}
        counted = threading.Event()

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            elapsed = now - start
            if not self.enabled or total <= 0 or elapsed < self.delay:
                return  # a short step shows nothing, as with step()
            if self.tty:
                if done < total and now - state["shown"] < 0.1:
                    return  # at most 10 redraws a second
                state["shown"] = now
                counted.set()
                self.stream.write(f"\r\033[K{message}: {_count(done, total, unit, elapsed)}")
            else:
                tenth = min(_NON_TTY_LINES, done * _NON_TTY_LINES // total)
                if tenth <= state["tenth"]:
                    return
                state["tenth"] = tenth
                self.stream.write(f"optc: {message}: {_count(done, total, unit, elapsed)}\n")
            self.stream.flush()

        with self._timed(message, counted):
            yield report


def _count(done: int, total: int, unit: str, elapsed: float) -> str:
    """``done/total unit (percent), rate/s, ETA`` (rate and ETA once some time has passed)."""
    text = f"{done}/{total} {unit} ({100 * done // total}%)"
    if elapsed > 0 and done > 0:
        rate = done / elapsed
        text += f", {rate:.1f} {unit}/s"
        if done < total:
            text += f", ETA {time.strftime('%H:%M:%S', time.gmtime((total - done) / rate))}"
    return text
