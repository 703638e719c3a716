"""Fine-tuning and distillation of an IR module on a task.

Both run the module's :class:`~optc.train.module.TrainableModule` (dropout on in train mode,
sparsity masks enforced) with AdamW (no weight decay on biases and LayerNorm weights, i.e. on
1-D parameters), a linear warm-up then linear decay of the learning rate, gradient clipping
at 1.0 and length-grouped batches, all seeded. At the end of each epoch (and when
``max_steps`` stops training early) the model is evaluated with :func:`optc.tasks.evaluate`
in eval mode; the best weights by the task's main metric are written back into the IR (new
tensors; the IR is never edited in place). A module without the task's head gets one
(:func:`~optc.train.heads.add_task_head`).

Data: the task's ``train`` split (from ``data``, or the task's conventional directory) is
trained on. ``eval_split="val"`` (the default) chooses the best weights on the seeded
validation split carved out of train (``holdout``), which is never trained on, so that dev stays
a report-only split; ``eval_split="dev"`` chooses them on dev (an explicit choice, recorded in
``meta["task"]["eval"]`` and flagged by ``optc eval`` and ``optc report``, whose dev figures it
makes optimistic); ``None`` does not evaluate (the final weights are kept). ``train_examples`` /
``eval_examples`` replace the splits (e.g. SQuAD, which has no train file here).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optc.backends.eager import to_eager
from optc.backends.model_inputs import check_vocabulary, token_vocabulary
from optc.data import Example, SquadRecord
from optc.errors import InputError
from optc.ir.analysis import Structure
from optc.ir.core import Module
from optc.tasks import DEFAULT_VAL_SIZE, Task, evaluate, get_task, validation_split
from optc.tasks.limits import check_tokenizer, fit_max_length, model_limits
from optc.train.batching import Encoded, collate, encode, input_names_of, length_grouped
from optc.train.heads import add_task_head, has_task_head
from optc.train.hooks import TrainHooks
from optc.train.losses import hidden_state_loss, soft_target_loss
from optc.train.losses import layer_map as map_layers
from optc.train.module import (
    HIDDEN_PREFIX,
    TrainableModule,
    hidden_state_values,
    trainable,
    write_back,
)

__all__ = ["finetune", "distill", "TrainReport", "EvalRecord", "StepInfo", "ProgressFn",
           "make_optimizer", "linear_schedule"]

Examples = Sequence[Example] | Sequence[SquadRecord]


@dataclass(frozen=True)
class StepInfo:
    """What the progress callback receives after each optimizer step."""

    step: int
    """Steps done (1-based)."""
    total: int
    """Steps planned."""
    epoch: float
    """Epochs done, fractional."""
    loss: float
    """This step's training loss."""
    lr: float
    """Learning rate used by this step."""
    step_seconds: float
    """Wall time of this step."""
    eta_seconds: float
    """Estimated time left for the remaining steps (mean step time so far; evaluation not
    included)."""
    terms: dict[str, float] = field(default_factory=dict)
    """Numbers reported by the training hooks (loss terms, current sparsity, ...)."""


ProgressFn = Callable[[StepInfo], None]


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation during training."""

    epoch: float
    step: int
    metrics: dict[str, float]
    score: float
    """The main metric (NaN counts as worse than any number)."""
    loss: float
    """Mean evaluation loss."""
    seconds: float


@dataclass
class TrainReport:
    """What a fine-tuning or distillation run did."""

    task: str
    metric: str
    """The task's main metric."""
    steps: int
    epochs: float
    train_examples: int
    """Training items (examples; QA: features)."""
    seconds: float
    """Wall time, evaluation included."""
    losses: list[float] = field(default_factory=list)
    """Training loss of each step."""
    evals: list[EvalRecord] = field(default_factory=list)
    best: EvalRecord | None = None
    """The evaluation whose weights were written back (None: no evaluation, final weights)."""
    head_added: bool = False
    """Whether a task head was added to the module."""
    params_written: int = 0
    """IR parameters written back."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Run details (distillation: soft targets used, layer map, loss weights)."""

    @property
    def score(self) -> float | None:
        """The best evaluation's main metric, or None without evaluation."""
        return self.best.score if self.best is not None else None

    def loss_at(self, start: bool, window: int = 10) -> float:
        """Mean training loss of the first (``start``) or last ``window`` steps."""
        part = self.losses[:window] if start else self.losses[-window:]
        return sum(part) / len(part) if part else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "task": self.task, "metric": self.metric, "score": self.score,
            "steps": self.steps, "epochs": round(self.epochs, 3),
            "train_examples": self.train_examples, "seconds": round(self.seconds, 2),
            "first_loss": self.loss_at(True), "last_loss": self.loss_at(False),
            "evals": [{"epoch": round(e.epoch, 3), "step": e.step, "metrics": e.metrics}
                      for e in self.evals],
            "head_added": self.head_added, **self.extra,
        }


