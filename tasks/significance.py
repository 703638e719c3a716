"""Is a change of the task metric real? A paired bootstrap over the evaluated examples.

Two models scored on the same examples differ by a metric delta; resampling the examples
(with replacement, the same draw for both models) gives the distribution of that delta and
a confidence interval (percentile method, :func:`scipy.stats.bootstrap`). An interval that
contains 0 says the examples cannot tell the two models apart: on GLUE's small dev sets
(RTE 277, MRPC 408, CoLA 1043 examples) a difference of one or two points often is noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from optc.errors import InputError
from optc.tasks.metrics import BATCHED_METRICS, METRICS
from optc.tasks.records import Example
from optc.tasks.task import Task

__all__ = ["MetricDelta", "paired_bootstrap", "references_of"]


def references_of(examples: Sequence[Any]) -> list[Any]:
    """What a task's metric compares predictions with: the labels of
    :class:`~optc.tasks.Example` items, the SQuAD records themselves for QA."""
    return [e.label if isinstance(e, Example) else e for e in examples]


@dataclass(frozen=True)
class MetricDelta:
    """The main metric of two models on the same examples and the interval of its change."""

    metric: str
    before: float
    after: float
    low: float
    """Lower end of the confidence interval of ``after - before`` (metric points)."""
    high: float
    confidence: float
    resamples: int
    examples: int

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0

    def describe(self) -> str:
        """``+0.57 [95% CI -1.20, +2.31]``."""
        return (f"{self.delta:+.2f} [{100 * self.confidence:g}% CI {self.low:+.2f}, "
                f"{self.high:+.2f}]")

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "before": self.before, "after": self.after,
                "delta": self.delta, "low": self.low, "high": self.high,
                "confidence": self.confidence, "resamples": self.resamples,
                "examples": self.examples, "significant": self.significant}


def paired_bootstrap(task: Task, before: Sequence[Any], after: Sequence[Any],
                     references: Sequence[Any], *, confidence: float = 0.95,
                     resamples: int = 1000, seed: int = 0) -> MetricDelta:
    """The change of ``task``'s main metric from predictions ``before`` to ``after`` (per
    example, in the order of ``references``: labels, or SQuAD records for QA) with a paired
    bootstrap confidence interval."""
    n = len(references)
    if len(before) != n or len(after) != n:
        raise InputError(f"paired comparison needs predictions for the same examples: got "
                         f"{len(before)} and {len(after)} for {n} references")
    if n < 2:
        raise InputError(f"a bootstrap interval needs at least 2 examples, got {n}")
    if not 0 < confidence < 1:
        raise InputError(f"the confidence level is a fraction in (0, 1), got {confidence}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1, got {resamples}")
    name = task.main_metric
    metric = METRICS.get(name) if task.kind != "extractive-qa" else None

    def score(predictions: Sequence[Any], idx: np.ndarray) -> float:
        preds, refs = [predictions[i] for i in idx], [references[i] for i in idx]
        if metric is not None:  # only the main metric, not all of the task's
            return metric(preds, refs)
        return task.compute_metrics(preds, refs)[name]

    def delta(idx: np.ndarray) -> float:
        return score(after, idx) - score(before, idx)

    everything = np.arange(n)
    base, new = score(before, everything), score(after, everything)
    rows = BATCHED_METRICS.get(name) if metric is not None else None
    statistic, vectorized = delta, False
    if rows is not None:  # every resample at once (the same draws: only the statistic changes)
        b, a, r = np.asarray(before), np.asarray(after), np.asarray(references)

        def batched(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            idx = np.asarray(idx, dtype=np.int64)
            flat = idx.reshape(-1, n)
            value = rows(a[flat], r[flat]) - rows(b[flat], r[flat])
            return value.reshape(idx.shape[:-1])

        statistic, vectorized = batched, True
    result = stats.bootstrap((everything,), statistic, n_resamples=resamples,
                             confidence_level=confidence, method="percentile",
                             vectorized=vectorized, random_state=np.random.default_rng(seed))
    low, high = (float(x) for x in result.confidence_interval)
    return MetricDelta(name, base, new, low, high, confidence, resamples, n)
