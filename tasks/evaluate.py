"""Evaluating any callable model on a task: batches in, metrics, per-example losses and
predictions out.

The model is a callable ``model_fn(**inputs) -> outputs`` taking int64 tensors named
``input_ids``, ``attention_mask`` (and ``token_type_ids`` when in ``input_names``) and
returning a dict (or model output) with ``logits`` (classification, regression),
``start_logits``/``end_logits`` (extractive QA) or ``last_hidden_state`` (the embedding tasks,
see :mod:`optc.tasks.embedding`): an eager module, an optc artifact, a
TorchScript module or a wrapper around an ONNX Runtime session all fit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optc.errors import InputError
from optc.tasks.batching import batches, feature_batches, model_input_names, pads_left
from optc.tasks.embedding import agreement_scores, embed, similarity_scores
from optc.tasks.limits import check_tokenizer, fit_max_length, model_limits
from optc.tasks.pooling import Pooling
from optc.tasks.records import Example, SquadRecord
from optc.tasks.registry import get_task
from optc.tasks.splits import DEFAULT_VAL_SIZE
from optc.tasks.squad import build_features, decode_answers
from optc.tasks.task import Task, model_output

__all__ = ["EvalResult", "evaluate", "Progress"]

Progress = Callable[[int, int], None]
"""Called after each batch with (items done, items in total): examples, or QA features."""


@dataclass
class EvalResult:
    """What one evaluation measured."""

    task: str
    """The task's name."""
    metrics: dict[str, float]
    """Every metric of the task, in percent."""
    main_metric: str
    """The name of the metric a search maximizes."""
    num_examples: int
    """Examples (questions for QA) evaluated."""
    examples_per_second: float
    """Examples per second over tokenization, model calls and scoring."""
    losses: torch.Tensor
    """float32 loss of each example in input order (QA: of each feature, see
    ``loss_example_index``): cross-entropy, squared error, mean start/end cross-entropy, or for
    the embedding tasks the squared error of the cosine against the scaled score
    (``sentence-similarity``) and ``1 - cosine`` to the reference (``embedding``)."""
    predictions: list[Any]
    """Per example in input order: class index, score, answer text, the pair's cosine
    (``sentence-similarity``) or ``{"cosine", "top10_agreement"}`` in [0, 1] (``embedding``)."""
    loss_example_index: torch.Tensor | None = None
    """QA only: the question (index into the examples) each feature loss belongs to."""
    seconds: float = 0.0
    """Wall time of the evaluation."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-specific details (QA: ``num_features``; embedding tasks: ``pooling``, and for
    ``embedding`` the texts' ``embeddings``, a reference for another evaluation)."""

    @property
    def score(self) -> float:
        """The main metric's value."""
        return self.metrics[self.main_metric]

    @property
    def mean_loss(self) -> float:
        """The mean of the per-example losses (per-feature for QA)."""
        return float(self.losses.mean()) if self.losses.numel() else float("nan")


def _check_labels(task: Task, examples: Sequence[Example]) -> None:
    for i, example in enumerate(examples):
        if not isinstance(example, Example):
            raise InputError(f"task '{task.name}' evaluates optc.tasks.Example items; item {i} is "
                             f"a {type(example).__name__}")
        label = example.label
        if label is None:
            raise InputError(f"example {i} has no label: evaluating task '{task.name}' needs "
                             "labelled data (train, dev or val)")
        if task.kind in ("regression", "embedding-similarity"):
            if isinstance(label, bool) or not isinstance(label, (int, float)):
                raise InputError(f"example {i}: regression task '{task.name}' needs a numeric "
                                 f"label, found {label!r}")
        elif isinstance(label, bool) or not isinstance(label, int) \
                or not 0 <= label < task.num_labels:
            raise InputError(f"example {i}: label {label!r} is not a label of task '{task.name}' "
                             f"(an index 0..{task.num_labels - 1}: "
                             f"{', '.join(task.label_names)})")


def _to(inputs: dict[str, torch.Tensor], device: torch.device | str | None) -> dict[str, torch.Tensor]:
    return inputs if device is None else {k: v.to(device) for k, v in inputs.items()}


