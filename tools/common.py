"""What every ``optc`` subcommand shares: one-line usage errors and quiet libraries.

The CLI owns logging (a library never configures it): :func:`quiet_libraries` keeps library
chatter off the terminal and routes optc's own log lines to stderr, with debug detail under
``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import NoReturn

__all__ = ["Parser", "quiet_libraries", "EPILOG", "output_path"]

EPILOG = """exit codes: 0 ok, 1 internal error, 2 bad usage/spec/option, 3 bad input model, data or
artifact, 4 output exists or is unwritable, 5 pass or verification failure, 6 backend failure
(also a written output that fails its self-check), 130 interrupted (Ctrl-C)"""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"optc: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def output_path(text: str) -> str:
    """An argparse type for paths optc writes (``-o``, ``--graph``, ``--dump-dir``): an empty
    one is bad usage (exit 2), not the current directory or "no output"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an output path cannot be empty: give a name, e.g. -o out")
    return text


def quiet_libraries(verbose: bool = False) -> None:
    """Keep library chatter (progress bars, warnings) off the terminal; ``verbose`` shows
    optc's debug lines (e.g. an exporter's full error)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="optc: %(message)s")
    logging.getLogger("optc").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore")
