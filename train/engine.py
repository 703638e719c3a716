"""The training engine shared by :func:`~optc.train.finetune` and :func:`~optc.train.distill`.

:func:`run_training` runs the optimizer steps of one run: AdamW with a linear warm-up and
decay, gradient clipping at 1.0, length-grouped seeded batches, masks kept exact, the hooks of
:mod:`optc.train.hooks`, evaluations at the end of each epoch (the best weights are kept), and
at the end writes the weights back into the IR (on the CPU, in the IR's dtype). Beyond the
recipe (:class:`RunOptions`):

- **device and precision** (:mod:`optc.train.device`): the trainable module, its masks and the
  batches live on ``device``; the forward pass and the losses run under autocast for bf16 and
  fp16 (fp16 with a gradient scaler); evaluations run in fp32 on the same device.
- **several processes** (:mod:`optc.train.distributed`): when a ``torch.distributed`` process
  group is up, each rank trains on its share of every global batch, gradients (the hooks'
  parameters' too) are averaged, only rank 0 evaluates and reports progress, and at the end
  rank 0's chosen weights are broadcast so every rank writes back the same values.
- **checkpoints** (:mod:`optc.train.checkpoint`): every ``checkpoint_every`` steps, and on
  Ctrl-C (SIGINT) or SIGTERM when ``checkpoint_dir`` is set: the signal is noted and the run
  stops at the end of the step in progress, writes a checkpoint and raises
  :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); a second signal interrupts at once.
  A ``KeyboardInterrupt`` raised between steps (from the progress callback or during an
  evaluation) also writes one in a one-process run. ``resume=DIR`` continues such a run to the result an
  uninterrupted run reaches (bit for bit on the CPU).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from optc.errors import InputError
from optc.ir.core import Module
from optc.tasks import Task, evaluate
from optc.tasks.batching import pad_token_id, pads_left
from optc.train.batching import Encoded, collate, input_names_of, length_grouped
from optc.train.checkpoint import CheckpointState, load_checkpoint, save_checkpoint
from optc.train.device import autocast, grad_scaler
from optc.train.distributed import (
    Share,
    all_sum,
    average_gradients,
    broadcast_tensors,
    current_world,
    shard,
)
from optc.train.hooks import TrainHooks
from optc.train.module import TrainableModule, write_back

__all__ = ["StepInfo", "ProgressFn", "EvalRecord", "TrainReport", "RunOptions", "LossFn",
           "TrainingInterrupted", "make_optimizer", "linear_schedule", "run_training"]


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


@dataclass(frozen=True)
class RunOptions:
    """Where and how a run trains, beyond its recipe."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Resolved device (see :func:`optc.train.device.resolve_device`)."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (see :mod:`optc.train.device`)."""
    checkpoint_every: int | None = None
    """Write a checkpoint every this many steps (needs ``checkpoint_dir``)."""
    checkpoint_dir: str | os.PathLike | None = None
    """Where checkpoints go; also enables the checkpoint on Ctrl-C / SIGTERM."""
    resume: str | os.PathLike | None = None
    """A checkpoint (or checkpoint directory) to continue from."""

    def check(self) -> None:
        """Refuse options no run accepts."""
        every = self.checkpoint_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise InputError(f"checkpoint_every must be a positive number of steps, got {every!r}")
        if every is not None and self.checkpoint_dir is None:
            raise InputError("checkpoint_every needs checkpoint_dir (where to write them)")
        if self.checkpoint_dir is not None and Path(self.checkpoint_dir).exists() \
                and not Path(self.checkpoint_dir).is_dir():
            raise InputError(f"checkpoint_dir '{self.checkpoint_dir}' is a file, not a directory")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped training; a checkpoint was written (``checkpoint``)."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training interrupted after step {step}; checkpoint in {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


LossFn = Callable[[TrainableModule, dict[str, torch.Tensor], tuple[str, ...], Share],
                  torch.Tensor]
"""(model, batch on the device, input names, this rank's share) -> loss: terms that are means
over examples are multiplied by ``share.examples``, means over tokens by ``share.tokens``."""


class _StopRequest:
    """Notes SIGINT/SIGTERM (main thread, while a checkpoint directory is set) instead of
    raising at once; the handler then restores the previous one, so a second signal acts as
    it did before."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN:
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _better(score: float, best: EvalRecord | None) -> bool:
    if math.isnan(score):
        return best is None
    return best is None or math.isnan(best.score) or score > best.score


def run_training(module: Module, task: Task, items: list[Encoded], evals: list[Any] | None,
                 tokenizer: Any, model: TrainableModule, loss_fn: LossFn, *, epochs: float,
                 max_steps: int | None, lr: float, batch_size: int, max_length: int,
                 warmup_ratio: float, weight_decay: float, seed: int,
                 progress: ProgressFn | None, eval_batch_size: int, report: TrainReport,
                 hooks: TrainHooks | None = None, options: RunOptions | None = None,
                 eval_options: dict[str, Any] | None = None) -> TrainReport:
    """Train ``model`` (built from ``module``, already on ``options.device``) and write the
    chosen weights back into ``module``. See the module docstring. ``eval_options``: more
    keyword arguments of the evaluations (a label-free task's ``pooling`` and ``reference``)."""
    hooks = hooks or TrainHooks()
    options = options or RunOptions()
    device, precision = options.device, options.precision
    world = current_world()
    names = input_names_of(model.input_names)
    pad_id, left = pad_token_id(tokenizer), pads_left(tokenizer)
    qa = task.kind == "extractive-qa"
    per_epoch = math.ceil(len(items) / batch_size)
    total = math.ceil(per_epoch * epochs)
    if max_steps is not None:
        total = min(total, max_steps)
    total = max(total, 1)
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = linear_schedule(optimizer, math.ceil(warmup_ratio * total), total)
    scaler = grad_scaler(device, precision)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(i) for i in items]
    params = [p for _, p in model.named_ir_parameters()]
    if world.distributed:  # each rank its own dropout masks (the weights start equal: same seed)
        torch.manual_seed(seed * 65537 + world.rank)
    fingerprint = {"task": task.name, "steps": total, "batch_size": batch_size,
                   "train_items": len(items), "seed": seed, "lr": lr, "precision": precision,
                   "parameters": sum(p.numel() for p in params), "hooks": type(hooks).__name__}

    best_state: dict[str, torch.Tensor] | None = None
    batches: list[list[int]] | None = None
    index = step = 0
    step_time = elapsed = 0.0
    pending_eval = False

    def run_eval(at: int) -> None:
        nonlocal best_state
        if not world.main:
            return
        model.eval()
        result = evaluate(task, model, evals, tokenizer, batch_size=eval_batch_size,
                          max_length=max_length, input_names=names, device=device,
                          **(eval_options or {}))
        model.train()
        record = EvalRecord(at / per_epoch, at, dict(result.metrics), result.score,
                            result.mean_loss, result.seconds)
        report.evals.append(record)
        if hooks.keep_best(at) and _better(record.score, report.best):
            report.best = record
            best_state = model.state()

    def snapshot() -> CheckpointState:
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        training = {
            "step": step, "processes": world.size, "fingerprint": fingerprint,
            "optimizer": _to_cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": generator.get_state(), "batches": batches, "index": index,
            "losses": list(report.losses), "evals": [asdict(e) for e in report.evals],
            "best": asdict(report.best) if report.best is not None else None,
            "hooks": _to_cpu(hooks.state_dict()), "step_time": step_time,
            "seconds": elapsed + time.perf_counter() - begin, "pending_eval": pending_eval,
        }
        return CheckpointState(step, fingerprint, model.state(), dict(model.masks),
                               best_state, training, rng)

    def checkpoint() -> Path:
        assert options.checkpoint_dir is not None
        return save_checkpoint(options.checkpoint_dir, snapshot(), world)

    begin = time.perf_counter()
    if options.resume is not None:
        state = load_checkpoint(options.resume, fingerprint, world)
        t = state.training
        model.load_state(state.weights)
        model.masks = {k: v.to(device) for k, v in state.masks.items()}
        optimizer.load_state_dict(t["optimizer"])
        scheduler.load_state_dict(t["scheduler"])
        if scaler is not None and t.get("scaler"):
            scaler.load_state_dict(t["scaler"])
        generator.set_state(t["generator"])
        torch.set_rng_state(state.rng["cpu"])
        if device.type == "cuda" and "cuda" in state.rng:
            torch.cuda.set_rng_state(state.rng["cuda"], device)
        hooks.load_state_dict(t["hooks"])
        report.losses = list(t["losses"])
        report.evals = [EvalRecord(**e) for e in t["evals"]]
        report.best = EvalRecord(**t["best"]) if t["best"] is not None else None
        best_state = ({k: v.to(device) for k, v in state.best_weights.items()}
                      if state.best_weights is not None else None)
        step, batches, index = state.step, t["batches"], t["index"]
        step_time, elapsed, pending_eval = t["step_time"], t["seconds"], t["pending_eval"]
        report.extra["resumed_from_step"] = step
    model.train()
    model.apply_masks()
    hooks.start(model, total)
    boundary = True  # between steps: the state is whole, a checkpoint may be written
    with _StopRequest(options.checkpoint_dir is not None) as stop:
        try:
            if pending_eval and evals is not None:
                run_eval(step)
            pending_eval = False
            while step < total:
                if batches is None:
                    batches, index = length_grouped(lengths, batch_size, generator), 0
                while index < len(batches) and step < total:
                    boundary = False
                    rows = batches[index]
                    start = time.perf_counter()
                    mine = shard(rows, world) if world.distributed else list(rows)
                    share = Share()
                    if world.distributed:
                        tokens = sum(lengths[i] for i in rows)
                        share = Share(world.size * len(mine) / len(rows),
                                      world.size * sum(lengths[i] for i in mine) / tokens)
                        if not mine:  # fewer rows than ranks: run one row with weight 0
                            mine, share = list(rows[:1]), Share(0.0, 0.0)
                    batch = collate([items[i] for i in mine], names, pad_id, left, qa)
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    hooks.before_step(model, step)
                    with autocast(device, precision):
                        loss = loss_fn(model, batch, names, share)
                    extra = hooks.loss(model, step)
                    if extra is not None:
                        loss = loss + extra
                    value = float(loss.detach())
                    stopping = stop.requested
                    if world.distributed:
                        value, flags = all_sum([value, float(stop.requested)], world, device)
                        value /= world.size
                        stopping = flags > 0
                    if not math.isfinite(value):
                        raise InputError(f"training loss became {value} at step {step + 1}: "
                                         "lower the learning rate")
                    optimizer.zero_grad(set_to_none=True)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    average_gradients(params + hooks.parameters(), world)
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                        _unscale_hooks(hooks, scaler)
                    model.mask_gradients()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    used_lr = optimizer.param_groups[0]["lr"]
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    model.apply_masks()
                    terms = hooks.after_step(model, step)
                    step += 1
                    index += 1
                    if index == len(batches):
                        batches = None  # the next epoch draws a new order
                    seconds = time.perf_counter() - start
                    step_time += seconds
                    report.losses.append(value)
                    pending_eval = evals is not None and (step % per_epoch == 0 or step == total)
                    boundary = True
                    if progress is not None and world.main:
                        progress(StepInfo(step, total, step / per_epoch, value, used_lr, seconds,
                                          step_time / step * (total - step), dict(terms)))
                    if pending_eval:
                        run_eval(step)
                        pending_eval = False
                    stopping = stopping or (stop.requested and not world.distributed)
                    if stopping and step < total:
                        raise TrainingInterrupted(step, checkpoint())
                    if (options.checkpoint_every and step % options.checkpoint_every == 0
                            and step < total):
                        checkpoint()
                    if batches is None:
                        break
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # mid-step the state is not whole; with several processes the others would not
            # join the checkpoint's collectives (signals reach them as stop requests instead)
            if not boundary or options.checkpoint_dir is None or world.distributed:
                raise
            raise TrainingInterrupted(step, checkpoint()) from None
    if world.main and best_state is not None:
        model.load_state(best_state)
    broadcast_tensors(params, world)  # every rank writes back rank 0's choice
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
    report.seconds = elapsed + time.perf_counter() - begin
    report.extra.update({"device": str(device), "precision": precision,
                         "processes": world.size})
    return report


@torch.no_grad()
def _unscale_hooks(hooks: TrainHooks, scaler: torch.amp.GradScaler) -> None:
    """fp16: the hooks' own parameters got gradients of the scaled loss too; unscale them
    (a non-finite one becomes zero, as the scaler skips the model's step then)."""
    scale = float(scaler.get_scale())
    for p in hooks.parameters():
        if p.grad is not None:
            p.grad.div_(scale)
            p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