def evaluate(task: Task | str, model_fn: Callable[..., Any],
             examples_or_split: str | Sequence[Example] | Sequence[SquadRecord],
             tokenizer: Any, batch_size: int = 32, max_length: int | None = None,
             progress: Progress | None = None, *, data: str | os.PathLike | None = None,
             input_names: Sequence[str] | None = None, val_size: float | int = DEFAULT_VAL_SIZE,
             seed: int = 0, limit: int | None = None, device: torch.device | str | None = None,
             doc_stride: int | None = None, n_best: int = 20, max_answer_length: int = 30,
             null_threshold: float = 0.0, pooling: Pooling | None = None,
             reference: torch.Tensor | EvalResult | str | None = None) -> EvalResult:
    """Run ``model_fn`` over a split (read with ``data``, ``val_size``, ``seed``, ``limit``)
    or a list of examples, and score it.

    ``max_length`` defaults to 128 tokens (384 for QA, whose contexts are split into windows
    ``doc_stride`` apart, 128 by default), clamped to the model's position table (a model
    captured for one length: that length, and every batch is padded to it); an explicit
    one beyond it, and a tokenizer larger than the model's vocabulary, are refused (see
    :mod:`optc.tasks.limits`; optc modules and Hugging Face models); ``input_names`` defaults to the tokenizer's model
    inputs. QA answers are decoded from the ``n_best`` start/end logits, spans up to
    ``max_answer_length`` tokens (SQuAD v2: "" when the null score wins by ``null_threshold``).
    Runs without gradients; inputs go to ``device`` when given.

    Embedding tasks pool ``last_hidden_state`` with the task's ``pooling`` option, else
    ``pooling`` (the model's own: :func:`~optc.tasks.pooling.read_pooling` of its directory),
    else mean. ``embedding`` needs ``reference``: the reference model's embeddings of the same
    texts, its :class:`EvalResult`, or ``"self"``; other tasks refuse one.
    """
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(examples_or_split, str):
        examples = task.read(examples_or_split, data, val_size=val_size, seed=seed, limit=limit)
    else:
        examples = list(examples_or_split)[:limit] if limit is not None else list(examples_or_split)
    if not examples:
        raise InputError(f"nothing to evaluate: no examples given for task '{task.name}'")
    names = model_input_names(tokenizer, input_names)
    limits = model_limits(model_fn)
    check_tokenizer(tokenizer, limits, f"evaluating {task.name}")
    length = fit_max_length(task, max_length, limits)
    ref = _reference(task, reference)
    begin = time.perf_counter()
    if task.kind in ("embedding-similarity", "embedding-agreement"):
        result = _evaluate_embeddings(task, model_fn, examples, tokenizer, batch_size, length,
                                      progress, names, device, pooling, ref, limits.length)
    elif task.kind == "extractive-qa":
        result = _evaluate_qa(task, model_fn, examples, tokenizer, batch_size, length, progress,
                              names, device, doc_stride, n_best, max_answer_length,
                              null_threshold, limits.length)
    else:
        result = _evaluate_sequences(task, model_fn, examples, tokenizer, batch_size, length,
                                     progress, names, device, limits.length)
    result.seconds = time.perf_counter() - begin
    result.examples_per_second = len(examples) / result.seconds if result.seconds > 0 else 0.0
    return result


def _reference(task: Task, reference: torch.Tensor | EvalResult | str | None,
               ) -> torch.Tensor | str | None:
    if not task.needs_reference:
        if reference is not None:
            raise InputError(f"task '{task.name}' ({task.kind}) takes no reference model")
        return None
    if reference is None:
        raise InputError(f"task '{task.name}' scores embeddings against a reference model's: "
                         "pass reference= (its embeddings or EvalResult on the same texts, or "
                         "'self')")
    if isinstance(reference, EvalResult):
        found = reference.extra.get("embeddings")
        if not isinstance(found, torch.Tensor):
            raise InputError(f"the reference EvalResult of task '{reference.task}' holds no "
                             "embeddings: evaluate the reference on task embedding first")
        return found
    if isinstance(reference, str) and reference != "self":
        raise InputError(f"reference must be embeddings, an EvalResult or 'self', not "
                         f"{reference!r}")
    return reference


def _evaluate_embeddings(task: Task, model_fn: Callable[..., Any], examples: list[Example],
                         tokenizer: Any, batch_size: int, max_length: int,
                         progress: Progress | None, names: tuple[str, ...],
                         device: torch.device | str | None, pooling: Pooling | None,
                         reference: torch.Tensor | str | None,
                         pad_to: int | None = None) -> EvalResult:
    bad = next((i for i, e in enumerate(examples) if not isinstance(e, Example)), None)
    if bad is not None:
        raise InputError(f"task '{task.name}' evaluates optc.tasks.Example items; item {bad} is "
                         f"a {type(examples[bad]).__name__}")
    chosen = task.pooling or pooling
    extra: dict[str, Any] = {"pooling": (chosen.describe() if chosen else "mean (default)")}
    if task.kind == "embedding-similarity":
        _check_labels(task, examples)
        missing = next((i for i, e in enumerate(examples) if e.text_pair is None), None)
        if missing is not None:
            raise InputError(f"example {missing} has no second sentence: task '{task.name}' "
                             "compares sentence pairs")
        texts = [e.text for e in examples] + [str(e.text_pair) for e in examples]
        vectors = embed(task, model_fn, texts, tokenizer, pooling, batch_size, max_length, names,
                        device, progress, pad_to)
        n = len(examples)
        losses, predictions, metrics = similarity_scores(
            task, vectors[:n], vectors[n:], [float(e.label) for e in examples])  # type: ignore[arg-type]
    else:
        vectors = embed(task, model_fn, [e.text for e in examples], tokenizer, pooling,
                        batch_size, max_length, names, device, progress, pad_to)
        against = vectors if isinstance(reference, str) else reference
        losses, predictions, metrics = agreement_scores(task, vectors, against)  # type: ignore[arg-type]
        extra["embeddings"] = vectors
    return EvalResult(task.name, metrics, task.main_metric, len(examples), 0.0, losses,
                      predictions, extra=extra)


