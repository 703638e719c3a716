"""Acceptance rules: when the search keeps a candidate.

``loss`` (published, AxFormer): the mean validation loss is lower than the best so far AND
more than half of the validation samples have a loss no worse than in the unpruned baseline.
``metric``: the validation metric stays within ``tolerance`` points of the baseline's.
``metric-loss``: the metric rule, and the mean validation loss no higher than the baseline's
(a continuous guard: a discrete or rank metric can stay level, by chance, while many small
removals add up to a worse model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optc.errors import PipelineSpecError

__all__ = ["Verdict", "AcceptanceRule", "LossRule", "MetricRule", "MetricLossRule", "make_rule",
           "RULES"]

RULES = ("loss", "metric", "metric-loss")
"""The acceptance rules by name."""


@dataclass(frozen=True)
class Verdict:
    """What a rule decided about one evaluation."""

    accepted: bool
    mean_loss: float
    not_worse: float
    """Share of samples whose loss is no worse than in the baseline (0..1)."""
    metric: float | None = None
    """The validation metric (metric rule only)."""


class AcceptanceRule:
    """Decides on a candidate from its per-sample losses (and metric)."""

    name = ""

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None) -> Verdict:
        raise NotImplementedError

    @staticmethod
    def not_worse(losses: torch.Tensor, baseline: torch.Tensor) -> float:
        return float((losses <= baseline).float().mean())


class LossRule(AcceptanceRule):
    """The published rule: lower mean loss than the best so far, and most samples no worse
    than in the baseline (strictly more than ``majority`` of them)."""

    name = "loss"

    def __init__(self, majority: float = 0.5) -> None:
        self.majority = majority

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None) -> Verdict:
        mean = float(losses.mean())
        share = self.not_worse(losses, baseline)
        return Verdict(mean < best_loss and share > self.majority, mean, share, metric)


class MetricRule(AcceptanceRule):
    """Keep a candidate while the validation metric is at most ``tolerance`` points below the
    baseline's (the fastest model within tolerance)."""

    name = "metric"
    needs_metric = True

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = tolerance

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None) -> Verdict:
        assert metric is not None and baseline_metric is not None
        mean = float(losses.mean())
        share = self.not_worse(losses, baseline)
        return Verdict(metric >= baseline_metric - self.tolerance, mean, share, metric)


class MetricLossRule(MetricRule):
    """The metric rule, and the mean validation loss at most the baseline's."""

    name = "metric-loss"

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None) -> Verdict:
        verdict = super().judge(losses, baseline, best_loss, metric, baseline_metric)
        within = verdict.mean_loss <= float(baseline.mean())
        return Verdict(verdict.accepted and within, verdict.mean_loss, verdict.not_worse,
                       verdict.metric)


def make_rule(name: str, tolerance: float = 0.0) -> AcceptanceRule:
    """The rule called ``name`` (one of :data:`RULES`)."""
    if name == "loss":
        return LossRule()
    metric_rules = {"metric": MetricRule, "metric-loss": MetricLossRule}
    if name in metric_rules:
        if tolerance < 0:
            raise PipelineSpecError(f"the metric rule's tolerated drop must be >= 0, got {tolerance}")
        return metric_rules[name](tolerance)
    raise PipelineSpecError(f"unknown acceptance rule '{name}'; valid rules: {', '.join(RULES)}")
