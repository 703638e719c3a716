"""Calibration data for passes that measure the model on real inputs.

Such passes take the options ``data`` (a file or task directory, see :mod:`optc.data`; the
CLI's ``--data`` fills it in), ``samples``, ``batch_size``, ``max_length`` and ``tokenizer``
(default: the tokenizer recorded with the captured model).
"""

from __future__ import annotations

from typing import Any

from optc.data import Batch, load_calibration
from optc.errors import InputError
from optc.ir.core import Module

__all__ = ["calibration_batches", "CALIBRATION_OPTIONS"]

CALIBRATION_OPTIONS = ("data", "samples", "batch_size", "max_length", "tokenizer")
"""Option names shared by every pass that reads calibration data."""


def calibration_batches(module: Module, data: str | None, samples: int, batch_size: int,
                        max_length: int, tokenizer: str | None, why: str) -> list[Batch]:
    """Tokenized batches of ``samples`` examples from ``data`` for ``module``'s inputs.

    ``why`` names the pass and criterion in the error raised when no data is given.
    """
    from optc.frontends.huggingface import load_tokenizer

    if data is None:
        raise InputError(
            f"{why} needs calibration data: pass --data FILE (or data=FILE in the pass options), "
            "e.g. --data glue/SST-2/dev.tsv with OPTC_DATA_DIR set"
        )
    ref = tokenizer or (module.meta.get("source") or {}).get("tokenizer")
    if ref is None:
        raise InputError(f"{why}: no tokenizer is recorded with this model; pass tokenizer=PATH")
    tok: Any = load_tokenizer(ref)
    names = [v.name for v in module.graph.inputs]
    batches = load_calibration(data, tok, names, limit=samples, batch_size=batch_size,
                               max_length=max_length)
    if not batches:
        raise InputError(f"{why}: '{data}' gave no examples")
    return batches
