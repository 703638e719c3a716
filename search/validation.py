"""The search's validation examples: where they come from (a part carved from train or a
file), the parts kept out of the search (``holdout`` for the contract, ``confirm`` for the
confirmation), batching them for the runner, the label-free task's reference embeddings, the
checks that a module can be searched, and :func:`validate` (a module measured on them as the
search measures its candidates)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from optc.errors import InputError
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.search.candidates import Config
from optc.search.options import SearchOptions
from optc.search.runner import GatedRunner, Outcome, attach_reference, prepare_batches
from optc.tasks.batching import INPUT_NAMES
from optc.tasks.registry import get_task
from optc.tasks.task import EMBEDDING_KINDS, Task
from optc.train.heads import has_task_head, has_token_states

__all__ = ["MIN_VALIDATION", "Split", "validate", "validation_examples", "held_out_examples",
           "holdout_options", "check_searchable", "check_module", "input_names",
           "validation_splits", "with_reference", "validation_source"]

MIN_VALIDATION = 20
"""Fewer validation examples than this make the majority vote meaningless."""


def input_names(module: Module) -> tuple[str, ...]:
    """The model inputs (of :data:`~optc.tasks.INPUT_NAMES`) that ``module`` takes."""
    return tuple(v.name for v in module.graph.inputs if v.name in INPUT_NAMES)


def check_searchable(module: Module, task: Task) -> None:
    """Raise :class:`InputError` when ``module`` has no head for ``task`` (or one that does
    not fit it) or no transformer layers to search."""
    check_module(module, task)


def check_module(module: Module, task: Task, search: bool = True) -> None:
    """:func:`check_searchable`; ``search=False`` skips the transformer-layer check (a module
    only measured, not searched)."""
    if task.kind in EMBEDDING_KINDS:  # scored on the pooled token states: no head
        has_token_states(module, task)
    elif not has_task_head(module, task):
        raise InputError(f"module @{module.name} has no task head for '{task.name}': fine-tune "
                         "it first (optc finetune --task ...), then specialize the result")
    if search and not analyze(module).layers:
        raise InputError(f"module @{module.name} has no transformer layers to specialize")


@dataclass
class Split:
    """Validation examples ready for the runner."""

    batches: list[dict[str, torch.Tensor]]
    metric_of: Callable[[Outcome], float | None]
    """An outcome's task metric (None for QA, whose search judges the span loss)."""
    count: int


def validation_splits(task: Task, tokenizer: Any, data: Any, options: SearchOptions,
                      names: tuple[str, ...]) -> tuple[Split, Split | None]:
    """The search's validation examples and, with ``options.confirm``, the part kept out of
    the search to confirm it (else None)."""
    examples, confirm = _split_examples(task, data, options)
    more = ("a larger validation file" if options.val_data is not None
            else "more training data, a larger --val-size")
    if confirm is None and len(examples) < MIN_VALIDATION:
        raise InputError(f"the validation split has {len(examples)} examples; the search needs "
                         f"at least {MIN_VALIDATION} (give {more}, or no --val-limit)")
    if confirm is not None and min(len(examples), len(confirm)) < MIN_VALIDATION:
        raise InputError(f"the validation split has {len(examples) + len(confirm)} examples: "
                         f"{len(examples)} to search and {len(confirm)} to confirm with "
                         f"--confirm {options.confirm:g}; each part needs at least "
                         f"{MIN_VALIDATION} (give {more}, or no --val-limit)")

    def ready(part: list[Any]) -> Split:
        batches = prepare_batches(task, part, tokenizer, options.batch_size,
                                  options.max_length, names)
        labels = [e.label for e in part] if task.kind != "extractive-qa" else None

        def metric_of(outcome: Outcome) -> float | None:
            if labels is None:
                return None
            return task.compute_metrics(outcome.predictions, labels)[task.main_metric]

        return Split(batches, metric_of, len(part))

    return ready(examples), None if confirm is None else ready(confirm)


def with_reference(split: Split, reference: Module, task: Task, names: tuple[str, ...]
                    ) -> Split:
    """``split`` with ``reference``'s embeddings of its texts attached (the label-free
    ``embedding`` task's targets)."""
    vectors = GatedRunner(module=reference, task=task, batches=split.batches, input_names=names,
                          prefix_reuse=False).embeddings()
    return replace(split, batches=attach_reference(split.batches, vectors))


