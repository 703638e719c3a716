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

Where and how (:mod:`optc.train.engine`): ``device`` (cpu, cuda, cuda:N, auto) and
``precision`` (fp32, bf16, fp16); several processes when a ``torch.distributed`` group is up
(:mod:`optc.train.distributed`); ``checkpoint_every``/``checkpoint_dir`` write checkpoints
(also on Ctrl-C) and ``resume`` continues from one (:mod:`optc.train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from optc.backends.eager import to_eager
from optc.backends.model_inputs import check_vocabulary, token_vocabulary
from optc.errors import InputError
from optc.ir.analysis import Structure
from optc.ir.core import Module
from optc.tasks import DEFAULT_VAL_SIZE, Task, get_task, validation_split
from optc.tasks.embedding import embed
from optc.tasks.limits import check_tokenizer, fit_max_length, model_limits
from optc.tasks.records import Example, SquadRecord
from optc.train.batching import Encoded, encode, input_names_of
from optc.train.device import check_precision, resolve_device
from optc.train.distributed import Share, local_device
from optc.train.engine import (
    EvalRecord,
    ProgressFn,
    RunOptions,
    StepInfo,
    TrainingInterrupted,
    TrainReport,
    linear_schedule,
    make_optimizer,
    run_training,
)
from optc.train.heads import add_task_head, has_task_head
from optc.train.hooks import TrainHooks
from optc.train.losses import embedding_pooling, hidden_state_loss, soft_target_loss
from optc.train.losses import layer_map as map_layers
from optc.train.module import HIDDEN_PREFIX, TrainableModule, hidden_state_values, trainable

__all__ = ["finetune", "distill", "TrainReport", "EvalRecord", "StepInfo", "ProgressFn",
           "make_optimizer", "linear_schedule", "RunOptions", "TrainingInterrupted",
           "run_options"]

Examples = Sequence[Example] | Sequence[SquadRecord]


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
        else:  # label-free (embedding): one class, a seeded shuffle, as Task.read splits it
            labels = [0] * len(source) if task.label_free else [e.label for e in source]
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


# -- the engine shared by finetune and distill ---------------------------------------------
EditFn = Callable[[Module, Structure], None]
"""Rewrites the working copy of the IR a trainable module is built from (see ``trainable``)."""


def run_options(device: str | torch.device | None = "cpu", precision: str = "fp32",
                checkpoint_every: int | None = None,
                checkpoint_dir: str | os.PathLike | None = None,
                resume: str | os.PathLike | None = None) -> RunOptions:
    """Checked :class:`RunOptions` (a CUDA request without CUDA, an unknown precision, a
    checkpoint interval without a directory are :class:`InputError`\\ s). With several
    processes, ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``)."""
    dev = local_device(resolve_device(device))
    options = RunOptions(dev, check_precision(precision, dev), checkpoint_every,
                         checkpoint_dir, resume)
    options.check()
    return options


def _rng_devices(options: RunOptions) -> list[int]:
    """The CUDA devices whose random state a run forks (so a run leaves it as it was)."""
    if options.device.type != "cuda":
        return []
    return [options.device.index if options.device.index is not None else torch.cuda.current_device()]


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
             holdout: float | int = DEFAULT_VAL_SIZE, pooling: str = "auto",
             device: str | torch.device | None = "cpu", precision: str = "fp32",
             checkpoint_every: int | None = None,
             checkpoint_dir: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None) -> TrainReport:
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
    ``meta["task"]["pooling"]``. ``device``, ``precision``, ``checkpoint_every``,
    ``checkpoint_dir``, ``resume``: see :mod:`optc.train.engine` (a run resumed from a
    checkpoint must be given the interrupted run's other arguments).
    """
    if (get_task(task) if isinstance(task, str) else task).label_free:
        (get_task(task) if isinstance(task, str) else task).check_trainable("finetune")
    options = run_options(device, precision, checkpoint_every, checkpoint_dir, resume)
    with _threads(threads), torch.random.fork_rng(devices=_rng_devices(options)):
        torch.manual_seed(seed)
        task, items, evals, length, head_added, split = _prepare(
            module, task, data, tokenizer, seed=seed, eval_split=eval_split,
            train_examples=train_examples, eval_examples=eval_examples, max_length=max_length,
            batch_size=batch_size, epochs=epochs, lr=lr, max_steps=max_steps,
            doc_stride=doc_stride, holdout=holdout, pooling=pooling)
        model = trainable(module, dropout=dropout, masked=masked, edit=edit,
                          device=options.device)

        def loss_fn(model: TrainableModule, batch: dict[str, torch.Tensor],
                    names: tuple[str, ...], share: Share) -> torch.Tensor:
            outputs = model(**{k: batch[k] for k in names})
            loss = task.loss(outputs, _labels(task, batch), attention_mask=batch["attention_mask"])
            return loss if share.examples == 1 else loss * share.examples

        report = TrainReport(task.name, task.main_metric, 0, 0.0, len(items), 0.0,
                             head_added=head_added,
                             extra={"eval_split": split, "holdout": _holdout(holdout, seed, train_examples is not None)})
        return run_training(module, task, items, evals, tokenizer, model, loss_fn,
                            epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                            max_length=length, warmup_ratio=warmup_ratio,
                            weight_decay=weight_decay, seed=seed, progress=progress,
                            eval_batch_size=eval_batch_size, report=report, hooks=hooks,
                            options=options)


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
            holdout: float | int = DEFAULT_VAL_SIZE, pooling: str = "auto",
            device: str | torch.device | None = "cpu", precision: str = "fp32",
            checkpoint_every: int | None = None,
            checkpoint_dir: str | os.PathLike | None = None,
            resume: str | os.PathLike | None = None) -> TrainReport:
    """Train ``student`` (in place) to imitate ``teacher`` (an IR module, run with the eager
    backend without gradients) on ``task``'s data.

    Loss: ``alpha_soft * soft_target_loss + (1 - alpha_soft) * task loss + hidden_mse *
    hidden_state_loss`` (see :mod:`optc.train.losses`). A teacher without the task's head
    gives no soft targets (then ``alpha_soft`` is ignored and the task loss has weight 1);
    if ``hidden_mse`` is 0 too, that is an :class:`InputError`. A label-free task
    (``embedding``) has no task loss: its loss is the soft-target one, ``1 - cosine`` of the
    student's pooled embeddings to the teacher's (:func:`~optc.train.losses.embedding_target_loss`,
    weight 1), the best weights are those whose validation embeddings agree best with the
    teacher's, and ``meta["task"]["pooling"]`` records the pooling. ``layer_map``: ``auto``
    or ``"s:t,..."`` pairs. Other options (``hooks``, ``edit``, ``pooling`` of the student's new
    head included, ``device``, ``precision`` and checkpoints too) as :func:`finetune`.
    """
    if not 0 <= alpha_soft <= 1:
        raise InputError(f"alpha_soft must be in [0, 1], got {alpha_soft}")
    if hidden_mse < 0:
        raise InputError(f"hidden_mse must be >= 0, got {hidden_mse}")
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    options = run_options(device, precision, checkpoint_every, checkpoint_dir, resume)
    with _threads(threads), torch.random.fork_rng(devices=_rng_devices(options)):
        torch.manual_seed(seed)
        task_obj = get_task(task) if isinstance(task, str) else task
        check_vocabulary(token_vocabulary(student), token_vocabulary(teacher), "distill",
                         "the teacher's embedding table", "distill from a teacher with the "
                         "student's vocabulary (e.g. the model it was compressed from)",
                         whose="the student's", exact=True)
        label_free = task_obj.label_free  # embedding: the teacher's embeddings are the targets
        soft = (label_free or alpha_soft > 0) and has_task_head(teacher, task_obj)
        alpha_soft = 1.0 if label_free else alpha_soft
        if not soft and hidden_mse == 0:
            raise InputError(f"the teacher has no {task_obj.head} head for task '{task_obj.name}', "
                             "so it gives no soft targets: fine-tune the teacher first, or match "
                             "hidden states (hidden_mse > 0)")
        task_obj, items, evals, length, head_added, split = _prepare(
            student, task_obj, data, tokenizer, seed=seed, eval_split=eval_split,
            train_examples=train_examples, eval_examples=eval_examples, max_length=max_length,
            batch_size=batch_size, epochs=epochs, lr=lr, max_steps=max_steps,
            doc_stride=doc_stride, holdout=holdout, pooling=pooling)
        pooled = embedding_pooling(task_obj, student, teacher) if label_free else None
        pairs = map_layers(student, teacher, layer_map) if hidden_mse > 0 else []
        model = trainable(student, dropout=dropout, masked=masked, hidden_states=bool(pairs),
                          edit=edit, device=options.device)
        teacher_ir = teacher.clone()
        if pairs:
            for i, value in enumerate(hidden_state_values(teacher_ir)):
                teacher_ir.graph.set_output(f"{HIDDEN_PREFIX}{i}", value)
        teacher_model = to_eager(teacher_ir, device=options.device)
        weight_task = 1.0 - alpha_soft if soft else 1.0

        def loss_fn(model: TrainableModule, batch: dict[str, torch.Tensor],
                    names: tuple[str, ...], share: Share) -> torch.Tensor:
            inputs = {k: batch[k] for k in names}
            outputs = model(**inputs)
            mask = batch["attention_mask"]
            per_example = torch.zeros((), device=mask.device)
            target = None
            if weight_task > 0:
                per_example = per_example + weight_task * task_obj.loss(
                    outputs, _labels(task_obj, batch), attention_mask=mask)
            if soft or pairs:
                with torch.no_grad():
                    target = teacher_model(**inputs)
                if soft:
                    per_example = per_example + alpha_soft * soft_target_loss(
                        task_obj, outputs, target, temperature, mask, pooling=pooled)
            loss = per_example if share.examples == 1 else per_example * share.examples
            if pairs and target is not None:
                s = [outputs[f"{HIDDEN_PREFIX}{i}"] for i, _ in pairs]
                t = [target[f"{HIDDEN_PREFIX}{j}"] for _, j in pairs]
                hidden = hidden_mse * hidden_state_loss(s, t, mask)  # a mean over tokens
                loss = loss + (hidden if share.tokens == 1 else hidden * share.tokens)
            return loss

        report = TrainReport(task_obj.name, task_obj.main_metric, 0, 0.0, len(items), 0.0,
                             head_added=head_added,
                             extra={"eval_split": split, "holdout": _holdout(holdout, seed, train_examples is not None),
                                    "soft_targets": soft, "alpha_soft": alpha_soft if soft else 0.0,
                                    "hidden_mse": hidden_mse, "temperature": temperature,
                                    "layer_map": ",".join(f"{s}:{t}" for s, t in pairs) or "-"})
        eval_options: dict[str, Any] = {}
        if pooled is not None:  # label-free: scored against the teacher's embeddings
            student.meta["task"]["pooling"] = report.extra["pooling"] = pooled.spec
            eval_options["pooling"] = pooled
            if evals is not None:
                eval_options["reference"] = embed(
                    task_obj, teacher_model, [e.text for e in evals], tokenizer, pooled,
                    eval_batch_size, length, input_names_of(model.input_names), options.device)
        return run_training(student, task_obj, items, evals, tokenizer, model, loss_fn,
                            epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                            max_length=length, warmup_ratio=warmup_ratio,
                            weight_decay=weight_decay, seed=seed, progress=progress,
                            eval_batch_size=eval_batch_size, report=report, hooks=hooks,
                            options=options, eval_options=eval_options)
