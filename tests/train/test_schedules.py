"""The cubic sparsity schedule (Zhu & Gupta) at chosen steps, and the pruning steps."""

from __future__ import annotations

import pytest

from optc.errors import InputError
from optc.train.schedules import cubic_sparsity, prune_steps


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (10, 0.0),                     # before and at the start: the initial sparsity
    (20, 0.9 * (1 - 0.75 ** 3)),             # a quarter of the way: 1 - (3/4)^3 of the rise
    (30, 0.9 * (1 - 0.5 ** 3)),              # half way: 7/8 of the rise
    (40, 0.9 * (1 - 0.25 ** 3)),
    (49, 0.9 * (1 - (1 / 40) ** 3)),
    (50, 0.9), (51, 0.9), (1000, 0.9),       # at and after the end: exactly the target
])
def test_cubic_values_at_chosen_steps(step, expected) -> None:
    assert cubic_sparsity(step, 0.0, 0.9, 10, 50) == pytest.approx(expected, abs=1e-12)


def test_initial_sparsity_and_monotone_rise() -> None:
    values = [cubic_sparsity(t, 0.5, 0.8, 0, 100) for t in range(120)]
    assert values[0] == 0.5 and values[100] == 0.8 and values[119] == 0.8
    assert values[50] == pytest.approx(0.8 - 0.3 / 8)
    rises = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(r >= 0 for r in rises)
    assert all(later <= earlier + 1e-12 for earlier, later in zip(rises, rises[1:100], strict=False))  # fast, then slow


def test_a_schedule_that_starts_and_ends_at_once_jumps() -> None:
    assert cubic_sparsity(4, 0.0, 0.7, 5, 5) == 0.0
    assert cubic_sparsity(5, 0.0, 0.7, 5, 5) == 0.7


def test_prune_steps_end_exactly_at_the_end() -> None:
    assert prune_steps(0, 10, 3) == [0, 3, 6, 9, 10]
    assert prune_steps(2, 8, 2) == [2, 4, 6, 8]
    assert prune_steps(5, 5, 100) == [5]


@pytest.mark.parametrize("args,message", [
    ((0, 0.0, 1.0, 0, 10), "final sparsity must be in [0, 1)"),
    ((0, 0.0, -0.1, 0, 10), "final sparsity must be in [0, 1)"),
    ((0, 0.6, 0.5, 0, 10), "initial sparsity must be in [0, final sparsity 0.5]"),
    ((0, 0.0, 0.5, 10, 5), "ends (step 5) before it starts (step 10)"),
    ((0, 0.0, 0.5, -1, 5), "start step must be >= 0"),
])
def test_bad_schedules_are_input_errors(args, message) -> None:
    with pytest.raises(InputError) as info:
        cubic_sparsity(*args)
    assert message in str(info.value)
    with pytest.raises(InputError, match="frequency must be >= 1"):
        prune_steps(0, 10, 0)
