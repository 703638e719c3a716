"""Specialization as a contract: the fastest model found whose metric on a held-out part of
the validation data is at most ``max_drop`` points below the input model's on that part.

1. The validation examples (carved from train, or a given file) are divided, seeded and
   stratified, into a part the search sees and a held-out part it never sees
   (``SearchOptions.holdout``).
2. Before searching, the input is timed on the target (backend, threads, batch) next to its
   hard-attention and int8 forms, once: a kind that is not faster there is not tried (today
   hard attention makes CPU kernels slower: top-k attention has no fused kernel), and the
   reason is recorded.
3. The search (:func:`optc.search.driver.specialize`, with the recipe's options) runs on the
   search part. Its path (the configurations after each acceptance, in order) is checked on
   the held-out part: the longest prefix within ``max_drop`` is found by bisection (the
   metric is assumed to fall along the path; every prefix checked is recorded), then the
   prefixes just short of it, and the points of the search's front (search-part metric vs
   FLOPs: FLOPs only prune the list) cheaper than it, up to ``measure`` of each.
4. int8 (dynamic, per output channel; the embedding tables per row, as ``quantize`` does by
   default) is applied to the fastest passing points: activation scales per tensor, else per
   token in the FFN, else per token everywhere (:data:`INT8_SCHEMES`), the first within
   ``max_drop`` on the search part; when none is, the layers
   whose int8 costs most on the search part stay fp32 until the search part is within
   ``max_drop`` of the input, and the held-out part then checks both steps together (a
   point it refuses keeps no int8).
5. On an ONNX target each passing point's file is self-checked against the IR first (as
   the writers do): a point whose lowering differs beyond the backend's tolerance is dropped
   with a note. The input and every passing point are timed together on the target (interleaved); the
   fastest within the tolerance is the result. When none is faster than the input, the input
   is the result, unchanged, with one line saying why.

The held-out part is a check, never a search signal beyond that; the dev set is not read here
(``optc specialize`` reports it with a paired interval). The points measured form the Pareto
front (held-out metric vs latency) that the result records.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from optc.errors import BackendError, InputError, PipelineSpecError
from optc.ir.analysis import module_flops
from optc.ir.core import Module
from optc.ir.verifier import verify
from optc.passes.quantize import apply_int8, apply_int8_embeddings, int8_tables
from optc.passes.sparsify import linear_targets
from optc.search.candidates import Candidate, Config, commit
from optc.search.driver import specialize
from optc.search.measure import BACKENDS, backend_latencies
from optc.search.options import SearchOptions
from optc.search.result import FLOPS_SEQ, HistoryEntry, SearchResult
from optc.search.runner import GatedRunner, Outcome, attach_reference, prepare_batches
from optc.search.validation import (
    MIN_VALIDATION,
    check_searchable,
    held_out_examples,
    validation_examples,
)
from optc.tasks.registry import get_task
from optc.tasks.significance import MetricDelta, paired_bootstrap
from optc.tasks.task import Task

__all__ = ["Target", "ContractOptions", "Point", "ContractResult", "specialize_within",
           "INT8", "FASTER"]

INT8 = ("auto", "on", "off")
"""``--int8``: auto (used when faster on the target), on, off."""

FASTER = 0.98
"""A kind is "faster on the target" when it takes at most this share of the input's latency."""

INT8_SCHEMES: tuple[tuple[str, ...], ...] = ((), ("ffn",), ("attention", "ffn"))
"""The roles with per-token activation scales (``quantize{token_scales=...}``) of the int8
forms tried in turn, fastest first: per tensor everywhere, per token in the FFN, per token
everywhere (models with outlier activations need them; ONNX Runtime runs them slower)."""

INT8_BITS = 7
"""As ``quantize``'s default: exact on every ONNX Runtime CPU kernel."""


@dataclass(frozen=True)
class Target:
    """What "fastest" is measured on."""

    backend: str = "eager"
    threads: int = 1
    batch: int = 1
    seq: int = 128

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PipelineSpecError(f"unknown backend '{self.backend}'; valid backends: "
                                    f"{', '.join(BACKENDS)}")
        for name in ("threads", "batch", "seq"):
            if getattr(self, name) < 1:
                raise PipelineSpecError(f"{name} must be at least 1, got {getattr(self, name)}")

    def describe(self) -> str:
        return (f"{self.backend}, batch {self.batch}, {self.threads} "
                f"thread{'s' if self.threads > 1 else ''}, seq {self.seq}")