def holdout_options(options: SearchOptions, meta: dict[str, Any], val_size: float | None = None,
                    seed: int | None = None) -> tuple[SearchOptions, str | None]:
    """``options`` that search on the split a fine-tuning held out (``meta["task"]["holdout"]``:
    its ``val_size`` and ``seed``) unless ``val_size``/``seed`` are given, and a warning (None
    when there is nothing to warn about) when the model has trained on part of that split."""
    info = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    held = info.get("holdout") or {}
    held_split = (held["val_size"], held.get("seed", 0)) if held.get("val_size") else None
    default = held_split or (options.val_size, options.seed)
    options = replace(options, val_size=default[0] if val_size is None else val_size,
                      seed=default[1] if seed is None else seed)
    if held_split is not None and (options.val_size, options.seed) != held_split:
        return options, (f"the validation split (val_size={options.val_size}, seed="
                         f"{options.seed}) is not the one held out at fine-tuning (val_size="
                         f"{held_split[0]}, seed={held_split[1]}): the model has trained on "
                         "part of it, so removals look worse than they are")
    if held_split is None and int(info.get("trained_steps", 0) or 0) > 0:
        return options, ("this model was fine-tuned on all of train (no holdout recorded): the "
                         "validation split is data it has seen, so few removals will be "
                         "accepted; fine-tune with --holdout 0.15 (the default) for a fair "
                         "search, or give held-out labelled examples with --val-data")
    return options, None


def held_out_examples(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    """The part of the validation examples that ``options.holdout`` keeps out of the search
    (empty without it), in a stable order."""
    return _held_out(task, _all_validation(task, data, options), options)[1]


def _all_validation(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    if options.val_data is not None:
        return task.read_file(options.val_data, "val", limit=options.val_limit)
    return task.read("val", data, val_size=options.val_size, seed=options.seed,
                     limit=options.val_limit)


def _held_out(task: Task, examples: list[Any], options: SearchOptions
              ) -> tuple[list[Any], list[Any]]:
    """(examples the search may see, held-out examples) for ``options.holdout``."""
    if not options.holdout or len(examples) < 2:
        return examples, []
    try:
        seen, held = task.split(examples, options.holdout, options.seed)
    except InputError:  # too few examples to split: the contract reports too few
        return examples, []
    return [examples[i] for i in seen], [examples[i] for i in held]


def validation_examples(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    """The examples the search judges its candidates on: ``options.val_data``'s, else the
    ``val_size`` part of ``data``'s train split (``val_limit``: the first N), less the part
    ``options.confirm`` keeps out to confirm the search."""
    return _split_examples(task, data, options)[0]


def _split_examples(task: Task, data: Any, options: SearchOptions
                    ) -> tuple[list[Any], list[Any] | None]:
    """(examples to search, examples to confirm or None): the confirmation part is a seeded
    split of the validation examples, stratified like the validation split itself."""
    examples = _held_out(task, _all_validation(task, data, options), options)[0]
    if not options.confirm:
        return examples, None
    if len(examples) < 2:
        return examples, []
    try:
        search, confirm = task.split(examples, options.confirm, options.seed)
    except InputError:  # too few examples or contexts to split: reported as too few
        return examples, []
    return [examples[i] for i in search], [examples[i] for i in confirm]


def validation_source(options: SearchOptions) -> dict[str, Any]:
    """Where the validation examples came from, as recorded in the metadata."""
    source: dict[str, Any] = ({"file": os.fspath(options.val_data)} if options.val_data is not None
                              else {"val_size": options.val_size, "seed": options.seed})
    if options.val_limit is not None:
        source["limit"] = options.val_limit
    if options.holdout:
        source["holdout"] = options.holdout
    return source


def validate(module: Module, task: Task | str, tokenizer: Any, data: Any = None,
             options: SearchOptions | None = None,
             reference: Module | None = None) -> tuple[float, float | None]:
    """Mean loss and task metric (None for QA) of ``module`` on the search's validation split,
    measured as the search measures its candidates: e.g. a ``--then`` pipeline's result,
    judged on the same examples as the search without looking at the dev set. The label-free
    ``embedding`` task scores it against ``reference``'s embeddings (else its own)."""
    options = options or SearchOptions()
    task = get_task(task) if isinstance(task, str) else task
    check_module(module, task, search=False)
    names = input_names(module)
    split, _ = validation_splits(task, tokenizer, data, options, names)
    if task.needs_reference:
        split = with_reference(split, reference or module, task, names)
    outcome = GatedRunner(module=module, task=task, batches=split.batches, input_names=names,
                          prefix_reuse=False).evaluate(Config())
    return outcome.mean_loss, split.metric_of(outcome)

