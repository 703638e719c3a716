"""Evaluation batches: tokenize, sort by length, pad each batch to its longest row.

Sorting by length keeps padding (and so wasted compute) small; every batch carries the
indices of its examples so that predictions can be put back in the original order. A model
captured for one sequence length (``ModelLimits.length``, :mod:`optc.tasks.limits`) gets
every batch padded to that length instead (``pad_to``).

This is optc's one tokenize-and-pad path: evaluation (:func:`batches`), QA features
(:func:`feature_batches`), calibration (:func:`example_batches`, in file order) and training
(:mod:`optc.train.batching`) all tokenize with :func:`tokenize` and pad with :func:`pad_rows`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from optc.errors import InputError
from optc.tasks.records import Example
from optc.tasks.squad import QAFeature

__all__ = ["INPUT_NAMES", "Batch", "model_input_names", "batches", "feature_batches",
           "example_batches", "tokenize", "pad_rows", "pad_token_id", "pads_left"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Model inputs a tokenizer gives and optc can produce."""

_TOKENIZE_CHUNK = 1024
"""Examples tokenized per tokenizer call."""


def model_input_names(tokenizer: Any, input_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The model inputs to produce: ``input_names`` when given (checked), else the
    tokenizer's ``model_input_names`` that optc can produce (BERT: all three, RoBERTa and
    DistilBERT: no ``token_type_ids``)."""
    if input_names is None:
        names = getattr(tokenizer, "model_input_names", None) or INPUT_NAMES[:2]
        chosen = tuple(n for n in INPUT_NAMES if n in names)
        return chosen or INPUT_NAMES[:2]
    unknown = [n for n in input_names if n not in INPUT_NAMES]
    if unknown or "input_ids" not in input_names:
        raise InputError(f"cannot produce model inputs {unknown or list(input_names)}: "
                         f"input_names must include input_ids and be taken from "
                         f"{', '.join(INPUT_NAMES)}")
    return tuple(input_names)


def _check_sizes(batch_size: int, max_length: int | None = None) -> None:
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(f"{name} must be a positive integer, not {value!r}")


@dataclass
class Batch:
    """Model inputs for one batch, padded to its longest example, and the labels (what the
    passes that measure the model on calibration data iterate over)."""

    inputs: dict[str, torch.Tensor]
    """int64 (batch, seq) tensors, keyed and ordered by the requested input names."""
    labels: torch.Tensor | None
    """(batch,) long for classes, float32 for scores; ``None`` when any example has no label."""

    def __len__(self) -> int:
        """The number of examples in the batch."""
        return next(iter(self.inputs.values())).shape[0]


def pad_token_id(tokenizer: Any) -> int:
    """The id padding is written with: the tokenizer's pad token, else its end-of-sequence
    token, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return 0 if pad is None else int(pad)


def pads_left(tokenizer: Any) -> bool:
    """Whether the tokenizer pads on the left (decoder models)."""
    return getattr(tokenizer, "padding_side", "right") == "left"


def tokenize(examples: Sequence[Example], tokenizer: Any, max_length: int
             ) -> tuple[list[list[int]], list[list[int] | None]]:
    """Token ids and segment ids (``None`` per row when the tokenizer gives none) of each
    example, unpadded, truncated to ``max_length`` tokens (longest segment first); pairs are
    encoded as ``(text, text_pair)``. Refuses examples that mix single texts and pairs."""
    paired = [e.text_pair is not None for e in examples]
    if any(paired) and not all(paired):
        first = paired.index(not paired[0])
        raise InputError(f"examples mix single texts and pairs (example {first} differs from "
                         "example 0): give every example a text_pair, or none")
    ids: list[list[int]] = []
    types: list[list[int] | None] = []
    for start in range(0, len(examples), _TOKENIZE_CHUNK):
        chunk = examples[start:start + _TOKENIZE_CHUNK]
        enc = tokenizer([e.text for e in chunk],
                        text_pair=[e.text_pair for e in chunk] if paired[0] else None,
                        truncation=True, max_length=max_length, padding=False)
        ids += [list(r) for r in enc["input_ids"]]
        types += ([list(t) for t in enc["token_type_ids"]] if "token_type_ids" in enc
                  else [None] * len(chunk))
    return ids, types


