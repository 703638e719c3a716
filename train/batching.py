"""Training batches: tokenize a split once, then group examples of similar length.

Each epoch shuffles the examples with a seeded generator, sorts windows of
``batch_size * GROUP_WINDOW`` of them by length, cuts those into batches and shuffles the
batch order: batches hold examples of similar length (little padding) while their order and
composition still change from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from optc.errors import InputError
from optc.tasks import Task, build_features
from optc.tasks.batching import INPUT_NAMES, pad_rows, tokenize
from optc.tasks.records import Example, SquadRecord

__all__ = ["Encoded", "encode", "length_grouped", "collate", "GROUP_WINDOW", "input_names_of"]

GROUP_WINDOW = 50
"""Batches' worth of shuffled examples sorted by length together."""


@dataclass(frozen=True)
class Encoded:
    """One tokenized training item (an example, or a QA feature)."""

    input_ids: tuple[int, ...]
    """Token ids, unpadded."""
    token_type_ids: tuple[int, ...] | None
    """Segment ids, or None when the tokenizer gives none."""
    label: int | float | tuple[int, int] | None
    """Class index, score, or (start, end) token positions for QA; None for a label-free
    task (its targets come from a teacher)."""

    def __len__(self) -> int:
        return len(self.input_ids)


def input_names_of(input_names: Sequence[str]) -> tuple[str, ...]:
    """The token inputs among a model's graph inputs (those a tokenizer can produce)."""
    names = tuple(n for n in input_names if n in INPUT_NAMES)
    if "input_ids" not in names:
        raise InputError(f"the model takes {', '.join(input_names)}, without input_ids: "
                         "training needs a token-input model")
    return names


def encode(task: Task, examples: Sequence[Example] | Sequence[SquadRecord], tokenizer: Any,
           max_length: int, doc_stride: int | None = None) -> list[Encoded]:
    """Tokenize labelled ``examples`` of ``task`` (truncated to ``max_length`` tokens); a
    label-free task's examples have no label."""
    if not examples:
        raise InputError(f"no training examples for task '{task.name}': the split is empty")
    if task.kind == "extractive-qa":
        bad = next((i for i, r in enumerate(examples) if not isinstance(r, SquadRecord)), None)
        if bad is not None:
            raise InputError(f"task '{task.name}' trains on optc.tasks.SquadRecord items; item "
                             f"{bad} is a {type(examples[bad]).__name__}")
        features = build_features(list(examples), tokenizer, max_length, doc_stride)
        return [Encoded(tuple(f.input_ids), None if f.token_type_ids is None
                        else tuple(f.token_type_ids), (f.start_position, f.end_position))
                for f in features]
    for i, e in enumerate(examples):
        if not isinstance(e, Example) or (e.label is None and not task.label_free):
            raise InputError(f"training example {i} of task '{task.name}' has no label: "
                             "training needs a labelled split (train, val or dev)")
    all_ids, all_types = tokenize(examples, tokenizer, max_length)
    items: list[Encoded] = []
    for e, ids, tt in zip(examples, all_ids, all_types, strict=True):
        label = (None if task.label_free else
                 float(e.label) if task.kind == "regression" else int(e.label))
        items.append(Encoded(tuple(ids), None if tt is None else tuple(tt), label))
    return items


def length_grouped(lengths: Sequence[int], batch_size: int,
                   generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches (lists of indices) of similar length, in shuffled order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        group = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def collate(items: Sequence[Encoded], names: Sequence[str], pad_id: int, left: bool = False,
            qa: bool = False) -> dict[str, torch.Tensor]:
    """Pad ``items`` to their longest and return the model inputs plus ``labels`` (or, for
    QA, ``start_positions``/``end_positions`` shifted by any left padding)."""
    # losses mask padding even when the model takes no attention mask
    wanted = tuple(dict.fromkeys((*names, "attention_mask")))
    batch = pad_rows([list(i.input_ids) for i in items],
                     [None if i.token_type_ids is None else list(i.token_type_ids) for i in items],
                     wanted, pad_id, left)
    width = batch["input_ids"].shape[1]
    if qa:
        shift = [width - len(i) if left else 0 for i in items]
        batch["start_positions"] = torch.tensor([i.label[0] + d for i, d in zip(items, shift, strict=True)])
        batch["end_positions"] = torch.tensor([i.label[1] + d for i, d in zip(items, shift, strict=True)])
    elif items[0].label is None:  # label-free: the targets come from a teacher
        pass
    elif isinstance(items[0].label, float):
        batch["labels"] = torch.tensor([i.label for i in items], dtype=torch.float32)
    else:
        batch["labels"] = torch.tensor([i.label for i in items], dtype=torch.int64)
    return batch
