"""Sparse execution: which kernel runs each sparse linear weight in eager and TorchScript.

    eager = to_eager(module, sparse_kernel="auto")  # measure, choose, record (cached)
    print(eager.sparse_plan.table())                # one row per sparse weight: kernel and why
    plan = plan_sparse_kernels(module, "auto", runner=lambda p: EagerModule(module, p))
    eager = to_eager(module, sparse_kernel=plan)    # a plan made once, lowered again

The choice is a lowering option (``to_eager(module, sparse_kernel=...)``,
``to_torchscript(...)``, ``optc ... --sparse-kernel=...``), never part of the IR: the IR says
which weights are sparse and in what pattern (their ``sparsity`` attribute); the plan says how
this machine runs them. Kernels (:data:`KERNELS`):

- ``dense``: the default; every weight runs through the dense ``F.linear``.
- ``csr``: every sparse weight stored as torch sparse CSR, computed with a sparse matmul.
- ``bsr``: block sparse rows. The block comes from the weight's ``sparsity`` attribute when it
  is square (torch's CPU BSR kernel, MKL, takes square blocks only); otherwise the largest
  square block up to :data:`DEFAULT_BSR_BLOCK` whose side divides the weight (``block=1x4``
  sparsity: 4x4 tiles, explicit zeros stored inside them).
- ``semi-structured``: ``torch.sparse.to_sparse_semi_structured`` for 2:4 weights, CUDA only
  (the eager module is built on CUDA; inputs must be CUDA tensors). On CPU, or with no 2:4
  weight, it is a :class:`~optc.errors.BackendError`; other weights stay dense. fp32 weights use
  torch's CUTLASS kernels, fp16/bf16 cuSPARSELt (each falls back to the other). TorchScript
  cannot script the tensor subclass: it falls back to dense with a warning.
- ``auto``: per weight, a sparse kernel only where it is measured faster here. A micro-benchmark
  at lowering time runs the layer's real weight (dense ``F.linear`` against each candidate
  kernel, interleaved blocks, medians) at each token count of :attr:`AutoOptions.tokens`
  (default 128 and 1024: batch 1 and 8 at sequence 128). A candidate counts as winning at a
  token count when it is at least ``margin`` (default 10%) faster than dense there. One that
  wins at every count runs every input; one that wins only at the smaller counts runs inputs up
  to the largest count it won at, and the layer keeps its dense weight too for larger inputs
  (the kernel switches on the input's rows, batch x sequence, at run time); otherwise the layer
  stays dense. Weights denser than :data:`MAX_AUTO_DENSITY` skip the measurement (no torch CPU
  sparse kernel beats dense there).

  **Whole-model check.** A layer that wins alone (one linear, warm caches) can lose inside the
  model: measured on MiniLM at 1024 rows, 1 thread, 90% unstructured, every csr layer won by
  >= 10% alone and the whole model ran 7% slower with all 36 on csr.
  So after the per-layer choices ``auto`` times the whole module lowered with them against
  the all-dense module (eager, interleaved medians, ``rounds`` x ``block`` forwards each) at
  each token count, smallest first, on generated inputs (:mod:`optc.backends.model_inputs`:
  token ids below the vocabulary, mask of ones, token types zero; batch ``rows / seq`` at
  ``AutoOptions.seq``, capped by the position table). Where the whole model is not at least
  ``margin`` faster, it retries with the better half of those weights by their per-layer ratio
  (weights of one ratio, such as one shape's, stay together), then the better half of that,
  down to one group; the weights left out (all of them when no try wins) run dense from that
  count up: ``max_tokens`` drops to the previous count, or the weight is dense when the
  smallest count lost. Their reasons say so (e.g. ``; whole model at 1024 rows 1.07x of dense
  with 36 sparse: dense above 128 rows``); the timings are :attr:`SparsePlan.model_checks`, the
  decision :attr:`SparsePlan.model_note`, both printed by ``table()`` and kept by
  ``to_json``. Because the sparse set at a count only shrinks from the smaller counts' sets,
  a count that wins with some weights is never given weights that lost there.
  The check needs a ``runner`` that builds the lowered module (``to_eager``,
  ``to_torchscript`` and ``optc --sparse-kernel=auto`` give the eager lowering;
  :func:`plan_sparse_kernels` called without one skips it) and a token-id input (an integer
  graph input indexing an embedding table); otherwise, or with
  ``AutoOptions(whole_model=False)``, it is skipped and ``model_note`` says why. So ``auto``
  keeps sparse kernels only where the whole model measured faster (the promise: never more
  than 5% slower than dense, up to the noise of the machine it measured on).

  Results are cached in memory and in ``~/.cache/optc/sparse_kernels.json`` (``$XDG_CACHE_HOME``
  honoured; ``AutoOptions(cache_dir=None)`` turns the file off): per layer by (shape, density,
  pattern, bias, threads, torch version, CPUs, token count), per whole-model try by the
  module's sparse weights (shape, pattern, density), which of them run sparse with which
  kernel, the module's size, the input shape, threads, torch version and CPUs. Plan with the
  thread count you will run at.

The kernels and the compressed storage they read live in :mod:`optc.backends.sparse_ops`.

int8 weights always run the int8 kernel; weights without a ``sparsity`` attribute stay dense.
Every choice is recorded in the :class:`SparsePlan` (kernel, block, row limit, reason, timings;
for ``auto`` also the whole-model timings and decision), which the eager module keeps as
``.sparse_plan`` and the TorchScript file as the extra file ``optc/sparse_plan.json``.

Written outputs: ``optc MODEL --sparse-kernel=K`` (eager or torchscript backend) prints the
plan and records ``K`` in the module's ``meta["sparse_kernel"]``; ``export_torchscript`` and
``optc.load(artifact)`` use the recorded kernel unless given one (an eager artifact is planned
again when loaded, on the machine that runs it). In-memory lowerings (``to_eager``,
``to_torchscript``) are dense unless asked, so passes and training that lower internally are
unaffected.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from optc.backends.model_inputs import seq_range, token_inputs
from optc.backends.sparse_ops import (
    DEFAULT_BSR_BLOCK,
    SPARSE_SCRIPT,
    block_density,
    bsr_block,
    semi_structured_linear,
    semi_structured_weight,
    sparse_linear,
    sparse_parts,
)
from optc.errors import BackendError, InputError, OptcError
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Node, Parameter

__all__ = ["check_kernel_available", "KERNELS", "DEFAULT_BSR_BLOCK", "MAX_AUTO_DENSITY", "AutoOptions", "LayerChoice",
           "ModelCheck", "Runner", "SparsePlan", "plan_sparse_kernels", "resolve_plan", "sparse_parts",
           "semi_structured_weight", "default_cache_dir", "clear_memory_cache", "bsr_block",
           "lowered_nodes", "dense_unused", "sparse_linear", "semi_structured_linear",
           "SPARSE_SCRIPT"]

KERNELS = ("auto", "dense", "csr", "bsr", "semi-structured")
"""The accepted ``sparse_kernel`` values."""

MAX_AUTO_DENSITY = 0.4
"""``auto`` does not measure weights (or BSR block grids) denser than this: torch's CPU sparse
kernels lose to dense there (measured crossover: CSR near 85% sparsity, BSR near 80%)."""

_CACHE_FILE = "sparse_kernels.json"
_MEMORY: dict[str, dict[str, float]] = {}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/optc`` or ``~/.cache/optc``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "optc"


def clear_memory_cache() -> None:
    """Forget the measurements cached in this process (the disk cache stays)."""
    _MEMORY.clear()


@dataclass(frozen=True)
class AutoOptions:
    """How ``auto`` measures."""

    tokens: tuple[int, ...] = (128, 1024)
    """Rows of the activation (batch x sequence) to measure at. A kernel that wins at all of
    them runs every input; one that wins only at the smaller ones runs inputs up to the largest
    count it won at, and dense runs larger ones."""
    margin: float = 0.10
    """A sparse kernel is chosen only when it takes at most ``1 - margin`` of dense's time."""
    candidates: tuple[str, ...] = ("csr", "bsr")
    """Sparse kernels to try."""
    rounds: int = 5
    """Interleaved rounds per measurement."""
    block: int = 3
    """Calls per variant in each round."""
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    """Directory of the on-disk cache; None keeps measurements in memory only."""
    whole_model: bool = True
    """After the per-layer choices, time the whole module with them against all-dense at each
    token count and keep sparse kernels only where the whole model is ``margin`` faster (needs
    a runner and a token-id input; see the module docstring). False: per-layer choices only."""
    seq: int = 128
    """Sequence length of the whole-model check (capped by the module's position table):
    ``tokens`` rows run as batch ``rows / seq``."""

    def __post_init__(self) -> None:
        bad = [c for c in self.candidates if c not in ("csr", "bsr")]
        if bad or not self.candidates:
            raise InputError(f"auto candidates must be csr and/or bsr, got {list(self.candidates)}")
        if not 0.0 <= self.margin < 1.0:
            raise InputError(f"auto margin must be in [0, 1), got {self.margin}")
        if not self.tokens or min(self.tokens) < 1:
            raise InputError(f"auto tokens must be positive row counts, got {list(self.tokens)}")
        if self.seq < 1:
            raise InputError(f"auto seq must be a positive sequence length, got {self.seq}")


