"""Latency of modules relative to each other, measured the way DESIGN.md prescribes for this
machine: variants interleaved in blocks (not call by call), medians, ratios from one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from optc.backends.eager import to_eager
from optc.backends.model_inputs import seq_range, token_inputs
from optc.errors import InputError
from optc.ir.core import Module

__all__ = ["latencies", "max_seq"]


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


def latencies(modules: Sequence[Module], batch: int = 1, seq: int = 128, threads: int = 1,
              blocks: int = 5, per_block: int = 5) -> list[float]:
    """Median eager latency (ms) of each module at ``batch`` x ``seq`` (clamped to the
    position table) on ``threads``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runners = [to_eager(m) for m in modules]
        inputs = [_inputs(m, batch, seq) for m in modules]
        times: list[list[float]] = [[] for _ in modules]
        with torch.no_grad():
            for run, x in zip(runners, inputs, strict=True):
                run(**x)  # warm-up
            for _ in range(blocks):
                for i, (run, x) in enumerate(zip(runners, inputs, strict=True)):
                    for _ in range(per_block):
                        start = time.perf_counter()
                        run(**x)
                        times[i].append((time.perf_counter() - start) * 1000)
        return [statistics.median(t) for t in times]
    finally:
        torch.set_num_threads(previous)
