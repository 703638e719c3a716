"""Backends: optc IR -> runnable modules."""

from optc.backends.eager import EagerModule, to_eager

__all__ = ["EagerModule", "to_eager", "BACKENDS"]

BACKENDS = ("eager",)
"""Backends the CLI's --backend accepts."""