@dataclass(frozen=True)
class ContractOptions:
    """The contract (``max_drop``, target, int8) and how the result is chosen."""

    max_drop: float = 1.0
    """Largest drop of the held-out metric from the input's, in the task's metric points."""
    target: Target = field(default_factory=Target)
    int8: str = "auto"
    """auto: int8 where it is faster on the target; on; off."""
    hard_attention: str = "auto"
    """auto: searched only where it is faster on the target; on; off."""
    measure: int = 4
    """Operating points (besides the input) checked on the held-out part and timed."""
    time_budget: float | None = None
    """Seconds for the whole run: the search gets most of it, then the best point within
    the tolerance so far is chosen (int8 is skipped when the budget is spent)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop < float("inf")):
            raise PipelineSpecError(f"--max-drop is a number of metric points >= 0, got "
                                    f"{self.max_drop!r}")
        if self.int8 not in INT8:
            raise PipelineSpecError(f"--int8 must be one of {', '.join(INT8)}, got {self.int8!r}")
        if self.hard_attention not in INT8:
            raise PipelineSpecError(f"hard_attention must be one of {', '.join(INT8)}, got "
                                    f"{self.hard_attention!r}")
        if self.measure < 1:
            raise PipelineSpecError(f"measure must be at least 1, got {self.measure}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise PipelineSpecError(f"the time budget must be positive, got {self.time_budget}")


@dataclass
class Point:
    """One operating point: a configuration of the searched module, fp32 or int8."""

    label: str
    config: Config
    int8: bool
    search_metric: float
    """Metric on the part of the validation examples the search saw."""
    held_out: float | None = None
    """Metric on the held-out part (None: not checked)."""
    flops: int = 0
    latency_ms: float | None = None
    """Measured on the target (None: not measured)."""
    within: bool = False
    """Held-out metric at most ``max_drop`` below the input's."""
    fp32_layers: list[int] = field(default_factory=list)
    """int8: layers kept in fp32 (their int8 cost the tolerance)."""
    token_scales: tuple[str, ...] = ()
    """int8: roles whose activations are quantized per token (:data:`INT8_SCHEMES`)."""
    outcome: Outcome | None = None
    """Held-out outcome (predictions for the paired interval)."""

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "int8": self.int8, "search_metric": self.search_metric,
                "held_out": self.held_out, "flops": self.flops, "latency_ms": self.latency_ms,
                "within": self.within, "fp32_layers": self.fp32_layers,
                "token_scales": list(self.token_scales),
                "accepted": [asdict(c) for c in sorted(self.config.accepted)]}


@dataclass
class ContractResult:
    """What :func:`specialize_within` chose, and why."""

    module: Module
    """The result: the chosen point committed (and quantized), or the input unchanged."""
    search: SearchResult
    searched: Module
    """The module the search's configurations apply to."""
    original: Module
    """The input module (the input point's)."""
    input: Point
    chosen: Point
    points: list[Point]
    """Every point checked on the held-out part (the input first)."""
    held_out_change: MetricDelta
    """Input vs result on the held-out part, with a paired bootstrap interval."""
    held_out_examples: int
    search_examples: int
    options: ContractOptions
    notes: list[str] = field(default_factory=list)
    """One line each: kinds skipped on the target and why, int8 dropped, time budget."""
    fallback: str | None = None
    """The one line saying why the input was written unchanged (None: it was not)."""
    seconds: float = 0.0
    stopped: str = "done"

    def build(self, point: Point) -> Module:
        """A new module for ``point``: its configuration committed on the searched module,
        then int8 with its fp32 layers kept."""
        return _build(self.original, self.searched, point)

    def front(self) -> list[Point]:
        """Measured points within the tolerance that no other is both faster and more
        accurate than on the held-out part, fastest first."""
        measured = sorted((p for p in self.points if p.within and p.latency_ms is not None),
                          key=lambda p: (p.latency_ms, -(p.held_out or 0.0)))
        front: list[Point] = []
        for point in measured:
            if not front or (point.held_out or 0.0) > (front[-1].held_out or 0.0):
                front.append(point)
        return front

    def summary(self) -> dict[str, Any]:
        """JSON-ready record (the artifact's metadata ``specialization.contract``)."""
        points = self.points
        return {
            "max_drop": self.options.max_drop, "target": asdict(self.options.target),
            "int8": self.options.int8, "held_out_examples": self.held_out_examples,
            "search_examples": self.search_examples,
            "held_out_change": self.held_out_change.to_json(),
            "points": [p.to_json() for p in points],
            "front": [points.index(p) for p in self.front()],
            "chosen": points.index(self.chosen), "input": 0,
            "notes": self.notes, "fallback": self.fallback, "seconds": self.seconds,
            "stopped": self.stopped,
        }