def _evaluate_sequences(task: Task, model_fn: Callable[..., Any], examples: list[Example],
                        tokenizer: Any, batch_size: int, max_length: int,
                        progress: Progress | None, names: tuple[str, ...],
                        device: torch.device | str | None, pad_to: int | None = None,
                        ) -> EvalResult:
    _check_labels(task, examples)
    total = len(examples)
    losses = torch.empty(total, dtype=torch.float32)
    predictions: list[Any] = [None] * total
    done = 0
    with torch.no_grad():
        for batch in batches(examples, tokenizer, batch_size, max_length, names, pad_to=pad_to):
            outputs = model_fn(**_to({k: batch[k] for k in names}, device))
            logits = model_output(outputs, "logits").detach().float().cpu()
            index = batch["index"]
            losses[index] = task.loss({"logits": logits}, batch["labels"], reduction="none")
            for i, p in zip(index.tolist(), task.predictions(logits), strict=True):
                predictions[i] = p
            done += len(index)
            if progress is not None:
                progress(done, total)
    metrics = task.compute_metrics(predictions, [e.label for e in examples])
    return EvalResult(task.name, metrics, task.main_metric, total, 0.0, losses, predictions)


def _evaluate_qa(task: Task, model_fn: Callable[..., Any], records: list[SquadRecord],
                 tokenizer: Any, batch_size: int, max_length: int, progress: Progress | None,
                 names: tuple[str, ...], device: torch.device | str | None,
                 doc_stride: int | None, n_best: int, max_answer_length: int,
                 null_threshold: float, pad_to: int | None = None) -> EvalResult:
    bad = next((i for i, r in enumerate(records) if not isinstance(r, SquadRecord)), None)
    if bad is not None:
        raise InputError(f"task '{task.name}' evaluates optc.tasks.SquadRecord items; item {bad} "
                         f"is a {type(records[bad]).__name__}")
    if not task.version_2:
        missing = next((r for r in records if not r.answer_texts), None)
        if missing is not None:
            raise InputError(f"question '{missing.id}' has no answer, which SQuAD v1.1 requires: "
                             "use task squad_v2 for unanswerable questions")
    features = build_features(records, tokenizer, max_length, doc_stride)
    total = len(features)
    starts: list[Any] = [None] * total
    ends: list[Any] = [None] * total
    losses = torch.empty(total, dtype=torch.float32)
    left = pads_left(tokenizer)
    done = 0
    with torch.no_grad():
        for batch in feature_batches(features, tokenizer, batch_size, names, pad_to=pad_to):
            outputs = model_fn(**_to({k: batch[k] for k in names}, device))
            start = model_output(outputs, "start_logits").detach().float().cpu()
            end = model_output(outputs, "end_logits").detach().float().cpu()
            index = batch["index"].tolist()
            width = batch["input_ids"].shape[1]
            lengths = torch.tensor([len(features[i]) for i in index])
            positions = torch.arange(width).expand(len(index), width)
            mask = positions >= (width - lengths)[:, None] if left else positions < lengths[:, None]
            labels = {"start_positions": batch["start_positions"],
                      "end_positions": batch["end_positions"]}
            losses[batch["index"]] = task.loss({"start_logits": start, "end_logits": end}, labels,
                                               reduction="none", attention_mask=mask.long())
            for row, i in enumerate(index):
                n = len(features[i])
                cut = slice(width - n, width) if left else slice(0, n)
                starts[i] = start[row, cut].numpy()
                ends[i] = end[row, cut].numpy()
            done += len(index)
            if progress is not None:
                progress(done, total)
    answers = decode_answers(records, features, starts, ends, n_best=n_best,
                             max_answer_length=max_answer_length, version_2=task.version_2,
                             null_threshold=null_threshold)
    metrics = task.compute_metrics(answers, records)
    owners = torch.tensor([f.example_index for f in features], dtype=torch.int64)
    return EvalResult(task.name, metrics, task.main_metric, len(records), 0.0, losses, answers,
                      loss_example_index=owners, extra={"num_features": total})