@dataclass(frozen=True)
class LayerChoice:
    """The kernel chosen for one sparse weight."""

    param: str
    """The weight parameter's name."""
    shape: tuple[int, int]
    """[out, in]."""
    pattern: str
    """Its declared pattern: ``unstructured``, ``2:4``, ``block 4x4``."""
    density: float
    """Measured fraction of nonzeros."""
    kernel: str
    """``dense``, ``csr``, ``bsr``, ``semi-structured`` or ``int8``."""
    block: tuple[int, int] | None = None
    """BSR block shape (``bsr`` only)."""
    max_tokens: int | None = None
    """``auto`` only: the sparse kernel runs inputs of at most this many rows (batch x
    sequence), the dense one larger inputs (where it measured faster); None: every input."""
    reason: str = ""
    """Why this kernel (for ``auto``: the measured ratios)."""
    timings: dict[str, float] = field(default_factory=dict)
    """``auto`` measurements: median milliseconds, keys ``dense@128``, ``csr@1024``..."""


@dataclass(frozen=True)
class ModelCheck:
    """One whole-model timing of ``auto``: the module with some weights on sparse kernels
    against the all-dense module, at one input shape."""

    rows: int
    """Token count (batch x sequence) of the input."""
    batch: int
    seq: int
    sparse_weights: int
    """Weights the timed module ran on a sparse kernel at this input."""
    dense_ms: float
    """Median milliseconds per forward, all dense."""
    sparse_ms: float
    """Median milliseconds per forward with those weights sparse."""
    won: bool
    """Whether sparse took at most ``1 - margin`` of dense's time (the weights were kept)."""

    @property
    def ratio(self) -> float:
        return self.sparse_ms / self.dense_ms if self.dense_ms > 0 else float("inf")