class _Judge:
    """Evaluations of configurations on one part of the validation examples."""

    def __init__(self, task: Task, examples: list[Any], tokenizer: Any,
                 options: SearchOptions, names: tuple[str, ...], reference: Module) -> None:
        self.task, self.names = task, names
        self.labels = [e.label for e in examples]
        self.batches = prepare_batches(task, examples, tokenizer, options.batch_size,
                                       options.max_length, names)
        if task.needs_reference:  # label-free: scored against the input's embeddings
            vectors = GatedRunner(module=reference, task=task, batches=self.batches,
                                  input_names=names, prefix_reuse=False).embeddings()
            self.batches = attach_reference(self.batches, vectors)

    def outcome(self, module: Module, config: Config = Config()) -> Outcome:  # noqa: B008
        return GatedRunner(module=module, task=self.task, batches=self.batches,
                           input_names=self.names, prefix_reuse=False).evaluate(config)

    def metric(self, outcome: Outcome) -> float:
        return float(self.task.compute_metrics(outcome.predictions,
                                               self.labels)[self.task.main_metric])


def _input_names(module: Module) -> tuple[str, ...]:
    from optc.tasks.batching import INPUT_NAMES

    return tuple(v.name for v in module.graph.inputs if v.name in INPUT_NAMES)


def _hard(module: Module, k: int) -> Module:
    """``module`` with hard attention (top ``k``) in every layer."""
    from optc.ir.analysis import analyze

    clone = module.clone()
    layers = [layer.id for layer in analyze(clone).layers if layer.attention is not None]
    commit(clone, Config(frozenset(Candidate("hard-attention", lid, (k,)) for lid in layers)))
    return clone


def _int8_layers(module: Module) -> dict[int, list[str]]:
    """The weights int8 quantizes (attention and FFN projections), by layer position."""
    layers: dict[int, list[str]] = {}
    for position, _, node in linear_targets(module, ("attention", "ffn")):
        if position is not None:
            layers.setdefault(position, []).append(node.args[1].name)
    return layers


def _quantized(module: Module, layers: dict[int, list[str]], skip: set[int],
               token_scales: tuple[str, ...] = ()) -> Module:
    """``module`` with the linears of ``layers`` but ``skip`` int8 (per-token activation
    scales for the roles in ``token_scales``), and (as ``quantize``'s default
    ``embeddings=auto`` does) its embedding tables int8 whenever a linear is."""
    clone = module.clone()
    names = [n for position, ns in layers.items() if position not in skip for n in ns]
    if names:
        token = {node.args[1].name for _, _, node in linear_targets(clone, token_scales)} \
            if token_scales else set()
        apply_int8(clone, names, INT8_BITS, token=token)
        apply_int8_embeddings(clone, int8_tables(clone))
    return clone


def _ratio(times: list[float], i: int) -> float:
    return times[i] / times[0] if times[0] > 0 else 1.0


