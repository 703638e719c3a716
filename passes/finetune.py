"""Fine-tuning as a pass: train the module's weights on a task, in the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from optc.errors import InputError, PipelineSpecError
from optc.frontends.huggingface import load_tokenizer
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.registry import register_pass
from optc.passes.support.calibration import check_vocabulary
from optc.tasks import Task, get_task
from optc.train import TrainReport, finetune, has_task_head, task_from_meta

__all__ = ["Finetune", "TrainingPass", "pass_task", "pass_tokenizer", "train_options", "report_stats"]

TRAIN_OPTIONS = ("epochs", "max_steps", "lr", "batch_size", "max_length", "warmup_ratio",
                 "weight_decay", "seed", "threads", "dropout", "holdout", "pooling")
"""Options the training passes hand to :mod:`optc.train` unchanged."""


def pass_task(p: Any, module: Module) -> Task:
    """The task of a training pass: its ``task`` option, else the one recorded in
    ``module.meta["task"]``; :class:`InputError` when neither names one."""
    if p.task is not None:
        return get_task(p.task)
    task = task_from_meta(module.meta)
    if task is None:
        raise InputError(f"{p.name} needs a task: pass task=NAME (e.g. task=sst2); the module "
                         "records none")
    return task


def pass_tokenizer(p: Any, module: Module) -> Any:
    """The tokenizer of a training pass: its ``tokenizer`` option, else the one recorded with
    the model, checked against the model's vocabulary."""
    ref = p.tokenizer or (module.meta.get("source") or {}).get("tokenizer")
    if ref is None:
        raise InputError(f"{p.name}: no tokenizer is recorded with this model; pass "
                         "tokenizer=PATH")
    try:
        tok = load_tokenizer(ref)
    except InputError as exc:
        raise InputError(f"{p.name}: {exc}") from None
    check_vocabulary(module, tok, p.name)
    return tok


def train_options(p: Any) -> dict[str, Any]:
    """The keyword arguments a training pass gives :func:`optc.train.finetune`/``distill``."""
    options = {name: getattr(p, name) for name in TRAIN_OPTIONS}
    options["eval_split"] = None if p.eval_split == "none" else p.eval_split
    options["holdout"] = int(p.holdout) if p.holdout >= 1 else p.holdout  # >= 1: a count
    return options


def check_train_options(p: Any) -> None:
    """Refuse option values no training run accepts (before any work)."""
    if p.epochs <= 0 or p.lr <= 0 or p.batch_size < 1:
        raise PipelineSpecError(f"{p.name} needs epochs > 0, lr > 0 and batch_size >= 1")
    if p.max_steps is not None and p.max_steps < 1:
        raise PipelineSpecError(f"{p.name} max_steps must be >= 1, got {p.max_steps}")
    if p.max_length is not None and p.max_length < 2:
        raise PipelineSpecError(f"{p.name} max_length must be >= 2, got {p.max_length}")
    if not 0 <= p.warmup_ratio <= 1 or p.weight_decay < 0:
        raise PipelineSpecError(f"{p.name} needs 0 <= warmup_ratio <= 1 and weight_decay >= 0")
    if p.holdout < 0:
        raise PipelineSpecError(f"{p.name} holdout must be >= 0 (a fraction or a count), "
                                f"got {p.holdout}")
    if p.dropout is not None and not 0 <= p.dropout < 1:
        raise PipelineSpecError(f"{p.name} dropout must be in [0, 1), got {p.dropout}")
    if p.threads is not None and p.threads < 1:
        raise PipelineSpecError(f"{p.name} threads must be >= 1, got {p.threads}")


def report_stats(report: TrainReport) -> dict[str, Any]:
    """Pass statistics of a training run."""
    stats: dict[str, Any] = {
        "task": report.task,
        "steps": report.steps,
        "epochs": round(report.epochs, 2),
        "loss": f"{report.loss_at(True):.4f}->{report.loss_at(False):.4f}",
    }
    if report.best is not None:
        stats[f"{report.extra.get('eval_split') or 'eval'}_{report.metric}"] = round(report.score, 2)
    stats["head_added"] = report.head_added
    return stats