@dataclass(frozen=True)
class SparsePlan:
    """Per-weight kernel choices for one module and one requested kernel."""

    requested: str
    """The ``sparse_kernel`` asked for."""
    threads: int
    """torch threads when the plan was made (``auto`` measured at this count)."""
    layers: tuple[LayerChoice, ...] = ()
    """One entry per sparse (or int8 sparse) linear weight, in graph order."""
    model_checks: tuple[ModelCheck, ...] = ()
    """``auto`` only: the whole-model timings that confirmed or cut the per-layer choices, in
    the order they ran."""
    model_note: str = ""
    """``auto`` only: what the whole-model check decided, or why it did not run."""

    def choice(self, param: str) -> LayerChoice | None:
        """The choice for weight ``param`` (None: not sparse, runs dense)."""
        return next((c for c in self.layers if c.param == param), None)

    def counts(self) -> dict[str, int]:
        """How many weights each kernel runs."""
        out: dict[str, int] = {}
        for c in self.layers:
            out[c.kernel] = out.get(c.kernel, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "threads": self.threads,
                "layers": [{**asdict(c), "shape": list(c.shape),
                            "block": list(c.block) if c.block else None} for c in self.layers],
                "model_checks": [asdict(m) for m in self.model_checks],
                "model_note": self.model_note}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> SparsePlan:
        layers = tuple(LayerChoice(**{**c, "shape": tuple(c["shape"]),
                                      "block": tuple(c["block"]) if c.get("block") else None})
                       for c in doc.get("layers", []))
        checks = tuple(ModelCheck(**m) for m in doc.get("model_checks", []))
        return SparsePlan(doc["requested"], int(doc["threads"]), layers, checks,
                          str(doc.get("model_note", "")))

    def table(self) -> str:
        """One row per sparse weight: shape, pattern, density, kernel and why."""
        head = f"sparse kernels ({self.requested}, {self.threads} thread(s)): "
        if not self.layers:
            return head + "no sparse weights\n"
        counts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts().items()))
        rows = [("weight", "shape", "pattern", "density", "kernel", "why")]
        for c in self.layers:
            kernel = c.kernel + (f" {c.block[0]}x{c.block[1]}" if c.block else "") + (
                f" <={c.max_tokens} rows" if c.max_tokens is not None else "")
            rows.append((c.param, f"{c.shape[0]}x{c.shape[1]}", c.pattern, f"{c.density:.3f}",
                         kernel, c.reason))
        text = head + counts + "\n" + _columns(rows)
        if self.model_checks:
            checks = [("whole model", "batch x seq", "sparse weights", "dense ms", "sparse ms",
                       "ratio", "")]
            checks += [(f"{m.rows} rows", f"{m.batch}x{m.seq}", str(m.sparse_weights),
                        f"{m.dense_ms:.2f}", f"{m.sparse_ms:.2f}", f"{m.ratio:.2f}x",
                        "kept" if m.won else "not kept") for m in self.model_checks]
            text += _columns(checks)
        return text + (f"whole model: {self.model_note}\n" if self.model_note else "")


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() + "\n"
                   for r in rows)


