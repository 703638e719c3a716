"""measure_interleaved's settle pause: taken before every block and never timed."""

from __future__ import annotations

import time

from optc.tools.measure.timing import measure_interleaved


def test_settle_pauses_before_each_block_untimed() -> None:
    calls: list[tuple[str, float]] = []

    def variant(name: str):  # noqa: ANN202
        return lambda: calls.append((name, time.perf_counter()))

    start = time.perf_counter()
    t = measure_interleaved({"a": variant("a"), "b": variant("b")}, rounds=3, block=2, warmup=0,
                            settle=0.02)
    assert time.perf_counter() - start >= 6 * 0.02  # one pause per block: 3 rounds x 2 variants
    assert t["a"].calls == t["b"].calls == 6
    assert max(t["a"].p90, t["b"].p90) < 0.01  # the pause is not in the samples
    gaps = [b - a for (na, a), (nb, b) in zip(calls, calls[1:], strict=False) if na != nb]
    assert len(gaps) == 5 and min(gaps) >= 0.02  # every switch of variant waited
