"""Sparsity schedules for gradual pruning (pure functions of the step).

:func:`cubic_sparsity` is Zhu & Gupta's schedule ("To prune, or not to prune", 2017), used by
Prune Once for All and SparseBERT: sparsity rises fast while many weights are redundant and
slowly near the target::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3      for t0 <= t <= t1

before ``t0`` it is ``s_i`` and from ``t1`` on ``s_f``. :func:`prune_steps` says at which steps
the masks are recomputed (every ``frequency`` steps from ``t0``, and always at ``t1`` so the
target is reached exactly).
"""

from __future__ import annotations

from optc.errors import InputError

__all__ = ["cubic_sparsity", "prune_steps", "check_schedule"]


def check_schedule(initial: float, final: float, start: int, end: int,
                   frequency: int = 1) -> None:
    """Refuse a schedule no pruning run can follow (:class:`InputError` naming the fix)."""
    if not 0.0 <= final < 1.0:
        raise InputError(f"final sparsity must be in [0, 1), got {final:g}")
    if not 0.0 <= initial <= final:
        raise InputError(f"initial sparsity must be in [0, final sparsity {final:g}], "
                         f"got {initial:g}")
    if start < 0:
        raise InputError(f"the schedule's start step must be >= 0, got {start}")
    if end < start:
        raise InputError(f"the schedule ends (step {end}) before it starts (step {start}): "
                         "choose end_step >= start_step")
    if frequency < 1:
        raise InputError(f"the pruning frequency must be >= 1 step, got {frequency}")


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Target sparsity at ``step`` on the cubic schedule from ``initial`` at ``start`` to
    ``final`` at ``end`` (constant outside ``[start, end]``; ``end == start`` jumps)."""
    check_schedule(initial, final, start, end)
    if step >= end:
        return final
    if step <= start:
        return initial
    left = 1.0 - (step - start) / (end - start)
    return final + (initial - final) * left ** 3


def prune_steps(start: int, end: int, frequency: int) -> list[int]:
    """The steps at which masks are recomputed: ``start, start + frequency, ...`` up to
    ``end``, and ``end`` itself."""
    check_schedule(0.0, 0.0, start, end, frequency)
    steps = list(range(start, end + 1, frequency))
    if steps[-1] != end:
        steps.append(end)
    return steps
