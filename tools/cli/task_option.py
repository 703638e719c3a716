"""``--task`` and ``--head`` of ``optc MODEL`` (compile) and ``optc inspect``.

``--task`` names a data task everywhere, as in ``optc finetune``, ``optc eval`` and ``optc
specialize`` (``sst2``, ``squad``, ``text-classification{labels=neg,pos}``; ``optc tasks``
lists them). On compile it is the task of the passes that read task data (``finetune``,
``distill``, ``quantize{max_drop=...}``, ...: their ``task=`` when the spec leaves it out;
calibration passes read ``--data`` as the task reads it, and its data directory when
``--data`` is not given), and it implies its
head: the model gets the head the task needs (sst2: a sequence classifier over 2 labels) and
records the task, so that ``optc eval OUT`` needs no ``--task``. A model whose head does not
fit the task is refused. A training pass in the pipeline adds the head itself (with its own
``pooling=``); otherwise it is added after loading, initialized at random (seed 0), and named
in ``meta["source"]["newly_initialized"]`` like a head the checkpoint lacked, so that ``optc
eval`` refuses to score it until it is trained.

``--head NAME`` loads the model with a Hugging Face head alone (``AutoModelFor...``: base,
sequence-classification, question-answering, token-classification; auto: what the config
says). The old spelling, a head name given to ``--task`` (``--task sequence-classification``),
still works as ``--head`` with a one-line note on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from optc.errors import InputError, PipelineSpecError

__all__ = ["HEAD_CHOICES", "add_task_arguments", "resolve_task_option", "fill_task",
           "give_head"]

HEAD_CHOICES = ("auto", "base", "sequence-classification", "question-answering",
                "token-classification")
"""The heads ``--head`` loads (a bad one is a bad option value, exit 2)."""

_log = logging.getLogger("optc")


def add_task_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """``--task`` (a data task) and ``--head`` (a model head alone) on parser ``p``."""
    p.add_argument("--task", metavar="TASK",
                   help="data task, as in optc finetune and optc eval (sst2, squad, "
                        "text-classification{labels=neg,pos}; list: optc tasks): " + what +
                        "; it implies its head (sst2: sequence classification over 2 labels). "
                        "A head name here (--task sequence-classification) is the old "
                        "spelling of --head, still accepted with a note")
    p.add_argument("--head", choices=HEAD_CHOICES, default=None, metavar="HEAD",
                   help="model head to load, for model directories and ids: "
                        + ", ".join(HEAD_CHOICES) + " (default auto: from the model's config)")


def resolve_task_option(args: argparse.Namespace, parser: argparse.ArgumentParser,
                        stream: Any = None) -> tuple[str, Any]:
    """(the head to load, the data task or None) from ``args.task`` and ``args.head``. A head
    name in ``--task`` is taken as ``--head`` with a note on ``stream`` (stderr); a bad task
    spec is a bad option value (exit 2), before any slow work."""
    from optc.tasks import get_task

    if args.task in HEAD_CHOICES:
        if args.head is not None and args.head != args.task:
            parser.error(f"--task {args.task} (a head: the old spelling of --head) and "
                         f"--head {args.head} disagree: give --head alone")
        (stream or sys.stderr).write(
            f"optc: note: --task {args.task} names a model head, the old spelling: use --head "
            f"{args.task} (--task now names a data task, e.g. sst2, as in optc finetune)\n")
        return args.task, None
    if args.task is None:
        return args.head or "auto", None
    try:
        task = get_task(args.task)
    except InputError as exc:
        raise PipelineSpecError(f"--task: {exc}") from None
    if args.head not in (None, "auto", task.head):
        parser.error(f"--head {args.head} is not the head task {task.name} reads "
                     f"({task.head}): drop --head")
    return args.head or "auto", task


def fill_task(passes: list[Any], spec: str) -> list[Any]:
    """``passes`` with ``task=spec`` where a pass takes a task and its spec left it out (the
    passes that calibrate get the task in their context instead, and read their data, or
    without ``--data`` the task's own directory, as the task reads it)."""
    from optc.passes.finetune import TrainingPass

    return [dataclasses.replace(p, task=spec) if isinstance(p, TrainingPass) and p.task is None
            else p for p in passes]


def give_head(module: Any, task: Any, spec: str, passes: list[Any]) -> None:
    """Give ``module`` the head ``task`` implies, in place: a fitting head is kept and the
    task recorded; a head that does not fit is refused (InputError); a missing one is left to
    the first training pass of ``passes`` (which adds it with its own options), else added
    now at random and named in ``meta["source"]["newly_initialized"]``. Tasks with no head
    (the embedding tasks) leave the module as it is."""
    from optc.tools.cli.preflight import reads_task
    from optc.train import add_task_head, has_task_head

    if not task.trainable:
        return
    if has_task_head(module, task):
        add_task_head(module, task, spec=spec)  # records the task
        return
    if any(reads_task(p) for p in passes):
        return  # the training pass adds it
    before = set(module.params)
    add_task_head(module, task, spec=spec)
    fresh = sorted(set(module.params) - before)
    source = dict(module.meta.get("source") or {})
    source["newly_initialized"] = sorted(set(source.get("newly_initialized") or ()) | set(fresh))
    module.meta["source"] = source
    _log.warning("added the %s head of task %s, initialized randomly (seed 0): %s; the head is "
                 "untrained", task.head, task.name, ", ".join(fresh))
