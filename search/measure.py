"""Latency of modules relative to each other, measured the way DESIGN.md prescribes for this
machine: variants interleaved in blocks (not call by call), medians, ratios from one run.

:func:`latencies` times the eager lowering; :func:`backend_latencies` times what a user
deploys: the eager module, the TorchScript module or an ONNX Runtime session, on a given
number of threads and batch size."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from optc.backends.eager import to_eager
from optc.backends.model_inputs import seq_range, token_inputs
from optc.errors import InputError, PipelineSpecError
from optc.ir.core import Module

__all__ = ["latencies", "backend_latencies", "max_seq", "BACKENDS"]

BACKENDS = ("eager", "torchscript", "onnx")
"""What "fastest" can be measured on (``optc specialize --backend``)."""


def max_seq(module: Module, seq: int) -> int:
    """``seq`` clamped to what the module's sequence dimension allows (its position table)."""
    high = seq_range(module)[1]
    return min(seq, high) if high else seq


def _inputs(module: Module, batch: int, seq: int) -> dict[str, torch.Tensor]:
    feeds = token_inputs(module, batch, max_seq(module, seq))
    if feeds is None:
        raise InputError(f"module @{module.name} has no token-id input (an integer input "
                         "indexing an embedding table), so its latency cannot be measured")
    return feeds


def _time(runners: Sequence[Callable[[], Any]], blocks: int, per_block: int) -> list[float]:
    """Median ms per call of each runner, interleaved in blocks after one warm-up call each."""
    times: list[list[float]] = [[] for _ in runners]
    with torch.no_grad():
        for run in runners:
            run()  # warm-up
        for _ in range(blocks):
            for i, run in enumerate(runners):
                for _ in range(per_block):
                    start = time.perf_counter()
                    run()
                    times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def latencies(modules: Sequence[Module], batch: int = 1, seq: int = 128, threads: int = 1,
              blocks: int = 5, per_block: int = 5) -> list[float]:
    """Median eager latency (ms) of each module at ``batch`` x ``seq`` (clamped to the
    position table) on ``threads``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runners = [to_eager(m) for m in modules]
        inputs = [_inputs(m, batch, seq) for m in modules]
        calls = [lambda r=r, x=x: r(**x) for r, x in zip(runners, inputs, strict=True)]
        return _time(calls, blocks, per_block)
    finally:
        torch.set_num_threads(previous)


def backend_latencies(modules: Sequence[Module], backend: str = "eager", batch: int = 1,
                      seq: int = 128, threads: int = 1, blocks: int = 5,
                      per_block: int = 5) -> list[float]:
    """Median latency (ms) of each module lowered with ``backend`` (one of :data:`BACKENDS`)
    at ``batch`` x ``seq`` on ``threads``, interleaved in one run. A backend that cannot
    express a module raises its :class:`~optc.errors.BackendError`."""
    if backend not in BACKENDS:
        raise PipelineSpecError(f"unknown backend '{backend}'; valid backends: "
                                f"{', '.join(BACKENDS)}")
    if backend == "eager":
        return latencies(modules, batch, seq, threads, blocks, per_block)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="optc-latency-") as tmp:
            calls = [_runner(m, backend, Path(tmp) / f"m{i}", batch, seq, threads)
                     for i, m in enumerate(modules)]
            return _time(calls, blocks, per_block)
    finally:
        torch.set_num_threads(previous)


def _runner(module: Module, backend: str, path: Path, batch: int, seq: int,
            threads: int) -> Callable[[], Any]:
    feeds = _inputs(module, batch, seq)
    names = [v.name for v in module.graph.inputs]
    if backend == "torchscript":
        from optc.backends.torchscript import to_torchscript

        scripted = to_torchscript(module, module.meta.get("sparse_kernel", "dense"))
        args = [feeds[n] for n in names if n in feeds]
        return lambda: scripted(*args)
    from optc.backends.onnx import OnnxModule, export_onnx

    session = OnnxModule(export_onnx(module, path.with_suffix(".onnx")), threads=threads)
    arrays = {n: feeds[n] for n in session.input_names if n in feeds}
    return lambda: session(**arrays)
