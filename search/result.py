"""What a search reports: one :class:`HistoryEntry` per trial and the :class:`SearchResult`
(the committed module, totals, the Pareto points it evaluated, per-round and confirmation
records) with its JSON summary and text table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from optc.ir.core import Module
from optc.search.acceptance import Verdict
from optc.search.candidates import Config

__all__ = ["HistoryEntry", "SearchResult", "FLOPS_SEQ"]

FLOPS_SEQ = 128
"""Sequence length at which FLOPs are reported."""


@dataclass
class HistoryEntry:
    """One trial of the search."""

    step: int
    kind: str
    layer: int
    units: list[int]
    label: str
    mean_loss: float | None
    """Mean validation loss with the candidate (None: skipped)."""
    not_worse: float | None
    """Share of validation samples no worse than in the baseline."""
    metric: float | None
    """Validation metric with the candidate (classification/regression)."""
    accepted: bool
    flops: int | None
    """FLOPs (batch 1, seq 128) of the model with the candidate."""
    note: str = ""
    """Why a trial was skipped."""
    sweep: int = 1
    """Which pass over the trial order (``SearchOptions.sweeps``)."""
    round: int = 1
    """Which search round (``SearchOptions.rounds``)."""
    flips: float | None = None
    """With ``SearchOptions.max_flips``: share of validation examples predicted as another
    class than in the baseline."""


@dataclass
class SearchResult:
    """What :func:`optc.search.driver.specialize` found."""

    module: Module
    """The committed module (physically smaller; hard attention set; DCE run)."""
    config: Config
    history: list[HistoryEntry]
    baseline_loss: float
    best_loss: float
    baseline_metric: float | None
    best_metric: float | None
    main_metric: str
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    evaluations: int
    seconds: float
    validation_examples: int
    stopped: str = "done"
    """done, time-budget, flops-target or latency-target."""
    sweeps: int = 1
    """Passes over the trial order that were run."""
    skipped: int = 0
    """Trials not tried (their block was removed, its loss was too high, or, in a later
    sweep, they were accepted or nothing changed since they were judged)."""
    counts: dict[str, int] = field(default_factory=dict)
    executor: str = "serial"
    points: list[tuple[Config, float, int]] = field(default_factory=list)
    """Every evaluated configuration (the baseline included): (config, validation score,
    FLOPs); the score is the validation metric, or minus the mean loss for QA."""
    start_loss: float | None = None
    """The searched module's own mean validation loss (the baseline's unless a reference
    was given)."""
    start_metric: float | None = None
    """The searched module's own validation metric."""
    start_verdict: Verdict | None = None
    """The rule's verdict on the searched module itself against the baseline (best loss so
    far: none), e.g. on a refit that a later round starts from."""
    searched: Module | None = None
    """The module the last round searched, which ``config`` and ``points`` apply to (None:
    the input module)."""
    validation: dict[str, Any] = field(default_factory=dict)
    """Where the validation examples came from: ``{"file": PATH}`` (``val_data``) or
    ``{"val_size": X, "seed": N}`` (carved from train), with ``limit`` when one was set."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """Per round: accepted candidates, validation metric at its start and end, FLOPs after,
    evaluations, seconds and what the pipeline between rounds reported."""
    confirmation: dict[str, Any] = field(default_factory=dict)
    """With ``SearchOptions.confirm`` (else empty), the last round's confirmation: examples,
    the judge's loss and metric on them, acceptances kept of those made, and each prefix
    tried (its length, mean loss, share not worse, metric, FLOPs, whether the rule accepts
    it)."""

    def pareto(self, count: int) -> list[tuple[Config, float, int]]:
        """Up to ``count`` operating points from the history's Pareto front (validation score
        vs FLOPs), cheapest first, other than the committed result."""
        front: list[tuple[Config, float, int]] = []
        for point in sorted(self.points, key=lambda p: (p[2], -p[1])):
            if not front or point[1] > front[-1][1]:
                front.append(point)
        front = [p for p in front if p[0] != self.config]
        if count <= 0 or not front:
            return []
        if len(front) <= count:
            return front
        step = (len(front) - 1) / max(1, count - 1)
        picks = sorted({round(i * step) for i in range(count)})
        return [front[i] for i in picks]

    def summary(self) -> dict[str, Any]:
        """JSON-ready history and totals."""
        return {
            "history": [asdict(h) for h in self.history],
            "accepted": [asdict(c) for c in sorted(self.config.accepted)],
            "baseline_loss": self.baseline_loss, "best_loss": self.best_loss,
            "baseline_val_metric": self.baseline_metric, "best_val_metric": self.best_metric,
            "start_loss": self.start_loss, "start_val_metric": self.start_metric,
            "metric": self.main_metric,
            "flops_before": self.flops_before, "flops_after": self.flops_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "evaluations": self.evaluations, "seconds": self.seconds,
            "validation_examples": self.validation_examples, "validation": self.validation,
            "stopped": self.stopped,
            "removed": self.counts, "executor": self.executor, "skipped": self.skipped,
            "sweeps": self.sweeps, "rounds": self.rounds, "confirmation": self.confirmation,
        }

    def table(self) -> str:
        """The history as a text table."""
        sweeps = max((h.sweep for h in self.history), default=1) > 1
        rounds = max((h.round for h in self.history), default=1) > 1
        flips = any(h.flips is not None for h in self.history)
        rows = [("step", "layer", "candidate", "mean loss", "not worse", "metric")
                + (("flips",) if flips else ()) + ("accepted", "GFLOPs")]
        for h in self.history:
            label = f"{h.label} (sweep {h.sweep})" if sweeps and h.sweep > 1 else h.label
            label = f"{label} (round {h.round})" if rounds and h.round > 1 else label
            rows.append((str(h.step), str(h.layer), label,
                         "-" if h.mean_loss is None else f"{h.mean_loss:.4f}",
                         "-" if h.not_worse is None else f"{100 * h.not_worse:.1f}%",
                         "-" if h.metric is None else f"{h.metric:.2f}")
                        + (("-" if h.flips is None else f"{100 * h.flips:.1f}%",) if flips else ())
                        + ("yes" if h.accepted else (h.note or "no"),
                           "-" if h.flops is None else f"{h.flops / 1e9:.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows)
