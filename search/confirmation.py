"""Acceptance beyond one rule's verdict on one candidate: the share of flipped predictions
the rules count (``max_flips``), a round's confirmation on the examples ``confirm`` kept out
of the search (the longest prefix of its acceptances the rule still accepts there), and the
verdict on the refit a later round starts from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from optc.ir.core import Module
from optc.search.acceptance import AcceptanceRule, Verdict
from optc.search.candidates import Candidate, Config
from optc.search.result import SearchResult
from optc.search.runner import GatedRunner, Outcome
from optc.search.validation import Split
from optc.tasks.task import Task

__all__ = ["flip_share", "confirm_round", "refit_verdict"]


def flip_share(rule: AcceptanceRule, outcome: Outcome, baseline: Outcome) -> float | None:
    """Share of examples whose predicted class differs from the baseline's (None: the rule
    does not count them)."""
    if rule.max_flips is None:
        return None
    pairs = list(zip(outcome.predictions, baseline.predictions, strict=True))
    return sum(a != b for a, b in pairs) / max(1, len(pairs))


def confirm_round(module: Module, reference: Module | None, task: Task,
                  names: tuple[str, ...], split: Split, rule: AcceptanceRule,
                  order: list[Candidate], flops: Callable[[Config], int]
                  ) -> tuple[int, dict[str, Any]]:
    """How many of the acceptances ``order`` to keep: the longest prefix that ``rule``
    accepts on the confirmation ``split`` against the judge's (``reference`` or ``module``)
    results there, the loss rule's "best so far" being the judge's loss (+1e-6: float noise
    of a change that changes nothing). Prefixes are tried longest first, so a search the
    held-out part agrees with costs one evaluation. Returns the count and a record."""
    runner = GatedRunner(module=module, task=task, batches=split.batches, input_names=names,
                         prefix_reuse=False)
    base = runner.evaluate(Config()) if reference is None else GatedRunner(
        module=reference, task=task, batches=split.batches, input_names=names,
        prefix_reuse=False).evaluate(Config())
    base_metric = split.metric_of(base)
    prefixes: list[dict[str, Any]] = []
    keep = 0
    for count in range(len(order), 0, -1):
        config = Config(frozenset(order[:count]))
        outcome = runner.evaluate(config)
        metric = split.metric_of(outcome)
        verdict = rule.judge(outcome.losses, base.losses, base.mean_loss + 1e-6, metric,
                             base_metric, flip_share(rule, outcome, base))
        prefixes.append({"accepted": count, "mean_loss": verdict.mean_loss,
                         "not_worse": verdict.not_worse, "metric": metric,
                         **({} if verdict.flips is None else {"flips": verdict.flips}),
                         "flops": flops(config), "passes": verdict.accepted})
        if verdict.accepted:
            keep = count
            break
    return keep, {"examples": split.count, "baseline_loss": base.mean_loss,
                  "baseline_metric": base_metric, "kept": keep, "of": len(order),
                  "prefixes": prefixes}


def refit_verdict(result: SearchResult, previous: SearchResult, rule: str) -> Verdict:
    """The acceptance rule's verdict on the refit a round (``result``) started from, as that
    round measured it against the judge's validation results; the loss rule also asks for no
    higher a loss than the ``previous`` round ended with (a refit that changes nothing passes;
    1e-6: a committed model's float noise against the gated one). So the search never hands
    on a model its own rule would have refused."""
    verdict = result.start_verdict
    assert verdict is not None
    holds = verdict.accepted and (rule != "loss"
                                  or verdict.mean_loss <= previous.best_loss + 1e-6)
    return replace(verdict, accepted=holds)

