"""A progress display for CLI steps that take more than a second."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Progress"]

_FRAMES = "|/-\\"


class Progress:
    """Shows a spinner with elapsed time on a terminal for steps longer than ``delay`` seconds.

    On a non-terminal stream a step longer than ``delay`` prints one line when it ends; shorter
    steps print nothing. ``enabled=False`` silences it (``--quiet``).
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, delay: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.delay = delay
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        stop = threading.Event()
        thread = None
        if self.enabled and self.tty:
            thread = threading.Thread(target=self._spin, args=(message, start, stop), daemon=True)
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

    def _spin(self, message: str, start: float, stop: threading.Event) -> None:
        if stop.wait(self.delay):
            return
        i = 0
        while not stop.is_set():
            elapsed = time.perf_counter() - start
            self.stream.write(f"\r\033[K{_FRAMES[i % 4]} {message}... {elapsed:.1f} s")
            self.stream.flush()
            i += 1
            stop.wait(0.1)
