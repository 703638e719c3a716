"""The specialization driver: the AxFormer greedy search on one fine-tuned module.

1. evaluate the unpruned module on a validation split carved from train (per-sample losses
   kept as the baseline);
2. try hard attention in each layer, first to last;
3. from the last layer to the first: the whole FFN block, else (if its loss stayed below
   1.1x the best) its neuron groups one at a time; then the whole attention block, else its
   heads one at a time;
4. accept a candidate by the acceptance rule (published: lower mean loss than the best so
   far and more than half of the samples no worse than the baseline).

Beyond the published search, ``sweeps=N`` repeats steps 2-4 up to N times: a removal
rejected in one sweep may be accepted once others have changed what its layer sees. A later
sweep tries only candidates not yet accepted whose configuration has changed since they were
judged (the same configuration gives the same verdict), and the search stops after a sweep
that accepts nothing.
``rounds=N`` repeats the whole search up to N times with a refit between rounds: the
``between`` pipeline (default ``reconstruct``: least-squares refit of the pruned blocks'
output projections toward the input module) runs on a round's committed result, and the
next round searches the refitted module, judged against the input module's validation
results, so it can keep removals that the refit made harmless. A round that accepts nothing,
or stops on a target or the time budget, ends the search. When a round accepts nothing,
the refit it searched is kept only if the acceptance rule accepts it on the validation split
(e.g. a refit that lowers the metric below the tolerance is not), else the previous round's
result stands: the search never hands on a model its own rule would refuse.
``unit_order="importance"`` ranks each layer's heads and FFN neurons by their Taylor
importance on the validation split, once before the search: heads are tried least important
first and neuron groups are formed by rank rather than by position.

``confirm=X`` keeps a share X of the validation examples out of the search (a seeded split,
stratified like the validation split) to check it: a search that judges hundreds of
candidates on a few hundred examples keeps some whose harm the noise hides, and its
validation figures are then too kind. After a round, its acceptances are replayed in order
on the held-out part and the round keeps the longest prefix that the acceptance rule still
accepts there (against the judge's results on that part); the rest are recorded as cut.
``max_flips=X`` (classification) also refuses a candidate that changes the predicted class of
more than a share X of the validation examples: a metric can stay level while many
predictions change in both directions, and what carries over to unseen data is those flips,
not their lucky balance (the share of flips needs no labels and is of the same order on
unseen examples; it bounds how far accuracy can move).

Candidates are gates on a running module (:mod:`optc.search.runner`), committed physically
at the end (:func:`optc.search.candidates.commit`). With several workers the next trials are
evaluated speculatively (assuming the pending ones are rejected) and re-evaluated after an
acceptance, so the accepted set equals the serial run's.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from optc.data import INPUT_NAMES, Batch
from optc.errors import InputError, PipelineSpecError
from optc.ir.analysis import Structure, analyze, module_flops
from optc.ir.core import Module
from optc.ir.verifier import verify
from optc.passes.context import PassContext
from optc.passes.importance import taylor_scores
from optc.passes.manager import PassManager
from optc.passes.spec import parse_pipeline, task_pipeline
from optc.search.acceptance import AcceptanceRule, Verdict, make_rule
from optc.search.candidates import (
    KINDS,
    Candidate,
    Config,
    Importance,
    Trial,
    commit,
    plan_trials,
)
from optc.search.executors import make_executor
from optc.search.measure import latencies
from optc.search.runner import GatedRunner, Outcome, attach_reference, prepare_batches
from optc.tasks.registry import get_task
from optc.tasks.task import EMBEDDING_KINDS, Task
from optc.train.heads import has_task_head, has_token_states, task_spec

__all__ = ["SearchOptions", "HistoryEntry", "SearchResult", "specialize", "validate",
           "validation_examples", "held_out_examples", "holdout_options", "check_searchable",
           "MIN_VALIDATION",
           "FLOPS_SEQ",
           "UNIT_ORDERS"]

MIN_VALIDATION = 20
"""Fewer validation examples than this make the majority vote meaningless."""

FLOPS_SEQ = 128
"""Sequence length at which FLOPs are reported."""

UNIT_ORDERS = ("index", "importance")
"""How heads and neuron groups are formed and ordered (:attr:`SearchOptions.unit_order`)."""


@dataclass(frozen=True)
class SearchOptions:
    """Options of the search; the defaults are the published procedure."""

    rule: str = "loss"
    """Acceptance rule: loss (published), metric (validation metric within ``tolerance``) or
    metric-loss (that, and the mean validation loss no higher than the baseline's)."""
    tolerance: float = 0.0
    """metric rule: tolerated drop of the validation metric, in points."""
    kinds: tuple[str, ...] = KINDS
    """Candidate kinds, in order: hard-attention, ffn, ffn-groups, attention, heads."""
    neuron_groups: int = 12
    """FFN neuron groups per layer."""
    k: int = 30
    """Hard attention: probabilities kept per query row."""
    fine_threshold: float = 1.1
    """Groups/heads are tried after a rejected block when its loss < this x the best loss.
    Not for the label-free ``embedding`` task: its loss is a distance to the reference model's
    embeddings, 0 for the input itself, so no ratio to it means "close"; every group and head
    is tried there (the time budget bounds the search)."""
    val_size: float | int = 0.15
    """Validation split carved from train: a fraction, or a number of examples."""
    seed: int = 0
    """Seed of the validation split."""
    val_limit: int | None = None
    """Use only the first N validation examples."""
    val_data: str | os.PathLike | None = None
    """Validation examples from this file (a directory: its ``val`` file) instead of a part
    carved from train (``val_size``/``seed`` then unused): e.g. data from where the model
    will be used, when train does not represent it."""
    batch_size: int = 32
    max_length: int | None = None
    """Token limit (default 128; 384 for QA)."""
    flops_target: float | None = None
    """Stop once the FLOPs are at most this fraction of the starting module's."""
    time_budget: float | None = None
    """Seconds after which no new candidate is tried (the best model so far is kept)."""
    latency_target: float | None = None
    """Stop once the measured eager latency (batch 1, seq 128, 1 thread) is at most this
    fraction of the starting module's (measured after each acceptance)."""
    prefix_reuse: bool = True
    """Reuse the hidden states entering a layer for all candidates in it."""
    workers: int = 1
    """Local worker processes (1: serial)."""
    ray: bool = False
    """Evaluate on Ray actors (also when RAY_ADDRESS is set)."""
    sweeps: int = 1
    """Passes over the trial order (1: published); a sweep that accepts nothing ends it."""
    unit_order: str = "index"
    """How heads are ordered and neurons grouped: ``index`` (published: by position) or
    ``importance`` (Taylor importance on the validation split, least important first)."""
    rounds: int = 1
    """Searches, each on the previous one's refitted result (1: published)."""
    between: str = "reconstruct"
    """Pipeline run on a round's result before the next round (reference: the input
    module; data-reading passes get the search's data)."""
    confirm: float = 0.0
    """Share of the validation examples kept out of the search to confirm it (0: none, as
    published): after each round its acceptances are replayed in order on this part and cut
    after the longest prefix that the rule still accepts there (see :func:`specialize`)."""
    max_flips: float | None = None
    """Classification: also refuse a candidate that makes more than this share of the
    validation examples predicted as another class than the baseline (the unpruned or
    reference model) predicts them; None: not counted (published)."""
    device: str = "cpu"
    """Where the training passes of ``between`` run (cpu, cuda, cuda:N, auto; the search's own
    evaluations run on the CPU)."""
    precision: str = "fp32"
    """Autocast precision of those training passes (fp32, bf16, fp16)."""
    holdout: float = 0.0
    """Share of the validation examples the search never sees (a seeded split, stratified
    like the validation split; 0: none, as published): the held-out part on which
    :mod:`optc.search.contract` checks the result (:func:`held_out_examples`)."""

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise PipelineSpecError(f"unknown candidate kind '{(bad or [''])[0]}'; valid kinds: "
                                    f"{', '.join(KINDS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise PipelineSpecError(f"k must be an integer >= 1 (attention probabilities kept "
                                    f"per query row), got {self.k!r}")
        if self.neuron_groups < 1:
            raise PipelineSpecError(f"neuron groups must be >= 1, got {self.neuron_groups}")
        if isinstance(self.sweeps, bool) or not isinstance(self.sweeps, int) or self.sweeps < 1:
            raise PipelineSpecError(f"sweeps must be an integer >= 1, got {self.sweeps!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise PipelineSpecError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        parse_pipeline(self.between)  # also with one round: a bad spec is a bad option
        for name in ("fine_threshold", "tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise PipelineSpecError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.workers < 1:
            raise PipelineSpecError(f"workers must be >= 1, got {self.workers}")
        if self.unit_order not in UNIT_ORDERS:
            raise PipelineSpecError(f"unknown unit order '{self.unit_order}'; valid orders: "
                                    f"{', '.join(UNIT_ORDERS)}")
        if self.flops_target is not None and not 0 < self.flops_target <= 1:
            raise PipelineSpecError(f"the FLOPs target is a fraction in (0, 1], got "
                                    f"{self.flops_target}")
        if self.latency_target is not None and not 0 < self.latency_target <= 1:
            raise PipelineSpecError(f"the latency target is a fraction in (0, 1], got "
                                    f"{self.latency_target}")
        if not 0 <= self.holdout < 1:
            raise PipelineSpecError(f"the held-out share is a fraction in [0, 1), got "
                                    f"{self.holdout}")
        if not 0 <= self.confirm < 1:
            raise PipelineSpecError(f"the confirmation share is a fraction in [0, 1), got "
                                    f"{self.confirm}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise PipelineSpecError(f"the time budget must be positive, got {self.time_budget}")
        make_rule(self.rule, self.tolerance, self.max_flips)


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
    """What :func:`specialize` found."""

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


def _input_names(module: Module) -> tuple[str, ...]:
    return tuple(v.name for v in module.graph.inputs if v.name in INPUT_NAMES)


def check_searchable(module: Module, task: Task) -> None:
    """Raise :class:`InputError` when ``module`` has no head for ``task`` (or one that does
    not fit it) or no transformer layers to search."""
    _check_module(module, task)


def _check_module(module: Module, task: Task, search: bool = True) -> None:
    if task.kind in EMBEDDING_KINDS:  # scored on the pooled token states: no head
        has_token_states(module, task)
    elif not has_task_head(module, task):
        raise InputError(f"module @{module.name} has no task head for '{task.name}': fine-tune "
                         "it first (optc finetune --task ...), then specialize the result")
    if search and not analyze(module).layers:
        raise InputError(f"module @{module.name} has no transformer layers to specialize")


class _Flops:
    """FLOPs of configurations (committed on clones), cached."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.cache: dict[Config, int] = {}

    def __call__(self, config: Config) -> int:
        if config not in self.cache:
            clone = self.module.clone()
            commit(clone, config)
            self.cache[config] = module_flops(clone, FLOPS_SEQ)
        return self.cache[config]


def specialize(module: Module, task: Task | str, tokenizer: Any, data: Any = None,
               options: SearchOptions | None = None,
               progress: Callable[[HistoryEntry], None] | None = None,
               reference: Module | None = None,
               stop: Callable[[], bool] | None = None) -> SearchResult:
    """Run the accuracy-driven search on a fine-tuned ``module`` (left unchanged) and return
    the committed, physically smaller module with the search history.

    ``data`` is the task's data directory (or file) whose train split gives the validation
    examples. ``reference``: judge candidates against this module's validation results (its
    per-sample losses and metric are the baseline) instead of ``module``'s own, e.g. the
    model a previous round started from when ``module`` is that round's refitted result; the
    loss rule's "best so far" still starts at ``module``'s own loss. With
    ``options.rounds > 1`` later rounds search the refitted result of the previous one (see
    the module docstring), judged against ``reference`` or else ``module``. Raises
    :class:`InputError` for a module (or reference) without the task's head, a head that does
    not fit the task, or fewer than :data:`MIN_VALIDATION` validation examples.
    ``stop``: asked before each trial; True ends the search there (``stopped="interrupted"``)
    with the best model so far, e.g. after a Ctrl-C.
    """
    options = options or SearchOptions()
    task = get_task(task) if isinstance(task, str) else task
    if options.rounds == 1:
        return _search_round(module, task, tokenizer, data, options, progress, reference,
                             stop=stop)
    begin = time.perf_counter()
    between = task_pipeline(options.between, data if data is not None else task.data_path,
                            task_spec(task) or task.name)  # the whole spec: columns, labels
    judge = reference if reference is not None else module
    flops_input = module_flops(module, FLOPS_SEQ)
    current, results, history, rounds = module, [], [], []
    searched, evaluations = [], 0
    for number in range(1, options.rounds + 1):
        round_options = _round_options(options, module, current, flops_input, begin)
        if round_options is None:
            break
        result = _search_round(current, task, tokenizer, data, round_options, progress,
                               reference if number == 1 else judge, number, len(history),
                               stop=stop)
        results.append(result)
        searched.append(current)
        history.extend(result.history)
        evaluations += result.evaluations
        info = {"round": number, "accepted": [asdict(c) for c in sorted(result.config.accepted)],
                "start_val_metric": result.start_metric, "best_val_metric": result.best_metric,
                "start_loss": result.start_loss, "best_loss": result.best_loss,
                "flops_after": result.flops_after, "evaluations": result.evaluations,
                "seconds": result.seconds, "stopped": result.stopped}
        if result.confirmation:
            info["confirmation"] = result.confirmation
        rounds.append(info)
        if number > 1 and not result.config.accepted:
            # nothing accepted on the refit: the rule has not judged it yet; it is kept only
            # when the rule would accept it (else the previous round's result stands)
            verdict = _refit_verdict(result, results[-2], options.rule)
            rounds[-2].update(between_kept=verdict.accepted, between_val_metric=verdict.metric,
                              between_loss=verdict.mean_loss)
            if not verdict.accepted:
                results.pop()
                searched.pop()
            break
        if number > 1:
            rounds[-2]["between_kept"] = True
        if (not result.config.accepted or result.stopped != "done"
                or number == options.rounds or not analyze(result.module).layers):
            break
        current = result.module.clone()  # the round's own result stays as it was
        context = PassContext(device=options.device, precision=options.precision)
        info["between"] = PassManager(between, reference=judge).run(current, context).to_json()
    first, last = results[0], results[-1]
    meta = dict(last.module.meta)
    meta["specialization"] = {**meta["specialization"], "rounds": len(results), "accepted": [
        {**c, "round": r["round"]} for r in rounds for c in r["accepted"]]}
    last.module.meta = meta
    counts: dict[str, int] = {}
    for result in results:
        for kind, n in result.counts.items():
            counts[kind] = counts.get(kind, 0) + n
    return SearchResult(
        module=last.module, config=last.config, history=history,
        baseline_loss=first.baseline_loss, best_loss=last.best_loss,
        baseline_metric=first.baseline_metric, best_metric=last.best_metric,
        main_metric=first.main_metric, flops_before=first.flops_before,
        flops_after=last.flops_after, params_before=first.params_before,
        params_after=last.params_after, evaluations=evaluations,
        seconds=time.perf_counter() - begin, validation_examples=first.validation_examples,
        stopped=last.stopped, sweeps=max(r.sweeps for r in results),
        skipped=sum(r.skipped for r in results), counts=counts, executor=first.executor,
        points=last.points, start_loss=first.start_loss, start_metric=first.start_metric,
        searched=None if searched[-1] is module else searched[-1], rounds=rounds,
        validation=first.validation, confirmation=last.confirmation)


def _refit_verdict(result: SearchResult, previous: SearchResult, rule: str) -> Verdict:
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


def _round_options(options: SearchOptions, module: Module, current: Module,
                   flops_input: int, begin: float) -> SearchOptions | None:
    """``options`` for a round searching ``current``: targets and the time budget rescaled
    to what is left of them relative to the input ``module`` (None: nothing is left)."""
    if current is module:
        return replace(options, rounds=1)
    changes: dict[str, Any] = {"rounds": 1}
    if options.time_budget is not None:
        left = options.time_budget - (time.perf_counter() - begin)
        if left <= 0:
            return None
        changes["time_budget"] = left
    if options.flops_target is not None:
        share = module_flops(current, FLOPS_SEQ) / flops_input
        if share <= options.flops_target:
            return None
        changes["flops_target"] = options.flops_target / share
    if options.latency_target is not None:
        share = _latency_ratio(module, current)
        if share <= options.latency_target:
            return None
        changes["latency_target"] = min(1.0, options.latency_target / share)
    return replace(options, **changes)


@dataclass
class _Split:
    """Validation examples ready for the runner."""

    batches: list[dict[str, torch.Tensor]]
    metric_of: Callable[[Outcome], float | None]
    """An outcome's task metric (None for QA, whose search judges the span loss)."""
    count: int


def _validation(task: Task, tokenizer: Any, data: Any, options: SearchOptions,
                names: tuple[str, ...]) -> tuple[_Split, _Split | None]:
    """The search's validation examples and, with ``options.confirm``, the part kept out of
    the search to confirm it (else None)."""
    examples, confirm = _split_examples(task, data, options)
    more = ("a larger validation file" if options.val_data is not None
            else "more training data, a larger --val-size")
    if confirm is None and len(examples) < MIN_VALIDATION:
        raise InputError(f"the validation split has {len(examples)} examples; the search needs "
                         f"at least {MIN_VALIDATION} (give {more}, or no --val-limit)")
    if confirm is not None and min(len(examples), len(confirm)) < MIN_VALIDATION:
        raise InputError(f"the validation split has {len(examples) + len(confirm)} examples: "
                         f"{len(examples)} to search and {len(confirm)} to confirm with "
                         f"--confirm {options.confirm:g}; each part needs at least "
                         f"{MIN_VALIDATION} (give {more}, or no --val-limit)")

    def ready(part: list[Any]) -> _Split:
        batches = prepare_batches(task, part, tokenizer, options.batch_size,
                                  options.max_length, names)
        labels = [e.label for e in part] if task.kind != "extractive-qa" else None

        def metric_of(outcome: Outcome) -> float | None:
            if labels is None:
                return None
            return task.compute_metrics(outcome.predictions, labels)[task.main_metric]

        return _Split(batches, metric_of, len(part))

    return ready(examples), None if confirm is None else ready(confirm)


def _with_reference(split: _Split, reference: Module, task: Task, names: tuple[str, ...]
                    ) -> _Split:
    """``split`` with ``reference``'s embeddings of its texts attached (the label-free
    ``embedding`` task's targets)."""
    vectors = GatedRunner(module=reference, task=task, batches=split.batches, input_names=names,
                          prefix_reuse=False).embeddings()
    return replace(split, batches=attach_reference(split.batches, vectors))


def holdout_options(options: SearchOptions, meta: dict[str, Any], val_size: float | None = None,
                    seed: int | None = None) -> tuple[SearchOptions, str | None]:
    """``options`` that search on the split a fine-tuning held out (``meta["task"]["holdout"]``:
    its ``val_size`` and ``seed``) unless ``val_size``/``seed`` are given, and a warning (None
    when there is nothing to warn about) when the model has trained on part of that split."""
    info = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    held = info.get("holdout") or {}
    held_split = (held["val_size"], held.get("seed", 0)) if held.get("val_size") else None
    default = held_split or (options.val_size, options.seed)
    options = replace(options, val_size=default[0] if val_size is None else val_size,
                      seed=default[1] if seed is None else seed)
    if held_split is not None and (options.val_size, options.seed) != held_split:
        return options, (f"the validation split (val_size={options.val_size}, seed="
                         f"{options.seed}) is not the one held out at fine-tuning (val_size="
                         f"{held_split[0]}, seed={held_split[1]}): the model has trained on "
                         "part of it, so removals look worse than they are")
    if held_split is None and int(info.get("trained_steps", 0) or 0) > 0:
        return options, ("this model was fine-tuned on all of train (no holdout recorded): the "
                         "validation split is data it has seen, so few removals will be "
                         "accepted; fine-tune with --holdout 0.15 (the default) for a fair "
                         "search, or give held-out labelled examples with --val-data")
    return options, None


def held_out_examples(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    """The part of the validation examples that ``options.holdout`` keeps out of the search
    (empty without it), in a stable order."""
    return _held_out(task, _all_validation(task, data, options), options)[1]


def _all_validation(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    if options.val_data is not None:
        return task.read_file(options.val_data, "val", limit=options.val_limit)
    return task.read("val", data, val_size=options.val_size, seed=options.seed,
                     limit=options.val_limit)


def _held_out(task: Task, examples: list[Any], options: SearchOptions
              ) -> tuple[list[Any], list[Any]]:
    """(examples the search may see, held-out examples) for ``options.holdout``."""
    if not options.holdout or len(examples) < 2:
        return examples, []
    try:
        seen, held = task.split(examples, options.holdout, options.seed)
    except InputError:  # too few examples to split: the contract reports too few
        return examples, []
    return [examples[i] for i in seen], [examples[i] for i in held]


def validation_examples(task: Task, data: Any, options: SearchOptions) -> list[Any]:
    """The examples the search judges its candidates on: ``options.val_data``'s, else the
    ``val_size`` part of ``data``'s train split (``val_limit``: the first N), less the part
    ``options.confirm`` keeps out to confirm the search."""
    return _split_examples(task, data, options)[0]


def _split_examples(task: Task, data: Any, options: SearchOptions
                    ) -> tuple[list[Any], list[Any] | None]:
    """(examples to search, examples to confirm or None): the confirmation part is a seeded
    split of the validation examples, stratified like the validation split itself."""
    examples = _held_out(task, _all_validation(task, data, options), options)[0]
    if not options.confirm:
        return examples, None
    if len(examples) < 2:
        return examples, []
    try:
        search, confirm = task.split(examples, options.confirm, options.seed)
    except InputError:  # too few examples or contexts to split: reported as too few
        return examples, []
    return [examples[i] for i in search], [examples[i] for i in confirm]


def _validation_source(options: SearchOptions) -> dict[str, Any]:
    """Where the validation examples came from, as recorded in the metadata."""
    source: dict[str, Any] = ({"file": os.fspath(options.val_data)} if options.val_data is not None
                              else {"val_size": options.val_size, "seed": options.seed})
    if options.val_limit is not None:
        source["limit"] = options.val_limit
    if options.holdout:
        source["holdout"] = options.holdout
    return source


def validate(module: Module, task: Task | str, tokenizer: Any, data: Any = None,
             options: SearchOptions | None = None,
             reference: Module | None = None) -> tuple[float, float | None]:
    """Mean loss and task metric (None for QA) of ``module`` on the search's validation split,
    measured as the search measures its candidates: e.g. a ``--then`` pipeline's result,
    judged on the same examples as the search without looking at the dev set. The label-free
    ``embedding`` task scores it against ``reference``'s embeddings (else its own)."""
    options = options or SearchOptions()
    task = get_task(task) if isinstance(task, str) else task
    _check_module(module, task, search=False)
    names = _input_names(module)
    split, _ = _validation(task, tokenizer, data, options, names)
    if task.needs_reference:
        split = _with_reference(split, reference or module, task, names)
    outcome = GatedRunner(module=module, task=task, batches=split.batches, input_names=names,
                          prefix_reuse=False).evaluate(Config())
    return outcome.mean_loss, split.metric_of(outcome)


def _search_round(module: Module, task: Task, tokenizer: Any, data: Any,
                  options: SearchOptions, progress: Callable[[HistoryEntry], None] | None,
                  reference: Module | None, number: int = 1, steps: int = 0,
                  stop: Callable[[], bool] | None = None) -> SearchResult:
    """One search over ``module`` (``number``: its round; ``steps``: entries before it)."""
    begin = time.perf_counter()
    _check_module(module, task)
    if reference is not None:
        _check_module(reference, task)
    rule = make_rule(options.rule, options.tolerance, options.max_flips)
    if options.rule != "loss" and task.kind == "extractive-qa":
        raise PipelineSpecError(f"the {options.rule} rule needs per-example predictions; for QA "
                                "use the loss rule (span loss)")
    if options.max_flips is not None and task.kind != "classification":
        raise PipelineSpecError(f"max_flips counts predicted classes that change; '{task.name}' "
                                f"is {task.kind}: drop it (the metric rule's tolerance bounds "
                                "the change instead)")
    names = _input_names(module)
    split, confirm = _validation(task, tokenizer, data, options, names)
    if task.needs_reference:  # label-free: judged against the reference's embeddings
        split = _with_reference(split, reference or module, task, names)
        confirm = None if confirm is None else _with_reference(confirm, reference or module,
                                                               task, names)
    batches, metric_of = split.batches, split.metric_of
    payload = {"module": module, "task": task, "batches": batches, "input_names": names,
               "prefix_reuse": options.prefix_reuse}
    runner = GatedRunner(**payload)

    flops = _Flops(module)
    structure = analyze(module)
    importance = (_importance(module, structure, batches, names, options.kinds)
                  if options.unit_order == "importance" else None)
    plan = plan_trials(structure, options.kinds, options.neuron_groups, options.k, importance)
    trials = [(sweep, trial) for sweep in range(1, options.sweeps + 1) for trial in plan]
    config = Config()
    start = runner.evaluate(config)
    baseline = start if reference is None else GatedRunner(
        **{**payload, "module": reference, "prefix_reuse": False}).evaluate(config)
    baseline_metric = metric_of(baseline)
    start_metric = metric_of(start)
    best_loss, best_metric = start.mean_loss, start_metric
    flops_before = flops(config)
    points: list[tuple[Config, float, int]] = [
        (config, best_metric if best_metric is not None else -best_loss, flops_before)]
    history: list[HistoryEntry] = []
    order: list[Candidate] = []  # accepted, in order
    decided: dict[Candidate, tuple[bool, bool]] = {}  # block trials: (accepted, loss < 1.1x)
    judged: set[tuple[Config, Candidate]] = set()  # same configuration, same verdict
    skipped = 0
    latency_ratio = 1.0
    stopped = "done"
    current_sweep, accepted_in_sweep = 1, False
    with make_executor(runner, payload, options.workers, options.ray) as executor:
        memo: dict[tuple[Config, Candidate], Outcome] = {}
        for i, (sweep, trial) in enumerate(trials):
            if sweep > current_sweep:
                if not accepted_in_sweep:
                    break
                current_sweep, accepted_in_sweep = sweep, False
            if options.time_budget is not None and time.perf_counter() - begin > options.time_budget:
                stopped = "time-budget"
                break
            if stop is not None and stop():
                stopped = "interrupted"
                break
            if options.flops_target is not None and flops(config) <= options.flops_target * flops_before:
                stopped = "flops-target"
                break
            if options.latency_target is not None and latency_ratio <= options.latency_target:
                stopped = "latency-target"
                break
            skip = _skip_reason(trial, decided, config, judged)
            cand = trial.candidate
            if skip:
                skipped += 1
                continue
            if (config, cand) not in memo:
                pending = [(config, cand)]
                for _, later in trials[i + 1:]:
                    if len(pending) >= executor.width:
                        break
                    if _skip_reason(later, decided, config, judged, optimistic=True) is None:
                        pending.append((config, later.candidate))
                pending = list(dict.fromkeys(p for p in pending if p not in memo))
                for pair, outcome in zip(pending, executor.evaluate(pending), strict=True):
                    memo[pair] = outcome
            outcome = memo.pop((config, cand))
            judged.add((config, cand))
            metric = metric_of(outcome)
            verdict = rule.judge(outcome.losses, baseline.losses, best_loss, metric,
                                 baseline_metric, _flips(rule, outcome, baseline))
            candidate_flops = flops(config.with_(cand))
            points.append((config.with_(cand), metric if metric is not None
                           else -verdict.mean_loss, candidate_flops))
            if verdict.accepted:
                config = config.with_(cand)
                order.append(cand)
                accepted_in_sweep = True
                best_loss = min(best_loss, verdict.mean_loss)
                best_metric = metric
                memo.clear()  # speculative results assumed the old configuration
                if options.latency_target is not None:
                    current = module.clone()
                    commit(current, config)
                    latency_ratio = _latency_ratio(module, current)
            if cand.kind in ("ffn", "attention"):
                close = (task.needs_reference  # a distance from 0: see fine_threshold
                         or verdict.mean_loss < options.fine_threshold * best_loss)
                decided[cand] = (verdict.accepted, close)
            entry = HistoryEntry(steps + len(history) + 1, cand.kind, cand.layer,
                                 list(cand.units), cand.label, verdict.mean_loss,
                                 verdict.not_worse, metric, verdict.accepted, candidate_flops,
                                 sweep=sweep, round=number, flips=verdict.flips)
            history.append(entry)
            if progress is not None:
                progress(entry)
        evaluations = (executor.evaluations + (1 if executor.name != "serial" else 0)
                       + (1 if reference is not None else 0))
        executor_name = executor.name
    confirmation: dict[str, Any] = {}
    if confirm is not None and order:
        keep, confirmation = _confirm(module, reference, task, names, confirm, rule, order,
                                      flops)
        evaluations += len(confirmation["prefixes"]) + 1  # and the judge on the held-out part
        config = Config(frozenset(order[:keep]))
        cut = [h for h in history if h.accepted][keep:]
        for entry in cut:
            entry.accepted, entry.note = False, "cut by confirmation"
        kept = [h for h in history if h.accepted]
        best_loss = min([start.mean_loss] + [h.mean_loss for h in kept if h.mean_loss is not None])
        best_metric = kept[-1].metric if kept else start_metric
    result = module.clone()
    counts = commit(result, config)
    verify(result)
    source = _validation_source(options)
    meta = dict(result.meta)
    meta["specialization"] = {"accepted": [asdict(c) for c in sorted(config.accepted)],
                              "rule": options.rule, "k": options.k,
                              "sweeps": options.sweeps, "unit_order": options.unit_order,
                              "validation": source}
    if options.max_flips is not None:
        meta["specialization"]["max_flips"] = options.max_flips
    if confirmation:
        meta["specialization"]["confirmation"] = {k: v for k, v in confirmation.items()
                                                  if k != "prefixes"}
    result.meta = meta
    return SearchResult(
        module=result, config=config, history=history, baseline_loss=baseline.mean_loss,
        best_loss=best_loss, baseline_metric=baseline_metric, best_metric=best_metric,
        main_metric=task.main_metric, flops_before=flops_before,
        flops_after=module_flops(result, FLOPS_SEQ), params_before=module.num_parameters(),
        params_after=result.num_parameters(), evaluations=evaluations,
        seconds=time.perf_counter() - begin, validation_examples=split.count, stopped=stopped,
        counts=counts, executor=executor_name, skipped=skipped, points=points,
        validation=source, sweeps=current_sweep, start_loss=start.mean_loss,
        start_metric=start_metric,
        start_verdict=rule.judge(start.losses, baseline.losses, math.inf, start_metric,
                                 baseline_metric, _flips(rule, start, baseline)),
        confirmation=confirmation)


def _flips(rule: AcceptanceRule, outcome: Outcome, baseline: Outcome) -> float | None:
    """Share of examples whose predicted class differs from the baseline's (None: the rule
    does not count them)."""
    if rule.max_flips is None:
        return None
    pairs = list(zip(outcome.predictions, baseline.predictions, strict=True))
    return sum(a != b for a, b in pairs) / max(1, len(pairs))


def _confirm(module: Module, reference: Module | None, task: Task, names: tuple[str, ...],
             split: _Split, rule: AcceptanceRule, order: list[Candidate],
             flops: Callable[[Config], int]) -> tuple[int, dict[str, Any]]:
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
                             base_metric, _flips(rule, outcome, base))
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


def _importance(module: Module, structure: Structure, batches: list[dict[str, torch.Tensor]],
                names: tuple[str, ...], kinds: tuple[str, ...]) -> Importance:
    """Taylor importance of each head and neuron on the validation batches, by layer id."""
    heads, neurons = "heads" in kinds, "ffn-groups" in kinds
    if not heads and not neurons:
        return {}, {}
    data = [Batch({n: b[n] for n in names if n in b}, b.get("labels")) for b in batches]
    head_scores, neuron_scores = taylor_scores(module, data, structure, heads=heads,
                                               neurons=neurons)
    ids = {layer.index: layer.id for layer in structure.layers}
    return ({ids[i]: s for i, s in head_scores.items() if i in ids},
            {ids[i]: s for i, s in neuron_scores.items() if i in ids})


def _latency_ratio(before: Module, after: Module) -> float:
    first, second = latencies([before, after], blocks=3, per_block=3)
    return second / first if first > 0 else 1.0


def _skip_reason(trial: Trial, decided: dict[Candidate, tuple[bool, bool]],
                 config: Config, judged: set[tuple[Config, Candidate]],
                 optimistic: bool = False) -> str | None:
    """Why ``trial`` is not tried (None: it is). ``optimistic``: a block not decided yet is
    assumed rejected within the threshold (speculation)."""
    cand = trial.candidate
    if cand in config.accepted:
        return "accepted"
    if (config, cand) in judged:
        return "judged in this configuration"
    family = {"ffn-groups": "ffn", "heads": "attention",
              "hard-attention": "attention"}.get(cand.kind)
    if family is not None and config.block_removed(family, cand.layer):
        return "block removed"
    gate = trial.after_block
    if gate is None:
        return None
    if gate not in decided:
        return None if optimistic else "block not tried"
    accepted, close = decided[gate]
    if accepted:
        return "block removed"
    if not close:
        return "block loss above the fine-grained threshold"
    return None
