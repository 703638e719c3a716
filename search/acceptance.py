"""Acceptance rules: when the search keeps a candidate.

``loss`` (published, AxFormer): the mean validation loss is lower than the best so far AND
more than half of the validation samples have a loss no worse than in the unpruned baseline.
``metric``: the validation metric stays within ``tolerance`` points of the baseline's.
``metric-loss``: the metric rule, and the mean validation loss no higher than the baseline's
(a continuous guard: a discrete or rank metric can stay level, by chance, while many small
removals add up to a worse model).
Any of them with ``max_flips``: also at most that share of the validation examples predicted
as another class than the baseline predicts them (:class:`FlipGuard`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from optc.errors import PipelineSpecError

__all__ = ["Verdict", "AcceptanceRule", "LossRule", "MetricRule", "MetricLossRule", "FlipGuard",
           "make_rule", "RULES"]

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
    flips: float | None = None
    """Share of examples predicted as another class than in the baseline (0..1; None: not
    counted)."""


class AcceptanceRule:
    """Decides on a candidate from its per-sample losses (and metric)."""

    name = ""
    max_flips: float | None = None
    """Largest share of flipped predictions accepted (None: flips are not counted)."""

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None,
              flips: float | None = None) -> Verdict:
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
              metric: float | None = None, baseline_metric: float | None = None,
              flips: float | None = None) -> Verdict:
        mean = float(losses.mean())
        share = self.not_worse(losses, baseline)
        return Verdict(mean < best_loss and share > self.majority, mean, share, metric, flips)


class MetricRule(AcceptanceRule):
    """Keep a candidate while the validation metric is at most ``tolerance`` points below the
    baseline's (the fastest model within tolerance)."""

    name = "metric"
    needs_metric = True

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = tolerance

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None,
              flips: float | None = None) -> Verdict:
        assert metric is not None and baseline_metric is not None
        mean = float(losses.mean())
        share = self.not_worse(losses, baseline)
        return Verdict(metric >= baseline_metric - self.tolerance, mean, share, metric, flips)


class MetricLossRule(MetricRule):
    """The metric rule, and the mean validation loss at most the baseline's."""

    name = "metric-loss"

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None,
              flips: float | None = None) -> Verdict:
        verdict = super().judge(losses, baseline, best_loss, metric, baseline_metric, flips)
        within = verdict.mean_loss <= float(baseline.mean())
        return replace(verdict, accepted=verdict.accepted and within)


class FlipGuard(AcceptanceRule):
    """Another rule, and at most ``max_flips`` of the validation examples predicted as another
    class than the baseline predicts them. Unlike a metric's level, the share of changed
    predictions needs no labels and varies little from one sample of examples to another, so
    it bounds how far the model has moved on unseen data as well (accuracy moves by at most
    the share of flipped predictions)."""

    def __init__(self, rule: AcceptanceRule, max_flips: float) -> None:
        self.rule, self.max_flips = rule, max_flips
        self.name = rule.name

    def judge(self, losses: torch.Tensor, baseline: torch.Tensor, best_loss: float,
              metric: float | None = None, baseline_metric: float | None = None,
              flips: float | None = None) -> Verdict:
        assert flips is not None, "the flip guard needs the share of flipped predictions"
        verdict = self.rule.judge(losses, baseline, best_loss, metric, baseline_metric, flips)
        return replace(verdict, accepted=verdict.accepted and flips <= self.max_flips)


def make_rule(name: str, tolerance: float = 0.0, max_flips: float | None = None) -> AcceptanceRule:
    """The rule called ``name`` (one of :data:`RULES`), guarded by ``max_flips`` if given."""
    if max_flips is not None and not 0 <= max_flips < 1:
        raise PipelineSpecError(f"the largest share of flipped predictions is a fraction in "
                                f"[0, 1), got {max_flips}")
    metric_rules = {"metric": MetricRule, "metric-loss": MetricLossRule}
    rule: AcceptanceRule
    if name == "loss":
        rule = LossRule()
    elif name in metric_rules:
        if tolerance < 0:
            raise PipelineSpecError(f"the metric rule's tolerated drop must be >= 0, got {tolerance}")
        rule = metric_rules[name](tolerance)
    else:
        raise PipelineSpecError(f"unknown acceptance rule '{name}'; valid rules: {', '.join(RULES)}")
    return rule if max_flips is None else FlipGuard(rule, max_flips)