# -- optimizer and schedule -------------------------------------------------------------------
def make_optimizer(model: TrainableModule, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on biases and LayerNorm weights)."""
    decay, plain = [], []
    for _, param in model.named_ir_parameters():
        (decay if param.dim() >= 2 else plain).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    if count is None:
        yield
        return
    if count < 1:
        raise InputError(f"threads must be at least 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InputError(f"{name} must be positive, got {value!r}")


# -- data ---------------------------------------------------------------------------------------
def _splits(task: Task, data: str | os.PathLike | None, eval_split: str | None, seed: int,
            train_examples: Examples | None, eval_examples: Examples | None,
            holdout: float | int = DEFAULT_VAL_SIZE,
            ) -> tuple[list[Any], list[Any] | None, str | None]:
    """(train examples, evaluation examples or None, the split evaluated on). The
    validation split (``holdout`` of train, seeded by ``seed``) is never trained on, so a
    later search (``optc specialize``, ``quantize{max_drop=...}``) judges on unseen data."""
    if eval_split not in ("dev", "val", None):
        raise InputError(f"eval_split must be dev, val or None, not {eval_split!r}")
    if train_examples is None and eval_examples is None and _same_file(task, data):
        # One file for both (a single file, or SQuAD's dev file alone): train on a seeded
        # part of it and evaluate on the rest.
        source = list(task.read("dev", data))
        labels = groups = None
        if task.kind == "extractive-qa":
            groups = [r.context for r in source]
        else:
            labels = [e.label for e in source]
        train_idx, val_idx = validation_split(task.kind, labels, groups, len(source), seed=seed)
        train_examples = [source[i] for i in train_idx]
        if eval_split is not None:
            eval_examples, eval_split = [source[i] for i in val_idx], "val"
    if train_examples is None:
        if eval_split == "val" and not holdout:
            raise InputError("eval_split=val (the default) chooses the best weights on a "
                             "validation split carved from train, so holdout must be > 0: give "
                             "a holdout, or eval_split none (keep the last weights) or dev "
                             "(choose on dev, which then stops being an honest report)")
        train = list(task.read("train", data, val_size=holdout, seed=seed))
    else:
        train = list(train_examples)
    if eval_examples is not None:
        evals: list[Any] | None = list(eval_examples)
    elif eval_split is None:
        evals = None
    else:
        extra = {"val_size": holdout} if eval_split == "val" else {}
        evals = list(task.read(eval_split, data, seed=seed, **extra))
    if not train:
        raise InputError(f"no training examples for task '{task.name}': the data is empty")
    if evals is not None and not evals:
        raise InputError(f"no evaluation examples for task '{task.name}': the split is empty")
    return train, evals, eval_split


def _same_file(task: Task, data: str | os.PathLike | None) -> bool:
    """Whether ``data`` gives the same file for train and dev (a single file, or a directory
    with only a dev file such as SQuAD's)."""
    if data is None and task.data_path is None:
        return False
    try:
        return task.data_file("train", data) == task.data_file("dev", data)
    except InputError:
        try:  # no train file: train on a part of the dev file, evaluate on the rest
            task.data_file("dev", data)
        except InputError:
            return False
        return True


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return 0 if pad is None else int(pad)


def _better(score: float, best: EvalRecord | None) -> bool:
    if math.isnan(score):
        return best is None
    return best is None or math.isnan(best.score) or score > best.score


# -- the engine shared by finetune and distill ---------------------------------------------
EditFn = Callable[[Module, Structure], None]
"""Rewrites the working copy of the IR a trainable module is built from (see ``trainable``)."""

LossFn = Callable[[TrainableModule, dict[str, torch.Tensor], tuple[str, ...]], torch.Tensor]


def _run(module: Module, task: Task, items: list[Encoded], evals: list[Any] | None,
         tokenizer: Any, model: TrainableModule, loss_fn: LossFn, *, epochs: float,
         max_steps: int | None, lr: float, batch_size: int, max_length: int,
         warmup_ratio: float, weight_decay: float, seed: int, progress: ProgressFn | None,
         eval_batch_size: int, report: TrainReport,
         hooks: TrainHooks | None = None) -> TrainReport:
    hooks = hooks or TrainHooks()
    names = input_names_of(model.input_names)
    pad_id = _pad_id(tokenizer)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    qa = task.kind == "extractive-qa"
    per_epoch = math.ceil(len(items) / batch_size)
    total = math.ceil(per_epoch * epochs)
    if max_steps is not None:
        total = min(total, max_steps)
    total = max(total, 1)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = linear_schedule(optimizer, math.ceil(warmup_ratio * total), total)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(i) for i in items]

    def run_eval(step: int) -> None:
        model.eval()
        result = evaluate(task, model, evals, tokenizer, batch_size=eval_batch_size,
                          max_length=max_length, input_names=names)
        model.train()
        record = EvalRecord(step / per_epoch, step, dict(result.metrics), result.score,
                            result.mean_loss, result.seconds)
        report.evals.append(record)
        if hooks.keep_best(step) and _better(record.score, report.best):
            report.best = record
            best_state[0] = model.state()

    best_state: list[dict[str, torch.Tensor] | None] = [None]
    begin = time.perf_counter()
    step_time = 0.0
    step = 0
    model.train()
    model.apply_masks()
    hooks.start(model, total)
    while step < total:
        batches = length_grouped(lengths, batch_size, generator)
        for rows in batches:
            start = time.perf_counter()
            batch = collate([items[i] for i in rows], names, pad_id, left, qa)
            hooks.before_step(model, step)
            loss = loss_fn(model, batch, names)
            extra = hooks.loss(model, step)
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss.detach()):
                raise InputError(f"training loss became {float(loss)} at step {step + 1}: lower "
                                 "the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.mask_gradients()
            torch.nn.utils.clip_grad_norm_([p for _, p in model.named_ir_parameters()], 1.0)
            used_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            model.apply_masks()
            terms = hooks.after_step(model, step)
            step += 1
            seconds = time.perf_counter() - start
            step_time += seconds
            value = float(loss.detach())
            report.losses.append(value)
            if progress is not None:
                progress(StepInfo(step, total, step / per_epoch, value, used_lr, seconds,
                                  step_time / step * (total - step), dict(terms)))
            if evals is not None and (step % per_epoch == 0 or step == total):
                run_eval(step)
            if step >= total:
                break
    if best_state[0] is not None:
        model.load_state(best_state[0])
    hooks.finish(model)
    report.params_written = len(write_back(model, module))
    if isinstance(module.meta.get("task"), dict):
        module.meta["task"]["trained_steps"] = int(module.meta["task"].get("trained_steps", 0)) + step
        module.meta["task"]["max_length"] = max_length
    if isinstance(module.meta.get("task"), dict) and "holdout" in report.extra:
        module.meta["task"]["holdout"] = report.extra["holdout"]
    if report.best is not None and isinstance(module.meta.get("task"), dict):
        module.meta["task"]["eval"] = {"split": report.extra.get("eval_split"),
                                       "metrics": dict(report.best.metrics),
                                       "step": report.best.step}
    report.steps = step
    report.epochs = step / per_epoch
    report.seconds = time.perf_counter() - begin
    return report


def _prepare(module: Module, task: Task | str, data: Any, tokenizer: Any, *, seed: int,
             eval_split: str | None, train_examples: Examples | None,
             eval_examples: Examples | None, max_length: int | None, batch_size: int,
             epochs: float, lr: float, max_steps: int | None, doc_stride: int | None,
             holdout: float | int = DEFAULT_VAL_SIZE, pooling: str = "auto",
             ) -> tuple[Task, list[Encoded], list[Any] | None, int, bool, str | None]:
    spec = task if isinstance(task, str) else None  # recorded as given when it rebuilds the task
    task = get_task(task) if isinstance(task, str) else task
    if tokenizer is None:
        raise InputError("training needs the model's tokenizer: pass tokenizer= (e.g. "
                         "optc.frontends.huggingface.load_tokenizer(path))")
    _positive("epochs", epochs)
    _positive("lr", lr)
    _positive("batch_size", batch_size)
    _positive("max_steps", max_steps, allow_none=True)
    limits = model_limits(module)
    check_tokenizer(tokenizer, limits, f"training {task.name}")
    length = fit_max_length(task, max_length or None, limits)
    has_task_head(module, task, pooling)  # a head that does not fit fails before slow work
    train, evals, split = _splits(task, data, eval_split, seed, train_examples, eval_examples,
                                  holdout)
    items = encode(task, train, tokenizer, length, doc_stride)
    head_added = add_task_head(module, task, seed, spec=spec, pooling=pooling)  # the module changes from here on
    return task, items, evals, length, head_added, split


def finetune(module: Module, task: Task | str, data: str | os.PathLike | None = None, *,
             tokenizer: Any = None, epochs: float = 3, max_steps: int | None = None,
             lr: float = 5e-5, batch_size: int = 32, max_length: int | None = None,
             warmup_ratio: float = 0.1, weight_decay: float = 0.01, seed: int = 0,
             threads: int | None = None, eval_split: str | None = "val",
             progress: ProgressFn | None = None, dropout: float | None = None,
             masked: Sequence[str] = (), train_examples: Examples | None = None,
             eval_examples: Examples | None = None, eval_batch_size: int = 64,
             doc_stride: int | None = None, hooks: TrainHooks | None = None,
             edit: EditFn | None = None,
             holdout: float | int = DEFAULT_VAL_SIZE, pooling: str = "auto") -> TrainReport:
    """Fine-tune ``module`` (in place) on ``task`` with the task's loss.

    ``max_length`` defaults to 128 tokens (384 for QA); ``dropout`` to the source model's
    (see :func:`~optc.train.module.dropout_probability`); ``masked`` names parameters whose
    zeros stay zero on top of those with a Sparsity attribute. Returns a
    :class:`TrainReport`; the best weights (by the main metric on ``eval_split``) end up in
    the IR. ``hooks`` and ``edit``: see :mod:`optc.train.hooks`. ``holdout``: the validation
    split carved from train (fraction or count, seeded by ``seed``; 0: train on everything) is
    left out of training, so that searches on it later see unseen data; it is recorded in
    ``meta["task"]["holdout"]``. ``pooling``: what a new classification / regression head
    reads (auto, pooler, cls, mean; see :func:`~optc.train.heads.add_task_head`), recorded in
    ``meta["task"]["pooling"]``.
    """
    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task, items, evals, length, head_added, split = _prepare(
            module, task, data, tokenizer, seed=seed, eval_split=eval_split,
            train_examples=train_examples, eval_examples=eval_examples, max_length=max_length,
            batch_size=batch_size, epochs=epochs, lr=lr, max_steps=max_steps,
            doc_stride=doc_stride, holdout=holdout, pooling=pooling)
        model = trainable(module, dropout=dropout, masked=masked, edit=edit)

        def loss_fn(model: TrainableModule, batch: dict[str, torch.Tensor],
                    names: tuple[str, ...]) -> torch.Tensor:
            outputs = model(**{k: batch[k] for k in names})
            return task.loss(outputs, _labels(task, batch), attention_mask=batch["attention_mask"])

        report = TrainReport(task.name, task.main_metric, 0, 0.0, len(items), 0.0,
                             head_added=head_added,
                             extra={"eval_split": split, "holdout": _holdout(holdout, seed, train_examples is not None)})
        return _run(module, task, items, evals, tokenizer, model, loss_fn, epochs=epochs,
                    max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=length,
                    warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed,
                    progress=progress, eval_batch_size=eval_batch_size, report=report,
                    hooks=hooks)


def _holdout(holdout: float | int, seed: int, given: bool) -> dict[str, Any]:
    """What ``meta["task"]["holdout"]`` records: the validation split left out of training
    (none when the caller gave the training examples)."""
    return {"val_size": 0 if given else holdout, "seed": seed}


def _labels(task: Task, batch: dict[str, torch.Tensor]) -> Any:
    if task.kind == "extractive-qa":
        return {"start_positions": batch["start_positions"], "end_positions": batch["end_positions"]}
    return batch["labels"]


def distill(student: Module, teacher: Module, task: Task | str,
            data: str | os.PathLike | None = None, *, tokenizer: Any = None,
            temperature: float = 2.0, alpha_soft: float = 0.5, hidden_mse: float = 0.0,
            layer_map: str | Sequence[tuple[int, int]] = "auto", epochs: float = 3,
            max_steps: int | None = None, lr: float = 5e-5, batch_size: int = 32,
            max_length: int | None = None, warmup_ratio: float = 0.1,
            weight_decay: float = 0.01, seed: int = 0, threads: int | None = None,
            eval_split: str | None = "val", progress: ProgressFn | None = None,
            dropout: float | None = None, masked: Sequence[str] = (),
            train_examples: Examples | None = None, eval_examples: Examples | None = None,
            eval_batch_size: int = 64, doc_stride: int | None = None,
            hooks: TrainHooks | None = None, edit: EditFn | None = None,
            holdout: float | int = DEFAULT_VAL_SIZE, pooling: str = "auto") -> TrainReport:
    """Train ``student`` (in place) to imitate ``teacher`` (an IR module, run with the eager
    backend without gradients) on ``task``'s data.

    Loss: ``alpha_soft * soft_target_loss + (1 - alpha_soft) * task loss + hidden_mse *
    hidden_state_loss`` (see :mod:`optc.train.losses`). A teacher without the task's head
    gives no soft targets (then ``alpha_soft`` is ignored and the task loss has weight 1);
    if ``hidden_mse`` is 0 too, that is an :class:`InputError`. ``layer_map``: ``auto``
    or ``"s:t,..."`` pairs. Other options (``hooks``, ``edit``, ``pooling`` of the student's new
    head included) as :func:`finetune`.
    """
    if not 0 <= alpha_soft <= 1:
        raise InputError(f"alpha_soft must be in [0, 1], got {alpha_soft}")
    if hidden_mse < 0:
        raise InputError(f"hidden_mse must be >= 0, got {hidden_mse}")
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task_obj = get_task(task) if isinstance(task, str) else task
        check_vocabulary(token_vocabulary(student), token_vocabulary(teacher), "distill",
                         "the teacher's embedding table", "distill from a teacher with the "
                         "student's vocabulary (e.g. the model it was compressed from)",
                         whose="the student's", exact=True)
        soft = alpha_soft > 0 and has_task_head(teacher, task_obj)
        if not soft and hidden_mse == 0:
            raise InputError(f"the teacher has no {task_obj.head} head for task '{task_obj.name}', "
                             "so it gives no soft targets: fine-tune the teacher first, or match "
                             "hidden states (hidden_mse > 0)")
        task_obj, items, evals, length, head_added, split = _prepare(
            student, task_obj, data, tokenizer, seed=seed, eval_split=eval_split,
            train_examples=train_examples, eval_examples=eval_examples, max_length=max_length,
            batch_size=batch_size, epochs=epochs, lr=lr, max_steps=max_steps,
            doc_stride=doc_stride, holdout=holdout, pooling=pooling)
        pairs = map_layers(student, teacher, layer_map) if hidden_mse > 0 else []
        model = trainable(student, dropout=dropout, masked=masked, hidden_states=bool(pairs),
                          edit=edit)
        teacher_ir = teacher.clone()
        if pairs:
            for i, value in enumerate(hidden_state_values(teacher_ir)):
                teacher_ir.graph.set_output(f"{HIDDEN_PREFIX}{i}", value)
        teacher_model = to_eager(teacher_ir)
        weight_task = 1.0 - alpha_soft if soft else 1.0

        def loss_fn(model: TrainableModule, batch: dict[str, torch.Tensor],
                    names: tuple[str, ...]) -> torch.Tensor:
            inputs = {k: batch[k] for k in names}
            outputs = model(**inputs)
            mask = batch["attention_mask"]
            loss = torch.zeros(())
            if weight_task > 0:
                loss = loss + weight_task * task_obj.loss(outputs, _labels(task_obj, batch),
                                                          attention_mask=mask)
            if soft or pairs:
                with torch.no_grad():
                    target = teacher_model(**inputs)
                if soft:
                    loss = loss + alpha_soft * soft_target_loss(task_obj, outputs, target,
                                                                temperature, mask)
                if pairs:
                    s = [outputs[f"{HIDDEN_PREFIX}{i}"] for i, _ in pairs]
                    t = [target[f"{HIDDEN_PREFIX}{j}"] for _, j in pairs]
                    loss = loss + hidden_mse * hidden_state_loss(s, t, mask)
            return loss

        report = TrainReport(task_obj.name, task_obj.main_metric, 0, 0.0, len(items), 0.0,
                             head_added=head_added,
                             extra={"eval_split": split, "holdout": _holdout(holdout, seed, train_examples is not None),
                                    "soft_targets": soft, "alpha_soft": alpha_soft if soft else 0.0,
                                    "hidden_mse": hidden_mse, "temperature": temperature,
                                    "layer_map": ",".join(f"{s}:{t}" for s, t in pairs) or "-"})
        return _run(student, task_obj, items, evals, tokenizer, model, loss_fn, epochs=epochs,
                    max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=length,
                    warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed,
                    progress=progress, eval_batch_size=eval_batch_size, report=report,
                    hooks=hooks)
