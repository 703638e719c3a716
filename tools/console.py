"""The ``optc`` console script and ``python -m optc``: import the CLI under Ctrl-C
protection (exit 130, one line), then run it."""

from __future__ import annotations

import os
import sys

__all__ = ["console_main"]


def console_main() -> None:
    """Run the CLI; Ctrl-C while it is still being imported also exits 130 with one line."""
    try:
        from optc.tools.cli import main  # imported here: an interrupt during it is caught
    except KeyboardInterrupt:
        sys.stderr.write("optc: interrupted\n")
        sys.stderr.flush()
        os._exit(130)
    raise SystemExit(main())