def _probe(module: Module, options: SearchOptions, contract: ContractOptions,
           notes: list[str]) -> tuple[SearchOptions, bool]:
    """Time the input, its hard-attention form and its int8 form on the target once; return
    the search options without hard attention where it does not pay, and whether int8 is
    used. Each decision adds a note."""
    target = contract.target
    where = f"on {target.backend}"
    want_hard = "hard-attention" in options.kinds and contract.hard_attention != "off"
    want_int8 = contract.int8 != "off"
    variants = [module]
    if want_hard and contract.hard_attention == "auto":
        variants.append(_hard(module, options.k))
    if want_int8 and contract.int8 == "auto":
        variants.append(_quantized(module, _int8_layers(module), set()))
    times: list[float] | None = None
    failed = ""
    if len(variants) > 1:
        try:
            times = backend_latencies(variants, target.backend, target.batch, target.seq,
                                      target.threads, blocks=3, per_block=3)
        except BackendError as exc:
            failed = str(exc)
    if "hard-attention" in options.kinds and contract.hard_attention == "off":
        notes.append("hard attention not tried: off in the recipe")
    if want_hard and contract.hard_attention == "auto":
        ratio = None if times is None else _ratio(times, 1)
        if ratio is None or ratio > FASTER:
            why = (f"{target.backend} could not run it ({failed})" if ratio is None else
                   f"it takes {ratio:.2f}x the input's latency {where} (top-k attention has "
                   "no fused kernel here)")
            notes.append(f"hard attention not tried: {why}")
            want_hard = False
        else:
            notes.append(f"hard attention tried: {ratio:.2f}x the input's latency {where}")
    if not want_hard:
        options = replace(options, kinds=tuple(k for k in options.kinds
                                               if k != "hard-attention"))
        if not options.kinds:
            raise PipelineSpecError("no candidate kind is left to search once hard attention "
                                    "is not tried: add structural kinds to the recipe")
    if want_int8 and contract.int8 == "auto":
        ratio = None if times is None else _ratio(times, len(variants) - 1)
        if ratio is None or ratio > FASTER:
            why = (f"{target.backend} could not run it ({failed})" if ratio is None else
                   f"it takes {ratio:.2f}x the input's latency {where}")
            notes.append(f"int8 not used: {why}")
            want_int8 = False
    return options, want_int8