# -- which weights ----------------------------------------------------------------------------------
def _linear_weights(module: Module) -> list[tuple[Parameter, bool]]:
    """(weight, has a bias) of every linear node whose weight is a sparse parameter, each weight
    once, in graph order."""
    seen: dict[str, tuple[Parameter, bool]] = {}
    for node in module.graph:
        if node.op != "linear":
            continue
        w = node.arg(1)
        if isinstance(w, Parameter) and isinstance(w.attrs.get("sparsity"), Sparsity) and w.name not in seen:
            seen[w.name] = (w, node.arg(2) is not None)
    return list(seen.values())


def _pattern(attr: Sparsity) -> str:
    if attr.pattern == "n:m":
        return f"{attr.n}:{attr.m}"
    if attr.pattern == "block":
        return f"block {attr.block[0]}x{attr.block[1]}"
    return attr.pattern


# -- measuring ----------------------------------------------------------------------------------
def _median_ms(variants: dict[str, Callable[[], object]], rounds: int, block: int) -> dict[str, float]:
    """Median milliseconds per call of each variant, interleaved in blocks (see tools/timing)."""
    for fn in variants.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(block):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def _cache_key(weight: torch.Tensor, attr: Sparsity, bias: bool, threads: int, kernel: str,
               block: tuple[int, int] | None, tokens: int) -> str:
    density = float((weight != 0).float().mean())
    b = f"{block[0]}x{block[1]}" if block else "-"
    return (f"{weight.shape[0]}x{weight.shape[1]}|{str(weight.dtype)[6:]}|{_pattern(attr)}|"
            f"d={density:.2f}|bias={int(bias)}|threads={threads}|torch={torch.__version__}|"
            f"cpus={os.cpu_count()}|{kernel}{'' if kernel != 'bsr' else ' ' + b}|tokens={tokens}")