def pad_rows(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int] | None],
             names: Sequence[str], pad_id: int, left: bool, pad_to: int | None = None
             ) -> dict[str, torch.Tensor]:
    """The int64 tensors ``names`` (of :data:`INPUT_NAMES`) of rows ``ids`` padded to the
    longest (or to ``pad_to``) on the left or right; ``token_type_ids`` are zeros for a row
    without segment ids."""
    width = max(len(row) for row in ids)
    if pad_to is not None:
        if width > pad_to:
            raise InputError(f"a row has {width} tokens, but the model takes sequences of "
                             f"{pad_to} tokens only: truncate to at most {pad_to} tokens "
                             "(max_length)")
        width = pad_to

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r))
                             for r in rows], dtype=torch.int64)


    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "input_ids":
            out[name] = pad([list(r) for r in ids], pad_id)
        elif name == "attention_mask":
            out[name] = pad([[1] * len(r) for r in ids], 0)
        else:
            out[name] = pad([list(t) if t is not None else [0] * len(r)
                             for r, t in zip(ids, types, strict=True)], 0)
    return out


def _order(lengths: list[int], sort: bool) -> list[int]:
    indices = list(range(len(lengths)))
    if sort:
        indices.sort(key=lambda i: (-lengths[i], i))  # longest first: a too-big batch fails early
    return indices


def batches(examples: Sequence[Example], tokenizer: Any, batch_size: int = 32,
            max_length: int = 128, input_names: Sequence[str] | None = None,
            sort: bool = True, pad_to: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``examples`` as dicts of int64 tensors: the model inputs (``input_ids``,
    ``attention_mask``, ``token_type_ids`` as :func:`model_input_names` picks them), ``labels``
    (long for classes, float32 for scores; left out when an example has no label) and
    ``index`` (each row's position in ``examples``).

    Texts and pairs are truncated to ``max_length`` tokens (longest segment first); rows are
    sorted by length (``sort``) and each batch is padded to its longest row on the
    tokenizer's padding side, or to ``pad_to`` tokens (a model captured for that length only).
    """
    _check_sizes(batch_size, max_length)
    names = model_input_names(tokenizer, input_names)
    if not examples:
        raise InputError("no examples to batch: the split is empty")
    ids, types = tokenize(examples, tokenizer, max_length)
    labels = [e.label for e in examples]
    has_labels = all(label is not None for label in labels)
    regression = has_labels and any(isinstance(label, float) for label in labels)
    pad_id, left = pad_token_id(tokenizer), pads_left(tokenizer)
    order = _order([len(r) for r in ids], sort)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = pad_rows([ids[i] for i in rows], [types[i] for i in rows], names, pad_id, left,
                         pad_to)
        if has_labels:
            batch["labels"] = (torch.tensor([float(labels[i]) for i in rows], dtype=torch.float32)
                               if regression else
                               torch.tensor([labels[i] for i in rows], dtype=torch.int64))
        batch["index"] = torch.tensor(rows, dtype=torch.int64)
        yield batch


def feature_batches(features: Sequence[QAFeature], tokenizer: Any, batch_size: int = 32,
                    input_names: Sequence[str] | None = None, sort: bool = True,
                    pad_to: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of QA features: the model inputs, ``start_positions``, ``end_positions`` and
    ``index`` (each row's position in ``features``), padded like :func:`batches`."""
    _check_sizes(batch_size)
    names = model_input_names(tokenizer, input_names)
    if not features:
        raise InputError("no QA features to batch: the split is empty")
    pad_id, left = pad_token_id(tokenizer), pads_left(tokenizer)
    order = _order([len(f) for f in features], sort)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chosen = [features[i] for i in rows]
        batch = pad_rows([f.input_ids for f in chosen], [f.token_type_ids for f in chosen],
                         names, pad_id, left, pad_to)
        width = batch["input_ids"].shape[1]
        shift = [width - len(f) if left else 0 for f in chosen]
        batch["start_positions"] = torch.tensor([f.start_position + d for f, d in zip(chosen, shift, strict=True)])
        batch["end_positions"] = torch.tensor([f.end_position + d for f, d in zip(chosen, shift, strict=True)])
        batch["index"] = torch.tensor(rows, dtype=torch.int64)
        yield batch


def example_batches(examples: Sequence[Example], tokenizer: Any, input_names: Sequence[str],
                    batch_size: int = 16, max_length: int = 128, pad_to: int | None = None
                    ) -> list[Batch]:
    """``examples`` in their order as :class:`Batch` es of ``batch_size`` (what a pass
    measures the model on): tokenized and padded as :func:`batches` does, each holding exactly
    the inputs ``input_names`` and the labels (``None`` when an example has none)."""
    names = model_input_names(tokenizer, input_names)
    return [Batch({n: b[n] for n in names}, b.get("labels"))
            for b in batches(examples, tokenizer, batch_size, max_length, names, sort=False,
                             pad_to=pad_to)]
