"""The measurements behind ``sparse_kernel="auto"`` (see :mod:`optc.backends.sparse_exec`):
the per-layer micro-benchmark of each sparse weight against dense (:func:`auto_choice`), the
whole-model check that confirms or cuts those choices (:func:`check_whole_model`), and the
caches of both timings, in memory and on disk."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from optc.backends.model_inputs import seq_range, token_inputs
from optc.backends.sparse_ops import block_density, bsr_block, sparse_linear, sparse_parts
from optc.backends.sparse_plan import (
    MAX_AUTO_DENSITY,
    AutoOptions,
    LayerChoice,
    ModelCheck,
    Runner,
    SparsePlan,
    pattern_name,
)
from optc.errors import OptcError
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Parameter

__all__ = ["auto_choice", "check_whole_model", "read_disk", "write_disk", "clear_memory_cache"]

_CACHE_FILE = "sparse_kernels.json"
_MEMORY: dict[str, dict[str, float]] = {}


def clear_memory_cache() -> None:
    """Forget the measurements cached in this process (the disk cache stays)."""
    _MEMORY.clear()


def _median_ms(variants: dict[str, Callable[[], object]], rounds: int, block: int) -> dict[str, float]:
    """Median milliseconds per call of each variant, interleaved in blocks (see tools/measure/timing)."""
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
    return (f"{weight.shape[0]}x{weight.shape[1]}|{str(weight.dtype)[6:]}|{pattern_name(attr)}|"
            f"d={density:.2f}|bias={int(bias)}|threads={threads}|torch={torch.__version__}|"
            f"cpus={os.cpu_count()}|{kernel}{'' if kernel != 'bsr' else ' ' + b}|tokens={tokens}")


def read_disk(cache_dir: Path | None) -> dict[str, dict[str, float]]:
    if cache_dir is None:
        return {}
    try:
        doc = json.loads((cache_dir / _CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_disk(cache_dir: Path | None, entries: dict[str, dict[str, float]]) -> None:
    if cache_dir is None or not entries:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        doc = {**read_disk(cache_dir), **entries}
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


def auto_choice(param: Parameter, attr: Sparsity, has_bias: bool, options: AutoOptions,
                threads: int, disk: dict, fresh: dict) -> LayerChoice:
    """``auto``'s choice for the sparse weight ``param``: the candidate kernel that is at least
    ``options.margin`` faster than dense at the most token counts (smallest first), else dense;
    ``disk`` and ``fresh`` are the disk cache read and the new measurements to write."""
    w = param.data
    density = float((w != 0).float().mean())
    base = dict(param=param.name, shape=tuple(w.shape), pattern=pattern_name(attr), density=density)
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


def check_whole_model(module: Module, layers: list[LayerChoice], options: AutoOptions,
                      threads: int, runner: Runner | None, disk: dict, fresh: dict
                      ) -> tuple[list[LayerChoice], tuple[ModelCheck, ...], str]:
    """Confirm ``auto``'s per-layer choices on the whole module (see
    :mod:`optc.backends.sparse_exec`): the choices with sparse kernels cut where the whole
    model is not ``margin`` faster, the timings, and the decision."""
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
