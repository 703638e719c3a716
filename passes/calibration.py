"""Calibration data for passes that measure the model on real inputs.

Such passes take the options ``data`` (a file or task directory, see :mod:`optc.data`; the
CLI's ``--data`` fills it in), ``samples``, ``batch_size``, ``max_length`` and ``tokenizer``
(default: the tokenizer recorded with the captured model).

:func:`calibration_batches` refuses, before anything runs, with one line each:

- a model whose directory has no tokenizer files (transformers would build a placeholder that
  maps every word to ``[UNK]``): pass ``tokenizer=``;
- a tokenizer whose vocabulary is larger than the model's embedding table;
- labels that do not fit the model's head: scores (STS-B) for a classifier with several
  labels, class indices out of range, one label per example for a per-token head.
"""

from __future__ import annotations

from typing import Any

from optc.data import Batch, load_calibration
from optc.errors import InputError
from optc.ir.core import Module, Parameter, Value

__all__ = ["calibration_batches", "check_labels", "check_vocabulary", "CALIBRATION_OPTIONS"]

CALIBRATION_OPTIONS = ("data", "samples", "batch_size", "max_length", "tokenizer")
"""Option names shared by every pass that reads calibration data."""


def calibration_batches(module: Module, data: str | None, samples: int, batch_size: int,
                        max_length: int, tokenizer: str | None, why: str,
                        use_labels: bool = True) -> list[Batch]:
    """Tokenized batches of ``samples`` examples from ``data`` for ``module``'s inputs.

    ``why`` names the pass and criterion in the errors. With ``use_labels`` (the caller's loss
    reads them) labels that do not fit the model's head are refused; without, they are dropped.
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
    try:
        tok: Any = load_tokenizer(ref)
    except InputError as exc:
        raise InputError(f"{why}: {exc}") from None
    check_vocabulary(module, tok, why)
    names = [v.name for v in module.graph.inputs]
    batches = load_calibration(data, tok, names, limit=samples, batch_size=batch_size,
                               max_length=max_length)
    if not batches:
        raise InputError(f"{why}: '{data}' gave no examples")
    if use_labels:
        check_labels(module, batches, f"{why}: '{data}'")
    else:
        for batch in batches:
            batch.labels = None
    return batches


def _token_embedding_rows(module: Module) -> int | None:
    """Rows of the embedding table indexed by the ``input_ids`` graph input, if any."""
    for node in module.graph:
        if node.op != "embedding" or len(node.args) < 2:
            continue
        ids, table = node.args[0], node.args[1]
        if isinstance(ids, Value) and ids.name == "input_ids" and isinstance(table, Parameter):
            return int(table.data.shape[0])
    return None


def check_vocabulary(module: Module, tokenizer: Any, why: str) -> None:
    """Refuse a tokenizer that can produce ids past the model's token embedding table."""
    rows = _token_embedding_rows(module)
    size = len(tokenizer)
    if rows is not None and size > rows:
        raise InputError(
            f"{why}: the tokenizer has {size} tokens but the model's embedding table has {rows} "
            "rows, so its ids would index past it: pass tokenizer=PATH with the model's own "
            "tokenizer"
        )


def check_labels(module: Module, batches: list[Batch], where: str) -> None:
    """Refuse labels that the model's ``logits`` head cannot be scored against."""
    logits = module.graph.outputs.get("logits")
    labelled = [b.labels for b in batches if b.labels is not None]
    if logits is None or not labelled or not isinstance(logits, Value):
        return  # no classification head, or no labels: the losses do not read labels
    shape = logits.tensor_type.shape
    classes = shape[-1] if isinstance(shape[-1], int) else None
    if len(shape) == 3:
        raise InputError(
            f"{where} has one label per example, but the model's head labels every token "
            f"(logits {_shape(shape)}, token classification): use data without labels or a "
            "sequence-classification model"
        )
    if len(shape) != 2 or classes is None:
        return
    for labels in labelled:
        if labels.is_floating_point():
            if classes != 1:
                raise InputError(
                    f"{where} has scores (float labels, e.g. STS-B) but the model's head has "
                    f"{classes} labels: use class-labelled data, or a regression model "
                    "(num_labels=1)"
                )
        else:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= classes:
                bad = high if high >= classes else low
                raise InputError(
                    f"{where} has class label {bad} but the model's head has {classes} "
                    f"label{'s' if classes != 1 else ''} (0..{classes - 1}): use data of the "
                    "task the model was made for"
                )


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