def requires_task(p: Any, module: Module) -> str | None:
    """Why a training pass cannot run on ``module`` (task unknown, head unfit), or None."""
    try:
        task = pass_task(p, module)
        has_task_head(module, task, p.pooling)
    except InputError as exc:
        return str(exc)
    if "input_ids" not in [v.name for v in module.graph.inputs]:
        return "the module takes no input_ids: training needs a token-input model"
    return None


@dataclass(frozen=True)
class TrainingPass(Pass):
    """Options every training pass shares (not a pass itself: ``finetune`` and ``distill``
    extend it)."""

    task: str | None = None
    """Task name or spec (sst2, squad, text-classification{labels=neg,pos}); default: the
    task recorded with the module."""
    data: str | None = None
    """Task data: a task directory or file (default: the task's directory under
    $OPTC_DATA_DIR; CLI: --data)."""
    epochs: float = 3.0
    """Passes over the training data."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    lr: float = 5e-5
    """Peak learning rate (AdamW)."""
    batch_size: int = 32
    """Training batch size."""
    max_length: int | None = None
    """Token limit per example (default 128; 384 for QA)."""
    warmup_ratio: float = 0.1
    """Fraction of the steps with linear learning-rate warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorm weights)."""
    seed: int = 0
    """Seed of the head initialization, shuffling, dropout and validation split."""
    threads: int | None = None
    """Torch threads while training (default: unchanged)."""
    eval_split: Literal["dev", "val", "none"] = "val"
    """Where the best weights are chosen: the validation part of train that ``holdout`` leaves
    out (val, the default), dev (recorded and flagged: dev figures then are optimistic), or
    nowhere (none: the last weights are kept)."""
    holdout: float = 0.15
    """Validation split carved from train and never trained on (fraction, or a count >= 1;
    0: train on all of train), so that a later search sees unseen data."""
    dropout: float | None = None
    """Train-mode dropout (default: the source model's, else 0.1)."""
    tokenizer: str | None = None
    """Tokenizer directory or id (default: the one recorded with the model)."""
    pooling: Literal["auto", "pooler", "cls", "mean"] = "auto"
    """What a new classification / regression head reads: the pooler output, the first token
    (cls), the attention-masked mean of the tokens (mean: what sentence-transformers encoders
    such as all-MiniLM-L6-v2 were trained with), or auto (the pooler when the model has one,
    else cls); recorded in meta["task"]["pooling"]. An existing head keeps its pooling."""

    def __post_init__(self) -> None:
        check_train_options(self)
        if self.task is not None:
            try:
                get_task(self.task)
            except InputError as exc:
                raise PipelineSpecError(f"{self.name}: {exc}") from None

    @property
    def uses_data(self) -> bool:
        """Training always reads task data (the CLI's --data fills it)."""
        return True

    def requires(self, module: Module) -> str | None:
        return requires_task(self, module)


@register_pass
@dataclass(frozen=True)
class Finetune(TrainingPass):
    """Fine-tune the module's weights on a task (best evaluation weights written back).

    Rewrites: every floating-point parameter gets a new tensor with the trained values; a
    module without the task's head gets one (``linear`` on the pooled output, or start/end
    logits for QA) and its outputs become the head's; ``meta["task"]`` records the task and
    the best evaluation. Sparsity-attributed weights keep their zeros.
    Refuses: no task (option or recorded), a head that does not fit the task, empty data,
    a tokenizer larger than the model's vocabulary.
    Data: the task's train split from ``data`` (a task directory; a single file is split into
    train and a seeded validation part), evaluated on ``eval_split`` after each epoch.
    """

    name = "finetune"

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        task = pass_task(self, module)
        tokenizer = pass_tokenizer(self, module)
        data: str | os.PathLike | None = self.data
        report = finetune(module, task, data, tokenizer=tokenizer, progress=ctx.progress,
                          **train_options(self), **ctx.train_options())
        return PassResult(True, report_stats(report))