def specialize_within(module: Module, task: Task | str, tokenizer: Any, data: Any = None,
                      options: SearchOptions | None = None,
                      contract: ContractOptions | None = None,
                      progress: Callable[[HistoryEntry], None] | None = None,
                      stop: Callable[[], bool] | None = None,
                      step: Callable[[str], None] | None = None) -> ContractResult:
    """The fastest model found whose held-out metric is at most ``contract.max_drop`` below
    ``module``'s (see the module docstring); ``module`` is left unchanged.

    ``options``: the search's (its ``holdout`` share is the held-out part: 0 is refused).
    ``stop``: asked before each trial and before int8; True ends the search and chooses from
    what was found (e.g. a Ctrl-C). ``step``: told what runs next (a progress display).
    Raises :class:`PipelineSpecError` for a task without a per-example metric (QA) and
    :class:`InputError` for a held-out part under :data:`MIN_VALIDATION` examples."""
    begin = time.perf_counter()
    options = options or SearchOptions(holdout=0.5)
    contract = contract or ContractOptions()
    task = get_task(task) if isinstance(task, str) else task
    say = step or (lambda _: None)
    if task.kind == "extractive-qa":
        raise PipelineSpecError("the tolerance contract compares a per-example metric; QA is "
                                "searched on the span loss: use --recipe published")
    if not options.holdout:
        raise PipelineSpecError("the contract needs a held-out part: the recipe's holdout "
                                "share must be in (0, 1)")
    check_searchable(module, task)
    names = _input_names(module)
    held = held_out_examples(task, data, options)
    if len(held) < MIN_VALIDATION:
        raise InputError(f"the held-out part of the validation split has {len(held)} "
                         f"examples; the contract needs at least {MIN_VALIDATION} (give more "
                         "training data or a larger --val-size)")
    notes: list[str] = []
    say(f"timing the input on {contract.target.describe()}")
    options, int8 = _probe(module, options, contract, notes)
    budget = contract.time_budget
    if budget is not None:
        options = replace(options, time_budget=0.7 * budget)
    say(f"searching ({task.name})")
    result = specialize(module, task, tokenizer, data, options, progress=progress, stop=stop)
    searched = result.searched or module

    def spent() -> bool:
        return ((stop is not None and stop())
                or (budget is not None and time.perf_counter() - begin > budget))

    say("checking the front on the held-out part")
    seen = _Judge(task, validation_examples(task, data, options), tokenizer, options, names,
                  module)
    judge = _Judge(task, held, tokenizer, options, names, module)
    base_outcome = judge.outcome(module)
    base = judge.metric(base_outcome)
    base_seen = seen.metric(seen.outcome(module))
    floor = base - contract.max_drop
    start = Point("input", Config(), False, base_seen, base, module_flops(module, FLOPS_SEQ),
                  within=True, outcome=base_outcome)
    points = [start]
    passing = [start]
    checked: dict[Config, Point] = {}

    def check(config: Config, score: float, flops: int, label: str) -> Point:
        if config not in checked:
            outcome = judge.outcome(searched, config)
            metric = judge.metric(outcome)
            checked[config] = Point(label, config, False, score, metric, flops,
                                    within=metric >= floor, outcome=outcome)
        return checked[config]

    # the search's own path (its acceptances in order): the longest prefix the held-out
    # part accepts, found by bisection, and the prefixes just short of it
    path = _trajectory(result)
    low, high = 0, len(path)  # prefixes up to low pass (0: the input); beyond high fail
    while low < high:
        middle = (low + high + 1) // 2
        if check(*path[middle - 1], f"prefix {middle}").within:
            low = middle
        else:
            high = middle - 1
    for count in range(low, 0, -1):
        if sum(p.within for p in checked.values()) >= contract.measure:
            break
        check(*path[count - 1], f"prefix {count}")
    # other points of the search's front (search-part metric vs FLOPs) that are cheaper
    limit = path[low - 1][2] if low else start.flops
    extra = [p for p in _front(result, base_seen, contract.max_drop) if p[2] < limit]
    for i, (config, score, flops) in enumerate(extra[:contract.measure]):
        check(config, score, flops, f"front {i + 1}")
    points.extend(sorted(checked.values(), key=lambda p: p.flops))
    passing.extend(p for p in points[1:] if p.within)
    committed = {id(p): _committed(searched if p.config.accepted else module, p.config)
                 for p in passing}
    if int8 and spent():
        notes.append("int8 not tried: " + ("interrupted" if stop is not None and stop()
                                           else "the time budget was spent"))
        int8 = False
    if int8:  # the two cheapest passing points (FLOPs prune; latency chooses below)
        for point in sorted(passing, key=lambda p: p.flops)[:2]:
            say(f"int8 of {point.label}")
            q_point, q_module = _int8_point(point, committed[id(point)], seen, judge,
                                            base_seen, floor, contract.max_drop, notes)
            points.append(q_point)
            if q_point.within:
                committed[id(q_point)] = q_module
                passing.append(q_point)
    if contract.target.backend == "onnx":  # a point is only as good as its lowering
        say("checking the points' ONNX files against the IR")
        for point in [p for p in passing if p is not start]:
            problem = _lowering_problem(committed[id(point)], contract.target.backend)
            if problem is not None:
                point.within = False
                passing.remove(point)
                notes.append(f"{point.label}: dropped, {problem}")
    say(f"timing {len(passing)} points on {contract.target.describe()}")
    times = _times([committed[id(p)] for p in passing], contract.target)
    for point, ms in zip(passing, times, strict=True):
        point.latency_ms = ms
    chosen = min(passing, key=lambda p: (p.latency_ms if p.latency_ms is not None
                                         else float("inf")))
    if contract.int8 == "on" and int8 and not chosen.int8:
        on = [p for p in passing if p.int8]
        chosen = min(on, key=lambda p: p.latency_ms or 0.0) if on else chosen
    fallback = None
    if chosen is start:
        others = [p for p in points if p is not start]
        fallback = (f"no candidate within --max-drop {contract.max_drop:g} on the held-out "
                    f"part is faster than the input on {contract.target.backend}: wrote the "
                    "input unchanged" if any(p.within for p in others) else
                    f"no candidate within --max-drop {contract.max_drop:g} on the held-out "
                    f"part ({len(held)} examples): wrote the input unchanged")
        final = module.clone()
    else:
        final = committed[id(chosen)]
        verify(final)
    change = paired_bootstrap(task, base_outcome.predictions, chosen.outcome.predictions,
                              judge.labels)
    if budget is not None and result.stopped == "time-budget":
        notes.append(f"time budget: the search stopped after {result.seconds:.0f} s with the "
                     "best point within the tolerance so far")
    return ContractResult(
        module=final, search=result, searched=searched, original=module, input=start, chosen=chosen,
        points=points, held_out_change=change, held_out_examples=len(held),
        search_examples=len(seen.labels), options=contract, notes=notes, fallback=fallback,
        seconds=time.perf_counter() - begin, stopped=result.stopped)


def _trajectory(result: SearchResult) -> list[tuple[Config, float, int]]:
    """The configurations the last round of the search passed through, in order (each with
    its search-part score and FLOPs)."""
    last = max((h.round for h in result.history), default=1)
    scores = {config: (score, flops) for config, score, flops in result.points}
    config, path = Config(), []
    for entry in result.history:
        if entry.round == last and entry.accepted:
            config = config.with_(Candidate(entry.kind, entry.layer, tuple(entry.units)))
            score, flops = scores.get(config, (entry.metric or 0.0, entry.flops or 0))
            path.append((config, score, flops))
    return path


