"""The Task: what a task's data looks like, the head and loss it needs and how it is scored.

A task reads its splits from a directory (or one file): ``train`` and ``dev`` files (MNLI:
``dev_matched`` and ``dev_mismatched``; ``dev`` then means ``dev_matched``), and ``val``, a
seeded stratified part of train (see :mod:`optc.tasks.splits`); with a validation split,
``train`` is the rest of the train file, so that the two never overlap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from optc.errors import InputError
from optc.tasks.metrics import METRICS, squad_metrics
from optc.tasks.pooling import Pooling
from optc.tasks.readers import (
    TableFormat,
    check_limit,
    find_split_file,
    read_squad_file,
    read_table,
    resolve_data_path,
)
from optc.tasks.records import Example, SquadRecord
from optc.tasks.reuse import read_once
from optc.tasks.splits import DEFAULT_VAL_SIZE, validation_split

__all__ = ["KINDS", "HEADS", "EMBEDDING_KINDS", "AGREEMENT_METRICS", "Task", "model_output"]

KINDS = ("classification", "regression", "extractive-qa", "embedding-similarity",
         "embedding-agreement")
"""Task kinds. The embedding kinds train no head: they score the sentence embeddings pooled
from the model's token states (``last_hidden_state``), zero-shot against gold similarity
scores (``embedding-similarity``) or against a reference model's embeddings
(``embedding-agreement``, label-free)."""

EMBEDDING_KINDS = ("embedding-similarity", "embedding-agreement")
"""Kinds scored on pooled token states, with no task head (nothing to fine-tune or search yet)."""

HEADS = {"classification": "sequence-classification", "regression": "sequence-classification",
         "extractive-qa": "question-answering", "embedding-similarity": "base",
         "embedding-agreement": "base"}
"""The Hugging Face head (``AutoModelFor...``) each kind needs (``base``: ``AutoModel``, the
token states)."""

AGREEMENT_METRICS = ("cosine", "top10_agreement")
"""Metrics of ``embedding-agreement`` (percent): the mean cosine of each text's embedding to the
reference's, and the mean share of each text's 10 nearest neighbours (among the evaluated
texts, by the reference) that the model also ranks among its 10 nearest."""

Reduction = Literal["mean", "sum", "none"]


def model_output(outputs: Any, name: str) -> torch.Tensor:
    """The tensor ``name`` of model outputs (a dict, a Hugging Face ``ModelOutput`` or an object
    with that attribute; numpy arrays are taken as tensors); raises :class:`InputError` listing what the outputs hold."""
    try:
        value = outputs[name]
    except (KeyError, TypeError, IndexError):
        value = getattr(outputs, name, None)
    if isinstance(value, np.ndarray):  # an ONNX Runtime session's outputs
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        keys = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise InputError(f"model outputs have no '{name}' tensor (got {keys}): the task needs a "
                         "model with the matching head")
    return value


@dataclass(frozen=True)
class Task:
    """A task: its data format, head, labels, loss and metrics."""

    name: str
    """Registry name (``sst2``, ``squad``, ``text-classification``)."""
    kind: str
    """One of :data:`KINDS`."""
    num_labels: int
    """Classes (1 for regression, 2 for QA: start and end logits)."""
    label_names: tuple[str, ...]
    """Class names in label-index order (empty for regression and QA)."""
    text_columns: tuple[str, ...]
    """The text (and pair) columns, as the data files name them."""
    label_column: str | None
    """The label column (``None`` for QA: answers live in the JSON)."""
    splits: tuple[str, ...]
    """Splits with a file of their own; ``val`` (carved from train) comes on top."""
    file_names: tuple[str, ...]
    """File name patterns of a split in a task directory (``{split}`` is replaced)."""
    metrics: tuple[str, ...]
    """Metric names reported by :meth:`compute_metrics`."""
    main_metric: str
    """The metric a search maximizes."""
    table: TableFormat | None = None
    """Column layout of the table files (``None`` for SQuAD JSON)."""
    data_path: str | None = None
    """Conventional location under the data root (``glue/SST-2``); ``None``: pass ``data``."""
    version_2: bool = False
    """QA only: questions may be unanswerable (SQuAD v2.0)."""
    description: str = ""
    """One line for listings."""
    numbers_are_indices: bool = True
    """Classification: whether numbers in a label column are known to be 0-based class indices
    (GLUE's convention). False for classes a user named (``labels=World,Sports,...``): then a
    file numbered otherwise (1..n) is refused instead of read shifted by one class."""
    pooling: Pooling | None = None
    """Embedding kinds: how token states become one vector, overriding the pooling the model's
    directory declares (``None``: the model's, else mean)."""
    max_score: float | None = None
    """``embedding-similarity``: the top of the gold score scale (STS-B: 5); the per-pair loss
    is ``(cosine - score / max_score) ** 2`` (sentence-transformers' CosineSimilarityLoss)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"task '{self.name}': unknown kind '{self.kind}', expected one of "
                             f"{', '.join(KINDS)}")
        if self.main_metric not in self.metrics:
            raise InputError(f"task '{self.name}': main metric '{self.main_metric}' is not one "
                             f"of its metrics {', '.join(self.metrics)}")
        if self.kind == "embedding-agreement":
            unknown = [m for m in self.metrics if m not in AGREEMENT_METRICS]
            if unknown:
                raise InputError(f"task '{self.name}': unknown metrics {', '.join(unknown)}; "
                                 f"valid: {', '.join(AGREEMENT_METRICS)}")
        elif self.kind != "extractive-qa":
            unknown = [m for m in self.metrics if m not in METRICS]
            if unknown:
                raise InputError(f"task '{self.name}': unknown metrics {', '.join(unknown)}; "
                                 f"valid: {', '.join(METRICS)}")
            if self.table is None:
                raise InputError(f"task '{self.name}': a {self.kind} task needs a table format")
        if self.kind == "embedding-similarity" and (self.max_score is None
                                                    or not math.isfinite(self.max_score)
                                                    or self.max_score <= 0):
            raise InputError(f"task '{self.name}': max_score must be a positive number, not "
                             f"{self.max_score!r}")
        if self.kind == "classification" and (self.num_labels < 2
                                              or len(self.label_names) != self.num_labels):
            raise InputError(f"task '{self.name}': a classification task needs at least 2 label "
                             f"names, one per class, got {list(self.label_names)}")

    # ---------------------------------------------------------------------------------------
    # Description

    @property
    def head(self) -> str:
        """The Hugging Face head the task needs: ``sequence-classification`` or
        ``question-answering``."""
        return HEADS[self.kind]

    @property
    def trainable(self) -> bool:
        """Whether the task has a head that training and searches can use (not the
        :data:`EMBEDDING_KINDS`, scored on token states with no head yet)."""
        return self.kind not in EMBEDDING_KINDS

    def check_trainable(self, what: str) -> None:
        """Refuse (:class:`InputError`, naming ``what``: a command or pass) a task that
        :attr:`trainable` says has no head to train or search on."""
        if self.label_free:
            raise InputError(f"{what} cannot use task '{self.name}' ({self.kind}) yet: it has no "
                             "labels (its targets are a reference model's embeddings); train on "
                             "it with distill (the teacher's embeddings are the targets) and "
                             "score models on it with optc eval --against")
        if not self.trainable:
            raise InputError(f"{what} cannot use task '{self.name}' ({self.kind}) yet: it scores "
                             "pooled token states with no head to train or search; score models "
                             "on it with optc eval")

    @property
    def label_free(self) -> bool:
        """Whether the task's targets are a reference model's outputs, not labels
        (``embedding-agreement``): distillation trains on it (the teacher is the reference),
        fine-tuning cannot."""
        return self.kind == "embedding-agreement"

    @property
    def needs_reference(self) -> bool:
        """Whether scoring needs a reference model's embeddings (``embedding-agreement``)."""
        return self.kind == "embedding-agreement"

    @property
    def all_splits(self) -> tuple[str, ...]:
        """Every split :meth:`read` accepts."""
        return (*self.splits, "val")

    @property
    def eval_split(self) -> str:
        """The split ``dev`` stands for (``dev`` or MNLI's ``dev_matched``)."""
        return "dev" if "dev" in self.splits else next(s for s in self.splits if s.startswith("dev"))

    # ---------------------------------------------------------------------------------------
    # Data

    def data_file(self, split: str, data: str | os.PathLike | None = None) -> Path:
        """The file holding file split ``split`` (``train``, ``dev``, ...): ``data`` (a file, or
        a task directory) or else the task's conventional directory under the data root."""
        if data is None and self.data_path is None:
            raise InputError(f"task '{self.name}' has no conventional data location: pass the "
                             "data file or directory")
        path = resolve_data_path(self.data_path if data is None else data)
        if path.is_dir():
            return find_split_file(path, split, [p.format(split=split) for p in self.file_names])
        return path

    def _read_split_file(self, split: str, data: str | os.PathLike | None) -> list[Any]:
        file = self.data_file(split, data)
        if not file.is_file():
            raise InputError(f"data path '{file}' is not a regular file")
        return read_once(self, file, lambda: self._parse_file(file))  # see reuse_reads

    def _parse_file(self, file: Path) -> list[Any]:
        if self.table is not None:
            if self.kind == "embedding-agreement":
                return read_table(file, self.table, self.parse_label, require_label=False)
            if (self.kind != "classification" or self.numbers_are_indices
                    or self._numeric_names() is not None):
                return read_table(file, self.table, self.parse_label)
            numbers: list[int] = []  # labels read as indices, not matched by a class name

            def parse(raw: Any, where: str) -> int | float:
                index = self.parse_label(raw, where)
                if not (isinstance(raw, str) and raw.strip() in self.label_names):
                    numbers.append(int(index))
                return index

            examples = read_table(file, self.table, parse)
            self._check_indices(numbers, file)
            return examples
        records = read_squad_file(file)
        if not self.version_2:
            missing = next((r for r in records if not r.answer_texts), None)
            if missing is not None:
                raise InputError(f"{file}: question '{missing.id}' has no answer, which SQuAD "
                                 "v1.1 requires: use task squad_v2 for unanswerable questions")
        return records

    def read(self, split: str = "dev", data: str | os.PathLike | None = None, *,
             val_size: float | int = DEFAULT_VAL_SIZE, seed: int = 0,
             limit: int | None = None) -> list[Example] | list[SquadRecord]:
        """The examples of ``split`` in file order: :class:`~optc.tasks.Example` for
        classification and regression, :class:`~optc.tasks.SquadRecord` for QA.

        ``val`` is a seeded stratified ``val_size`` part of the train file (a fraction or a
        count) and ``train`` the rest; ``val_size=0`` makes ``train`` the whole file.
        ``limit`` keeps the first ``limit`` examples of the split.
        """
        check_limit(limit)
        if split == "dev" and "dev" not in self.splits:
            split = self.eval_split
        if split in ("train", "val"):
            examples = self._read_split_file("train", data)
            if val_size == 0 and split == "train":
                chosen = examples
            elif val_size == 0:
                raise InputError(f"split 'val' of task '{self.name}' is empty with val_size=0: "
                                 "give a positive val_size")
            else:
                train, val = self.split(examples, val_size, seed)
                chosen = [examples[i] for i in (val if split == "val" else train)]
        elif split in self.splits:
            chosen = self._read_split_file(split, data)
        else:
            raise InputError(f"task '{self.name}' has no split '{split}': valid splits are "
                             f"{', '.join(self.all_splits)}")
        return chosen[:limit] if limit is not None else chosen

    def split(self, examples: Sequence[Any], val_size: float | int, seed: int = 0
              ) -> tuple[list[int], list[int]]:
        """Indices (rest, part) of a seeded ``val_size`` part of ``examples``, stratified as
        the task's kind allows (:func:`~optc.tasks.splits.validation_split`): by class, by
        score bin, by QA context; the label-free kind by a plain seeded shuffle."""
        labels = groups = None
        if self.kind == "extractive-qa":
            groups = [r.context for r in examples]
        elif self.kind == "embedding-agreement":
            labels = [0] * len(examples)
        else:
            labels = [e.label for e in examples]
        return validation_split(_SPLIT_KINDS.get(self.kind, self.kind), labels, groups,
                                len(examples), val_size=val_size, seed=seed)

    def read_file(self, data: str | os.PathLike, split: str = "val", *,
                  limit: int | None = None) -> list[Example] | list[SquadRecord]:
        """The examples of the file ``data`` in file order (a directory: its file for
        ``split``, e.g. ``val.tsv``), read in the task's format: a split a user keeps apart,
        such as a validation set drawn from where the model will be used."""
        check_limit(limit)
        chosen = self._read_split_file(split, data)
        return chosen[:limit] if limit is not None else chosen

    def parse_label(self, raw: Any, where: str) -> int | float:
        """The label index (classification) or score (regression) of the raw cell ``raw``
        found at ``where`` (``file:line``); raises :class:`InputError` naming both."""
        column = self.label_column or "label"
        hint = self.table.hint if self.table is not None else ""
        if self.kind in ("regression", "embedding-similarity"):
            value: float | None = None
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                value = float(raw)
            elif isinstance(raw, str):
                try:
                    value = float(raw.strip())
                except ValueError:
                    value = None
            if value is None or not math.isfinite(value):
                raise InputError(f"{where}: regression task '{self.name}' needs a numeric label "
                                 f"in column '{column}', found {raw!r}{hint}")
            return value
        if self.kind != "classification":
            raise InputError(f"task '{self.name}' ({self.kind}) has no class labels")
        number: float | None = None
        if isinstance(raw, str):
            text = raw.strip()
            if text in self.label_names:
                return self.label_names.index(text)
            try:
                number = float(text)
            except ValueError:
                number = None
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            number = float(raw)
        names = ", ".join(self.label_names)
        by_value = self._numeric_names()
        if by_value is not None:  # numeric class names: a number maps by value only
            if number is not None and number in by_value:
                return by_value[number]
            raise InputError(f"{where}: label {raw!r} in column '{column}' is not a label of "
                             f"task '{self.name}' (one of {names}){hint}")
        if number is not None and number.is_integer() and 0 <= number < self.num_labels:
            return int(number)
        numbered = "" if number is None or self.numbers_are_indices else (
            ": numbers are read as 0-based indices of the named classes; a file numbered from 1 "
            f"needs the classes named by its values (labels="
            f"{','.join(str(i + 1) for i in range(self.num_labels))})")
        raise InputError(f"{where}: label {raw!r} in column '{column}' is not a label of task "
                         f"'{self.name}' (one of {names}, or an index 0..{self.num_labels - 1})"
                         f"{numbered}{hint if not numbered else ''}")

    def _numeric_names(self) -> dict[float, int] | None:
        """Class names that are all numbers (``labels=1,2,3,4``, the default ``0,1``): value ->
        index, so that a numeric label maps by value, never by position; else None."""
        values: dict[float, int] = {}
        for index, name in enumerate(self.label_names):
            try:
                values[float(name)] = index
            except ValueError:
                return None
        return values

    def _check_indices(self, numbers: Sequence[int], file: Path) -> None:
        """Numbers in a file whose classes the user named are 0-based indices only when the
        file uses class 0: otherwise (1..n-1 or a subset) a file numbered from 1 would be read
        shifted by one class, silently. Refuse with the fix."""
        if not numbers or 0 in numbers:
            return
        found = sorted(set(numbers))
        raise InputError(
            f"{file}: the labels in column '{self.label_column or 'label'}' are numbers "
            f"({', '.join(map(str, found[:6]))}{', ...' if len(found) > 6 else ''}) without 0, so "
            f"it is ambiguous whether they are 0-based indices of {', '.join(self.label_names)} "
            "or numbered from 1: name the classes by the file's values "
            f"(labels={','.join(str(i + 1) for i in range(self.num_labels))}) or write 0-based "
            "labels or class names in the file")

    # ---------------------------------------------------------------------------------------
    # Loss, predictions, metrics

    def loss(self, outputs: Any, labels: Any, reduction: Reduction = "mean",
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of model ``outputs`` (a dict of tensors or a model output).

        Classification: cross-entropy of ``logits`` against class indices; regression: squared
        error of ``logits`` (one column) against scores; ``embedding-similarity``: the squared
        error of the cosine of ``embeddings`` and ``pair_embeddings`` against ``score /
        max_score``; ``embedding-agreement``: ``1 - cosine`` of ``embeddings`` and the reference
        embeddings given as ``labels``; QA: the mean of the start and end
        cross-entropies against ``labels`` = ``{"start_positions", "end_positions"}`` (or a
        pair), with positions outside the sequence ignored as Hugging Face does; with
        ``attention_mask``, padded positions are never chosen. ``reduction="none"`` gives one
        loss per example (per feature for QA).
        """
        if reduction not in ("mean", "sum", "none"):
            raise InputError(f"reduction must be mean, sum or none, not {reduction!r}")
        if self.kind == "extractive-qa":
            return self._span_loss(outputs, labels, reduction, attention_mask)
        if self.kind in EMBEDDING_KINDS:
            return _reduce(self._embedding_loss(outputs, labels), reduction)
        logits = model_output(outputs, "logits").float()
        labels = torch.as_tensor(labels)
        if self.kind == "regression":
            if logits.dim() == 2 and logits.shape[-1] != 1:
                raise InputError(f"regression task '{self.name}' needs one logit per example, "
                                 f"got logits of shape {tuple(logits.shape)}")
            return F.mse_loss(logits.reshape(-1), labels.float().reshape(-1), reduction=reduction)
        if logits.dim() != 2 or logits.shape[-1] != self.num_labels:
            raise InputError(f"task '{self.name}' needs logits of shape (batch, {self.num_labels}), "
                             f"got {tuple(logits.shape)}: the model head has the wrong number of "
                             "labels")
        return F.cross_entropy(logits, labels.long(), reduction=reduction)

    def _embedding_loss(self, outputs: Any, labels: Any) -> torch.Tensor:
        first = model_output(outputs, "embeddings").float()
        if self.kind == "embedding-agreement":
            second = torch.as_tensor(labels).float()
            target = torch.ones(first.shape[0])
        else:
            second = model_output(outputs, "pair_embeddings").float()
            target = torch.as_tensor(labels).float().reshape(-1) / float(self.max_score or 1.0)
        if first.dim() != 2 or first.shape != second.shape:
            raise InputError(f"task '{self.name}' compares embeddings of the same shape "
                             f"[examples, width], got {tuple(first.shape)} and "
                             f"{tuple(second.shape)}")
        cosine = F.cosine_similarity(first, second, dim=-1)
        if self.kind == "embedding-agreement":
            return 1.0 - cosine
        return (cosine - target.to(cosine.device)) ** 2

    def _span_loss(self, outputs: Any, labels: Any, reduction: Reduction,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
        start_logits = model_output(outputs, "start_logits").float()
        end_logits = model_output(outputs, "end_logits").float()
        if isinstance(labels, Mapping):
            starts, ends = labels["start_positions"], labels["end_positions"]
        else:
            starts, ends = labels
        length = start_logits.shape[-1]
        if attention_mask is not None:
            pad = attention_mask.to(start_logits.device) == 0
            low = torch.finfo(start_logits.dtype).min
            start_logits = start_logits.masked_fill(pad, low)
            end_logits = end_logits.masked_fill(pad, low)
        starts = torch.as_tensor(starts).long().clamp(0, length)
        ends = torch.as_tensor(ends).long().clamp(0, length)
        start = F.cross_entropy(start_logits, starts, ignore_index=length, reduction="none")
        end = F.cross_entropy(end_logits, ends, ignore_index=length, reduction="none")
        per_feature = (start + end) / 2
        if reduction == "none":
            return per_feature
        return per_feature.sum() if reduction == "sum" else per_feature.mean()

    def predictions(self, logits: torch.Tensor) -> list[int] | list[float]:
        """Class indices (argmax) or scores of a batch of classification/regression logits."""
        if self.kind not in ("classification", "regression"):
            raise InputError(f"task '{self.name}' ({self.kind}) predicts no classes or scores "
                             "from logits")
        if self.kind == "regression":
            return [float(v) for v in logits.float().reshape(-1)]
        return [int(v) for v in logits.argmax(dim=-1)]

    def compute_metrics(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, float]:
        """Every metric of the task (percentages). Classification/regression: predicted and
        gold labels; ``embedding-similarity``: cosines and gold scores; ``embedding-agreement``:
        per-text ``{metric: value in [0, 1]}`` (references unused); QA: answer texts and the
        :class:`~optc.tasks.SquadRecord` questions."""
        if self.kind == "extractive-qa":
            return squad_metrics(predictions, [r.answer_texts for r in references])
        if self.kind == "embedding-agreement":
            if not predictions:
                raise InputError("metrics need at least one example, got none")
            return {name: 100.0 * float(np.mean([p[name] for p in predictions]))
                    for name in self.metrics}
        return {name: METRICS[name](predictions, references) for name in self.metrics}


_SPLIT_KINDS = {"embedding-similarity": "regression", "embedding-agreement": "classification"}
"""How the validation split of an embedding kind is drawn: scores binned like regression; the
label-free kind as one class (a seeded shuffle)."""


def _reduce(losses: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
