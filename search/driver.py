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

This module holds the search loop and its rounds; around it: the options
(:mod:`optc.search.options`), what it reports (:mod:`optc.search.result`), its validation
examples and the checks on its input (:mod:`optc.search.validation`), the confirmation and
the refit verdict (:mod:`optc.search.confirmation`). The names of those modules that callers
import from here are re-exported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch

from optc.errors import PipelineSpecError
from optc.ir.analysis import Structure, analyze, module_flops
from optc.ir.core import Module
from optc.ir.verifier import verify
from optc.passes.context import PassContext
from optc.passes.manager import PassManager
from optc.passes.spec import task_pipeline
from optc.passes.support.importance import taylor_scores
from optc.search.acceptance import make_rule
from optc.search.candidates import Candidate, Config, Importance, Trial, commit, plan_trials
from optc.search.confirmation import confirm_round, flip_share, refit_verdict
from optc.search.executors import make_executor
from optc.search.measure import latencies
from optc.search.options import UNIT_ORDERS, SearchOptions
from optc.search.result import FLOPS_SEQ, HistoryEntry, SearchResult
from optc.search.runner import GatedRunner, Outcome
from optc.search.validation import (
    MIN_VALIDATION,
    check_module,
    check_searchable,
    held_out_examples,
    holdout_options,
    input_names,
    validate,
    validation_examples,
    validation_source,
    validation_splits,
    with_reference,
)
from optc.tasks.batching import Batch
from optc.tasks.registry import get_task
from optc.tasks.task import Task
from optc.train.heads import task_spec

__all__ = ["SearchOptions", "HistoryEntry", "SearchResult", "specialize", "validate",
           "validation_examples", "held_out_examples", "holdout_options", "check_searchable",
           "MIN_VALIDATION",
           "FLOPS_SEQ",
           "UNIT_ORDERS"]


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
            verdict = refit_verdict(result, results[-2], options.rule)
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


def _search_round(module: Module, task: Task, tokenizer: Any, data: Any,
                  options: SearchOptions, progress: Callable[[HistoryEntry], None] | None,
                  reference: Module | None, number: int = 1, steps: int = 0,
                  stop: Callable[[], bool] | None = None) -> SearchResult:
    """One search over ``module`` (``number``: its round; ``steps``: entries before it)."""
    begin = time.perf_counter()
    check_module(module, task)
    if reference is not None:
        check_module(reference, task)
    rule = make_rule(options.rule, options.tolerance, options.max_flips)
    if options.rule != "loss" and task.kind == "extractive-qa":
        raise PipelineSpecError(f"the {options.rule} rule needs per-example predictions; for QA "
                                "use the loss rule (span loss)")
    if options.max_flips is not None and task.kind != "classification":
        raise PipelineSpecError(f"max_flips counts predicted classes that change; '{task.name}' "
                                f"is {task.kind}: drop it (the metric rule's tolerance bounds "
                                "the change instead)")
    names = input_names(module)
    split, confirm = validation_splits(task, tokenizer, data, options, names)
    if task.needs_reference:  # label-free: judged against the reference's embeddings
        split = with_reference(split, reference or module, task, names)
        confirm = None if confirm is None else with_reference(confirm, reference or module,
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
                                 baseline_metric, flip_share(rule, outcome, baseline))
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
        keep, confirmation = confirm_round(module, reference, task, names, confirm, rule,
                                           order, flops)
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
    source = validation_source(options)
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
                                 baseline_metric, flip_share(rule, start, baseline)),
        confirmation=confirmation)


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
