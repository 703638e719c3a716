"""Latency measurement that stays fair on a small, noisy machine.

Variants are interleaved in blocks (all calls of one block go to one variant, then the next
variant gets a block), so that thread-pool spin-up and frequency drift hit every variant alike;
alternating call by call would distort them. Medians and percentiles come from per-call times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Timing", "measure_interleaved", "benchmark_parser"]


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics of one variant, in seconds."""

    median: float
    p10: float
    p90: float
    calls: int

    @staticmethod
    def of(samples: list[float]) -> Timing:
        ordered = sorted(samples)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

        return Timing(statistics.median(ordered), pct(0.1), pct(0.9), len(ordered))


def measure_interleaved(
    variants: dict[str, Callable[[], object]],
    rounds: int = 10,
    block: int = 5,
    warmup: int = 3,
    settle: float = 0.0,
) -> dict[str, Timing]:
    """Time each zero-argument callable ``rounds * block`` times, interleaved in blocks.

    ``settle``: seconds to sleep (untimed) before each block, so that the previous variant's
    idle thread pool stops spinning first: ONNX Runtime's intra-op workers spin for tens of ms
    after a run, and on a 2-core machine they take the core the next variant's second thread
    needs (measured: identical 2-thread sessions, 43.9 ms without, 32.5 ms with 0.15 s)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            if settle > 0:
                time.sleep(settle)
            for _ in range(block):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: Timing.of(s) for name, s in samples.items()}


def benchmark_parser(prog: str, doc: str | None, threads: list[int] | None = None) -> argparse.ArgumentParser:
    """The options every benchmark script shares: model, batch sizes, sequence, threads, rounds."""
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory or hub id (default: embedded MiniLM)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--seq", type=int, default=128, help="sequence length")
    p.add_argument("--threads", type=int, nargs="+", default=threads or [1, 2], help="thread counts")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    p.add_argument("--block", type=int, default=5, help="calls per block")
    return p