def _read_disk(cache_dir: Path | None) -> dict[str, dict[str, float]]:
    if cache_dir is None:
        return {}
    try:
        doc = json.loads((cache_dir / _CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_disk(cache_dir: Path | None, entries: dict[str, dict[str, float]]) -> None:
    if cache_dir is None or not entries:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        doc = {**_read_disk(cache_dir), **entries}
        tmp = cache_dir / f".{_CACHE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, cache_dir / _CACHE_FILE)
    except OSError:
        pass  # a cache that cannot be written only costs a re-measurement


def _measure(weight: torch.Tensor, attr: Sparsity, has_bias: bool, kernel: str,
             block: tuple[int, int] | None, options: AutoOptions, threads: int,
             disk: dict[str, dict[str, float]], fresh: dict[str, dict[str, float]]
             ) -> dict[int, tuple[float, float]]:
    """token count -> (dense ms, ``kernel`` ms), from the caches or measured now."""
    out: dict[int, tuple[float, float]] = {}
    w = weight.detach().contiguous()
    bias = torch.randn(w.shape[0], dtype=w.dtype) if has_bias else None
    crow, col, values = sparse_parts(w, kernel, block)
    for tokens in sorted(set(options.tokens)):
        key = _cache_key(w, attr, has_bias, threads, kernel, block, tokens)
        hit = _MEMORY.get(key) or disk.get(key)
        if not (isinstance(hit, dict) and {"dense", "sparse"} <= set(hit)):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(tokens, w.shape[1], generator=gen, dtype=w.dtype)
            with torch.inference_mode():
                hit = _median_ms({
                    "dense": lambda x=x: F.linear(x, w, bias),
                    "sparse": lambda x=x: sparse_linear(x, crow, col, values, bias, w.shape[0]),
                }, options.rounds, options.block)
            fresh[key] = hit
        _MEMORY[key] = hit
        out[tokens] = (float(hit["dense"]), float(hit["sparse"]))
    return out


def _auto_choice(param: Parameter, attr: Sparsity, has_bias: bool, options: AutoOptions,
                 threads: int, disk: dict, fresh: dict) -> LayerChoice:
    w = param.data
    density = float((w != 0).float().mean())
    base = dict(param=param.name, shape=tuple(w.shape), pattern=_pattern(attr), density=density)
    if density > MAX_AUTO_DENSITY:
        return LayerChoice(**base, kernel="dense",
                           reason=f"density {density:.2f} > {MAX_AUTO_DENSITY}: not measured")
    timings: dict[str, float] = {}
    best: tuple[tuple[int, float], str, tuple[int, int] | None, int | None] | None = None
    notes = []
    tokens = "/".join(map(str, sorted(set(options.tokens))))
    for kernel in options.candidates:
        block = bsr_block(w, attr) if kernel == "bsr" else None
        name = kernel if kernel == "csr" else f"bsr {block[0]}x{block[1]}"
        if kernel == "bsr":
            bd = block_density(w, block)
            if block == (1, 1) or bd > MAX_AUTO_DENSITY:
                notes.append(f"{name} not measured ({bd:.0%} of blocks non-empty)")
                continue
        measured = _measure(w, attr, has_bias, kernel, block, options, threads, disk, fresh)
        ratios = []
        for count, (dense_ms, sparse_ms) in measured.items():
            timings[f"dense@{count}"] = round(dense_ms, 4)
            timings[f"{name.replace(' ', '')}@{count}"] = round(sparse_ms, 4)
            ratios.append(sparse_ms / dense_ms)
        notes.append(f"{name} {'/'.join(f'{r:.2f}x' for r in ratios)}")
        # the sparse kernel takes the smallest token counts for as long as it keeps winning
        counts = list(measured)
        wins = 0
        while wins < len(counts) and ratios[wins] <= 1.0 - options.margin:
            wins += 1
        if wins:
            limit = None if wins == len(counts) else counts[wins - 1]
            key = (wins, -max(ratios[:wins]))
            if best is None or key > best[0]:
                best = (key, kernel, block, limit)
    measured_text = f"vs dense at {tokens} rows: " + "; ".join(notes)
    if best is not None:
        _, kernel, block, limit = best
        where = "" if limit is None else f"; dense above {limit} rows"
        return LayerChoice(**base, kernel=kernel, block=block, max_tokens=limit, timings=timings,
                           reason=measured_text + where)
    return LayerChoice(**base, kernel="dense", timings=timings,
                       reason=f"{measured_text}; none >= {options.margin:.0%} faster")


# -- the whole-model check ----------------------------------------------------------------------
Runner = Callable[["SparsePlan | None"], Callable[..., Any]]
"""Builds the module lowered with a plan (None: all dense) as a callable that takes the graph
inputs by name (:func:`optc.backends.eager.to_eager` passes ``EagerModule(module, plan)``)."""

_SPARSE = ("csr", "bsr")


def _time_models(dense: Callable[..., Any], sparse: Callable[..., Any], feeds: dict[str, torch.Tensor],
                 options: AutoOptions) -> dict[str, float]:
    """Median milliseconds per forward of the ``dense`` and ``sparse`` modules on ``feeds``,
    interleaved like the per-layer measurement."""
    with torch.inference_mode():
        return _median_ms({"dense": lambda: dense(**feeds), "sparse": lambda: sparse(**feeds)},
                          options.rounds, options.block)


def _batch_seq(rows: int, low: int, high: int) -> tuple[int, int] | None:
    """(batch, seq) with ``batch * seq == rows`` and the longest ``seq`` in [low, high]."""
    for seq in range(min(rows, high), max(low, 1) - 1, -1):
        if rows % seq == 0:
            return rows // seq, seq
    return None


def _layer_ratio(choice: LayerChoice, rows: int) -> float:
    """The chosen kernel's per-layer time over dense's at ``rows`` (1.0 when not measured)."""
    name = choice.kernel if choice.block is None else f"bsr{choice.block[0]}x{choice.block[1]}"
    dense, sparse = choice.timings.get(f"dense@{rows}"), choice.timings.get(f"{name}@{rows}")
    return sparse / dense if dense and sparse is not None else 1.0


def _trials(active: list[LayerChoice], rows: int) -> list[list[LayerChoice]]:
    """The sets of weights to time sparse at ``rows``, tried in order: all of ``active``, then
    the better half of them by per-layer ratio (weights of equal ratio, such as one shape's,
    stay together), the better half of that, ... down to the single best group."""
    groups = sorted({round(_layer_ratio(c, rows), 3) for c in active})
    out, n = [active], len(groups)
    while n > 1:
        n = (n + 1) // 2
        out.append([c for c in active if round(_layer_ratio(c, rows), 3) <= groups[n - 1]])
    return out


def _model_key(module: Module, layers: list[LayerChoice], trial: list[LayerChoice], rows: int,
               batch: int, seq: int, threads: int) -> str:
    """Cache key of one whole-model timing: the module's sparse weights (shape, pattern,
    density), which of them run sparse and how, its size, the input shape and the machine."""
    weights = ";".join(f"{c.shape[0]}x{c.shape[1]} {c.pattern} d={c.density:.2f}" for c in layers)
    sparse = ";".join(f"{c.param}:{c.kernel}{c.block or ''}" for c in trial)
    digest = hashlib.sha1(f"{weights}|{sparse}".encode()).hexdigest()[:16]
    size = sum(p.data.numel() for p in module.params.values())
    return (f"model|nodes={sum(1 for _ in module.graph)}|params={size}|threads={threads}|"
            f"torch={torch.__version__}|cpus={os.cpu_count()}|tokens={rows}|{batch}x{seq}|{digest}")


def _check_whole_model(module: Module, layers: list[LayerChoice], options: AutoOptions,
                       threads: int, runner: Runner | None, disk: dict, fresh: dict
                       ) -> tuple[list[LayerChoice], tuple[ModelCheck, ...], str]:
    """Confirm ``auto``'s per-layer choices on the whole module (see the module docstring):
    the choices with sparse kernels cut where the whole model is not ``margin`` faster, the
    timings, and the decision."""
    if not any(c.kernel in _SPARSE for c in layers):
        return layers, (), ""
    if not options.whole_model:
        return layers, (), "not checked (AutoOptions(whole_model=False)): per-layer choices"
    if runner is None:
        return layers, (), ("not checked: no runner to build the module with (to_eager and "
                            "to_torchscript give one): per-layer choices")
    low, high = seq_range(module)
    high = options.seq if high is None else min(options.seq, high)
    choices, checks, decisions = list(layers), [], []
    dense_model: Callable[..., Any] | None = None
    ran: set[int] = set()
    previous: int | None = None
    for rows in sorted(set(options.tokens)):
        active = [c for c in choices if c.kernel in _SPARSE and (c.max_tokens is None or rows <= c.max_tokens)]
        shape = _batch_seq(rows, low, high)
        if active and shape is None:
            decisions.append(f"not checked at {rows} rows (no sequence length in [{low}, {high}] "
                             "divides it)")
            break
        if not active:
            previous = rows
            continue
        batch, seq = shape
        feeds = token_inputs(module, batch, seq)
        if feeds is None:
            return layers, (), ("not checked: no graph input indexes an embedding table, so no "
                                "inputs can be built: per-layer choices")
        kept: list[LayerChoice] = []
        for trial in _trials(active, rows):
            key = _model_key(module, layers, trial, rows, batch, seq, threads)
            hit = _MEMORY.get(key) or disk.get(key)
            if not (isinstance(hit, dict) and {"dense", "sparse"} <= set(hit)):
                if dense_model is None:
                    dense_model = runner(None)
                if rows not in ran:  # inputs the module cannot take: skip, do not fail the lowering
                    try:
                        with torch.inference_mode():
                            dense_model(**feeds)
                    except (RuntimeError, ValueError, IndexError, OptcError) as exc:
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        return layers, (), (f"not checked: the module does not run on generated "
                                            f"token inputs ({first}): per-layer choices")
                    ran.add(rows)
                sparse_model = runner(SparsePlan("auto", threads, tuple(
                    replace(c, max_tokens=None) for c in trial)))
                hit = _time_models(dense_model, sparse_model, feeds, options)
                fresh[key] = hit
            _MEMORY[key] = hit
            dense_ms, sparse_ms = float(hit["dense"]), float(hit["sparse"])
            won = sparse_ms <= (1.0 - options.margin) * dense_ms
            checks.append(ModelCheck(rows, batch, seq, len(trial), round(dense_ms, 4),
                                     round(sparse_ms, 4), won))
            if won:
                kept = trial
                break
        kept_names = {c.param for c in kept}
        dropped = {c.param for c in active} - kept_names
        if not dropped:
            previous = rows
            continue
        first, last = next(m for m in checks if m.rows == rows), checks[-1]
        text = (f"; whole model at {rows} rows {first.ratio:.2f}x of dense with "
                f"{first.sparse_weights} sparse" + (f", {last.ratio:.2f}x with the "
                                                     f"{last.sparse_weights} best"
                                                     if last is not first else ""))
        where = "dense" if previous is None else f"dense above {previous} rows"
        for i, c in enumerate(choices):
            if c.param in dropped:
                cut = dict(kernel="dense", block=None, max_tokens=None) if previous is None \
                    else dict(max_tokens=previous)
                choices[i] = replace(c, **cut, reason=c.reason + text + ": " + where)
        decisions.append(f"{len(dropped)} weight(s) {where} (not {options.margin:.0%} faster at "
                         f"{rows} rows)")
        previous = rows
    if not decisions:
        checked = "/".join(str(r) for r in sorted({m.rows for m in checks}))
        decisions.append(f"sparse choices kept (at least {options.margin:.0%} faster at "
                         f"{checked} rows)")
    return choices, tuple(checks), "; ".join(decisions)


def check_kernel_available(kernel: str) -> None:
    """Raise :class:`~optc.errors.BackendError` when ``kernel`` cannot run on this machine
    (``semi-structured`` without CUDA), so callers can fail before any slow work."""
    if kernel == "semi-structured" and not torch.cuda.is_available():
        raise BackendError("sparse kernel 'semi-structured' (2:4) needs CUDA, and this machine "
                           "has no CUDA device: use --sparse-kernel=auto, csr or bsr on CPU")


def plan_sparse_kernels(module: Module, kernel: str = "auto", options: AutoOptions | None = None,
                        *, runner: Runner | None = None) -> SparsePlan:
    """Choose a kernel for each sparse linear weight of ``module`` (see the module docstring).
    ``runner`` builds the module lowered with a plan, for ``auto``'s whole-model check
    (without one the check is skipped, and the plan says so).

    Raises :class:`~optc.errors.InputError` for an unknown kernel and
    :class:`~optc.errors.BackendError` for ``semi-structured`` without CUDA or without a 2:4
    weight. Never changes ``module``."""
    if kernel not in KERNELS:
        raise InputError(f"unknown sparse kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    options = options or AutoOptions()
    threads = torch.get_num_threads()
    check_kernel_available(kernel)
    disk = _read_disk(options.cache_dir) if kernel == "auto" else {}
    fresh: dict[str, dict[str, float]] = {}
    layers = []
    for param, has_bias in _linear_weights(module):
        attr = param.attrs["sparsity"]
        w = param.data
        if w.is_meta:
            raise BackendError(f"parameter @{param.name} has no data (IR text was loaded without weights)")
        base = dict(param=param.name, shape=tuple(w.shape), pattern=_pattern(attr))
        if not w.dtype.is_floating_point:
            layers.append(LayerChoice(**base, density=float((w != 0).float().mean()), kernel="int8",
                                      reason="int8 weight: the int8 kernel runs it"))
            continue
        density = float((w != 0).float().mean())
        if kernel == "dense":
            layers.append(LayerChoice(**base, density=density, kernel="dense", reason="requested"))
        elif kernel == "csr":
            layers.append(LayerChoice(**base, density=density, kernel="csr", reason="requested"))
        elif kernel == "bsr":
            layers.append(LayerChoice(**base, density=density, kernel="bsr",
                                      block=bsr_block(w, attr), reason="requested"))
        elif kernel == "semi-structured":
            ok = attr.pattern == "n:m" and (attr.n, attr.m) == (2, 4)
            layers.append(LayerChoice(**base, density=density,
                                      kernel="semi-structured" if ok else "dense",
                                      reason="requested" if ok else "not 2:4: dense"))
        else:
            layers.append(_auto_choice(param, attr, has_bias, options, threads, disk, fresh))
    if kernel == "semi-structured" and not any(c.kernel == "semi-structured" for c in layers):
        raise BackendError("sparse kernel 'semi-structured' needs 2:4 sparse weights and this "
                           "module has none: run sparsify{pattern=2:4} first")
    checks: tuple[ModelCheck, ...] = ()
    note = ""
    if kernel == "auto":
        layers, checks, note = _check_whole_model(module, layers, options, threads, runner, disk, fresh)
    _write_disk(options.cache_dir, fresh)
    return SparsePlan(kernel, threads, tuple(layers), checks, note)


def resolve_plan(module: Module, sparse_kernel: str | SparsePlan | None,
                 options: AutoOptions | None = None, *, runner: Runner | None = None
                 ) -> SparsePlan | None:
    """A plan from a lowering's ``sparse_kernel`` argument (None and ``dense``: no plan);
    ``runner``: see :func:`plan_sparse_kernels`."""
    if sparse_kernel is None or sparse_kernel == "dense":
        return None
    if isinstance(sparse_kernel, SparsePlan):
        for c in sparse_kernel.layers:
            p = module.params.get(c.param)
            if p is None or tuple(p.data.shape) != c.shape:
                raise InputError(f"sparse plan names weight @{c.param} {list(c.shape)}, which this "
                                 "module does not have: plan the module you lower")
        return sparse_kernel
    if not isinstance(sparse_kernel, str):
        raise InputError(f"sparse_kernel must be one of {', '.join(KERNELS)} or a SparsePlan, "
                         f"got {type(sparse_kernel).__name__}")
    return plan_sparse_kernels(module, sparse_kernel, options, runner=runner)


def lowered_nodes(module: Module, plan: SparsePlan | None, kinds: tuple[str, ...]) -> dict[Node, LayerChoice]:
    """The linear nodes whose weight the plan runs with a kernel in ``kinds``."""
    if plan is None:
        return {}
    out = {}
    for node in module.graph:
        w = node.arg(1) if node.op == "linear" else None
        if isinstance(w, Parameter) and node.arg(3) is None:
            c = plan.choice(w.name)
            if c is not None and c.kernel in kinds:
                out[node] = c
    return out


def dense_unused(module: Module, lowered: Mapping[Node, LayerChoice | None]) -> set[str]:
    """Parameters read only as the weight of ``lowered`` nodes (their dense copy is not needed;
    a node mapped to None, e.g. a prepacked int8 linear, has no token limit)."""
    outputs = {id(v) for v in module.graph.outputs.values()}
    names = set()
    for node in lowered:
        w = node.arg(1)
        users = w.users()
        if id(w) not in outputs and getattr(lowered[node], "max_tokens", None) is None and \
                all(u in lowered for u in users) and \
                all(u.args.count(w) == 1 and u.arg(1) is w for u in users):
            names.add(w.name)
    return names
