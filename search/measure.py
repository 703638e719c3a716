"""Latency of modules relative to each other, measured the way DESIGN.md prescribes for this
machine: variants interleaved in blocks (not call by call), medians, ratios from one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from optc.backends.eager import to_eager
from optc.ir.core import Module

__all__ = ["latencies", "max_seq"]


def _vocab(module: Module) -> int:
    """Rows of the first embedding table (ids below it are valid)."""
    for node in module.graph:
        if node.op == "embedding" and len(node.args) > 1:
            return int(node.args[1].tensor_type.shape[0])
    return 100


def max_seq(module: Module, seq: int) -> int:
    """``seq`` clamped to the module's sequence dimension (its position table)."""
    dim = module.dims.get("seq")
    limit = getattr(dim, "max", None) if dim is not None else None
    return min(seq, int(limit)) if isinstance(limit, int) and limit > 0 else seq


def _inputs(module: Module, batch: int, seq: int) -> dict[str, torch.Tensor]:
    names = [v.name for v in module.graph.inputs]
    gen = torch.Generator().manual_seed(0)
    seq = max_seq(module, seq)
    out = {"input_ids": torch.randint(0, _vocab(module), (batch, seq), generator=gen)}
    if "attention_mask" in names:
        out["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
    if "token_type_ids" in names:
        out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return {k: v for k, v in out.items() if k in names}


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