def _front(result: SearchResult, base: float, max_drop: float) -> list[tuple[Config, float, int]]:
    """The search's evaluated configurations on its Pareto front (search-part metric vs
    FLOPs) within ``max_drop`` of the input on the search part, cheapest first, the input's
    own configuration left out."""
    within = [p for p in result.points if p[1] >= base - max_drop and p[0].accepted]
    front: list[tuple[Config, float, int]] = []
    best = float("-inf")
    for point in sorted(within, key=lambda p: (p[2], -p[1])):
        if point[1] > best and all(point[0] != f[0] for f in front):
            front.append(point)
            best = point[1]
    return front


def _build(original: Module, searched: Module, point: Point) -> Module:
    built = _committed(searched if point.config.accepted else original, point.config)
    if point.int8:
        built = _quantized(built, _int8_layers(built), set(point.fp32_layers),
                           point.token_scales)
    return built


def _committed(module: Module, config: Config) -> Module:
    clone = module.clone()
    if config.accepted:
        commit(clone, config)
    return clone


def _lowering_problem(module: Module, backend: str) -> str | None:
    """Why ``backend``'s file of ``module`` cannot stand for it (its writer's self-check
    fails: it differs from the IR beyond the backend's tolerance, or does not run), or None."""
    import tempfile
    from pathlib import Path

    from optc.backends import write_backend

    with tempfile.TemporaryDirectory(prefix="optc-contract-") as tmp:
        try:
            write_backend(module, backend, Path(tmp) / f"point.{backend}")
        except BackendError as exc:
            return str(exc)
    return None


def _times(modules: list[Module], target: Target) -> list[float]:
    return backend_latencies(modules, target.backend, target.batch, target.seq, target.threads)


def _int8_point(point: Point, module: Module, seen: _Judge, judge: _Judge, base_seen: float,
                floor: float, max_drop: float, notes: list[str]) -> tuple[Point, Module]:
    """``point`` quantized: all layers int8 with the first of :data:`INT8_SCHEMES` within
    ``max_drop`` of the input's ``base_seen`` on the search part; when none is, with the last
    (the most accurate), the fewest of the layers whose int8 costs most on the search part
    (each measured alone) go back to fp32, their number found by bisection (the metric is
    assumed to rise as more go back: log2(layers) evaluations instead of one per layer). The
    held-out part checks the result (``floor``)."""
    layers = _int8_layers(module)
    skip: set[int] = set()
    for scheme in INT8_SCHEMES:
        quantized = _quantized(module, layers, skip, scheme)
        metric = seen.metric(seen.outcome(quantized))
        if metric >= base_seen - max_drop:
            break
    if metric < base_seen - max_drop and len(layers) > 1:
        alone = {pos: seen.metric(seen.outcome(
            _quantized(module, layers, set(layers) - {pos}, scheme))) for pos in layers}
        order = sorted(layers, key=lambda q: alone[q])  # most costly first
        tried: dict[int, tuple[float, Module]] = {}

        def keep(count: int) -> bool:  # the ``count`` most costly layers in fp32: within?
            if count not in tried:
                candidate = _quantized(module, layers, set(order[:count]), scheme)
                tried[count] = (seen.metric(seen.outcome(candidate)), candidate)
            return tried[count][0] >= base_seen - max_drop

        low, high = 1, len(order) - 1  # the fewest fp32 layers within, by bisection
        if keep(high):
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if keep(middle) else (middle + 1, high)
            skip = set(order[:high])
            metric, quantized = tried[high]
        else:
            skip = set(order)
    label = f"{point.label} + int8" + (f" (per-token {','.join(scheme)})" if scheme else "")
    if skip and len(skip) < len(layers):
        label += f", layers {','.join(str(p) for p in sorted(skip))} in fp32"
    if len(skip) == len(layers) or metric < base_seen - max_drop:
        notes.append(f"{label}: not within --max-drop on the search part with any layer in "
                     "int8")
        return Point(label, point.config, True, metric, None, point.flops,
                     token_scales=scheme), quantized
    outcome = judge.outcome(quantized)
    held = judge.metric(outcome)
    within = held >= floor
    if not within:
        notes.append(f"{label}: the held-out part refuses it ({held:.2f} < {floor:.2f}): "
                     f"{point.label} keeps fp32")
    return Point(label, point.config, True, metric, held, point.flops, within=within,
                 fp32_layers=sorted(skip), token_scales=scheme, outcome=outcome), quantized
