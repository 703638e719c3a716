"""The ``optc`` console script and ``python -m optc``: import the CLI under Ctrl-C
protection (exit 130, one line), then run it."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["console_main"]


def console_main() -> None:
    """Run the CLI; Ctrl-C while it is still being imported, or in the few steps before and
    after ``main`` holds it, also exits 130 with one line."""
    try:
        from optc.tools.cli.main import main  # imported here: an interrupt during it is caught

        code = main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message
        sys.stderr.write("optc: interrupted\n")
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(code)
