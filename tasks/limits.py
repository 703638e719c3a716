"""What a model can take, checked before any example is tokenized: the longest sequence its
position table allows and the size of its token vocabulary.

    limits = model_limits(model)                      # ModelLimits(positions=512, vocabulary=30522)
    length = fit_max_length(task, max_length, limits) # 128 / 384 (QA) by default, within the table
    check_tokenizer(tokenizer, limits, "evaluating sst2")

A token limit beyond the position table would crash inside the model. The task's default
(128 tokens, 384 for QA) is clamped to the table with one note on the ``optc`` logger; a value
the user chose is refused (:class:`~optc.errors.PipelineSpecError`, a bad option). A tokenizer
with more tokens than the embedding table has rows is refused
(:func:`optc.backends.model_inputs.check_vocabulary`). The usable length of RoBERTa- and
MPNet-style tables, whose first rows are reserved for padding, is the table less those rows
(:func:`optc.frontends.capture.max_sequence_length`; a captured module records it as the
range of its sequence dimension). A module captured for one sequence length
(:func:`optc.backends.model_inputs.fixed_length`) has ``ModelLimits.length``: texts are cut to
it and every batch is padded to it (``pad_to`` of :func:`optc.tasks.batching.batches`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from optc.backends.eager import EagerModule
from optc.backends.model_inputs import (
    check_vocabulary,
    fixed_length,
    seq_range,
    token_vocabulary,
)
from optc.errors import PipelineSpecError
from optc.frontends.capture import is_hf_model, max_sequence_length
from optc.ir.core import Module
from optc.tasks.task import Task

__all__ = ["ModelLimits", "check_tokenizer", "default_max_length", "fit_max_length",
           "model_limits"]

_log = logging.getLogger("optc")


@dataclass(frozen=True)
class ModelLimits:
    """What a model can take (None: not known, not checked)."""

    positions: int | None = None
    """The longest sequence its position table allows."""
    vocabulary: int | None = None
    """Rows of its token embedding table (token ids must stay below)."""
    length: int | None = None
    """The one sequence length it takes, when it was captured for one (its code turns the
    length into a constant): every batch is padded to it."""


def model_limits(model: Any) -> ModelLimits:
    """The limits of an IR module, a compiled one (``optc.load``, ``optc.to_eager``) or a
    Hugging Face model; nothing is known of other callables (ONNX, TorchScript)."""
    if isinstance(model, EagerModule):
        model = model.ir
    if isinstance(model, Module):
        return ModelLimits(seq_range(model)[1], token_vocabulary(model), fixed_length(model))
    if is_hf_model(model):
        table = model.get_input_embeddings()
        rows = getattr(table, "num_embeddings", None)
        return ModelLimits(max_sequence_length(model.config), rows)
    return ModelLimits()


def default_max_length(task: Task) -> int:
    """The token limit used when none is given: 128 tokens, 384 for QA (whose contexts are
    split into windows)."""
    return 384 if task.kind == "extractive-qa" else 128


def fit_max_length(task: Task, max_length: int | None, limits: ModelLimits) -> int:
    """``max_length``, or the task's default clamped to the position table (with a note);
    an explicit ``max_length`` beyond the table is refused. A model captured for one length
    takes texts of up to that length by default (every batch is padded to it anyway), and
    refuses a longer ``max_length``."""
    positions = limits.positions
    if limits.length is not None:
        if max_length is not None and max_length > limits.length:
            raise PipelineSpecError(f"max_length {max_length} (--max-length) is longer than "
                                    f"the {limits.length} tokens the model was captured for: "
                                    f"give at most {limits.length} tokens")
        if max_length is None and limits.length < default_max_length(task):
            _log.warning("the model was captured for sequences of %d tokens only: texts are "
                         "cut to %d tokens (the default max_length is %d)", limits.length,
                         limits.length, default_max_length(task))
        return max_length or limits.length
    if max_length is not None:
        if positions is not None and max_length > positions:
            raise PipelineSpecError(f"max_length {max_length} (--max-length) is longer than the "
                                    f"model's position table: give at most {positions} tokens")
        return max_length
    length = default_max_length(task)
    if positions is not None and length > positions:
        _log.warning("the default max_length %d is longer than the model's position table: "
                     "using %d tokens", length, positions)
        return positions
    return length


def check_tokenizer(tokenizer: Any, limits: ModelLimits, why: str) -> None:
    """Refuse a tokenizer whose ids would index past the model's token embedding table."""
    try:
        size = len(tokenizer)
    except TypeError:  # not a Hugging Face tokenizer: nothing known
        return
    check_vocabulary(limits.vocabulary, size, why,
                     fix="use the model's own tokenizer (--tokenizer DIR, tokenizer=)")
