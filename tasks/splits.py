"""A seeded validation split carved from a task's training data.

The specialization driver judges candidates on examples the model was not trained on but
that come from the training distribution: ``split="val"`` of a task is a part of its train
file, ``split="train"`` the rest. The split is deterministic for a seed, the two parts are
disjoint and together cover the file, and it keeps the label distribution:

- classification: stratified by class;
- regression: stratified by the score's quantile bin;
- extractive QA: grouped by context, so that no paragraph is on both sides.

When stratifying is impossible (a class with a single example, fewer validation examples
than classes) the split falls back to a plain seeded shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from optc.errors import InputError

__all__ = ["DEFAULT_VAL_SIZE", "check_val_size", "validation_split", "score_bins"]

DEFAULT_VAL_SIZE = 0.15
"""Fraction of the training data carved out as the validation split."""

_SCORE_BINS = 5
"""Quantile bins a regression score is stratified by."""


def check_val_size(val_size: float | int, total: int) -> None:
    """Refuse a validation size that leaves either part empty (a fraction is rounded up to
    whole examples, as scikit-learn does)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise InputError(f"val_size must be a fraction in (0, 1) or a number of examples, not "
                         f"{val_size!r}")
    if isinstance(val_size, float) and not 0.0 < val_size < 1.0:
        raise InputError(f"val_size={val_size} must be a fraction strictly between 0 and 1 (or "
                         "a whole number of examples)")
    if isinstance(val_size, int) and not 1 <= val_size < total:
        raise InputError(f"val_size={val_size} examples must be at least 1 and below the "
                         f"{total} training examples")
    if isinstance(val_size, float) and math.ceil(val_size * total) >= total:
        raise InputError(f"val_size={val_size} of {total} training examples leaves no training "
                         "examples: use a smaller fraction or more data")


def score_bins(scores: Sequence[float], bins: int = _SCORE_BINS) -> np.ndarray:
    """The quantile bin (0..bins-1) of each score; equal scores share a bin."""
    values = np.asarray(scores, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return np.digitize(values, edges)


def _stratified(n: int, strata: Sequence[Hashable], val_size: float | int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(n)
    try:
        train, val = train_test_split(indices, test_size=val_size, random_state=seed,
                                      shuffle=True, stratify=np.asarray(strata))
    except ValueError:  # a stratum too small to split: fall back to a plain shuffle
        train, val = train_test_split(indices, test_size=val_size, random_state=seed,
                                      shuffle=True)
    return train, val


def validation_split(kind: str, labels: Sequence[Hashable] | None,
                     groups: Sequence[Hashable] | None, total: int,
                     val_size: float | int = DEFAULT_VAL_SIZE,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), each sorted, for ``total`` training examples.

    ``kind`` is the task kind; classification stratifies by ``labels`` (class indices),
    regression by the quantile bin of ``labels`` (scores), extractive QA keeps each of
    ``groups`` (contexts) on one side, and then ``val_size`` counts groups.
    """
    check_val_size(val_size, total)
    if kind == "extractive-qa":
        if groups is None or len(groups) != total:
            raise InputError("a QA validation split needs the context of every example")
        seen: dict[Hashable, int] = {}
        codes = np.array([seen.setdefault(g, len(seen)) for g in groups], dtype=np.int64)
        if codes.max() < 1:
            raise InputError(f"cannot carve a validation split from {total} questions on a single "
                             "context: no context may be shared between train and val")
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
        try:
            train, val = next(splitter.split(np.zeros(total), groups=codes))
        except ValueError as exc:
            raise InputError(f"cannot carve a validation split of val_size={val_size} from "
                             f"{codes.max() + 1} contexts: {exc}") from None
    elif labels is None or len(labels) != total or any(label is None for label in labels):
        raise InputError("a validation split needs a label on every training example")
    elif kind == "regression":
        train, val = _stratified(total, score_bins(labels), val_size, seed)  # type: ignore[arg-type]
    else:
        train, val = _stratified(total, labels, val_size, seed)
    return sorted(int(i) for i in train), sorted(int(i) for i in val)
