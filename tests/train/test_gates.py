"""Hard-concrete L0 gates: the distribution's statistics, the size model, the IR edit, and
the Lagrangian pushing the expected size toward its target."""

from __future__ import annotations

import math

import pytest
import torch

from optc.errors import InputError
from optc.ir.analysis import analyze
from optc.tests.train.conftest import tiny_bert
from optc.train import finetune, trainable
from optc.train.gates import (
    BETA,
    LIMITS,
    L0Gates,
    deterministic,
    encoder_cost,
    expected_deterministic,
    open_probability,
    sample,
    size_model,
)

TASK = "text-classification"


def test_sampled_open_fraction_and_mean_match_the_closed_form() -> None:
    log_alpha = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    n = 40000
    draws = sample(log_alpha.expand(n, -1), torch.Generator().manual_seed(0))
    assert draws.min() == 0.0 and draws.max() == 1.0  # exact zeros and ones occur
    opened = (draws > 0).float().mean(0)
    torch.testing.assert_close(opened, open_probability(log_alpha), atol=0.01, rtol=0)
    # closed form of P(z > 0): the stretched logistic exceeds 0
    low, high = LIMITS
    expected = torch.sigmoid(log_alpha - BETA * math.log(-low / high))
    torch.testing.assert_close(open_probability(log_alpha), expected)
    # P(z == 1) = 1 - sigmoid(beta * log((1 - l) / (r - 1)) - log_alpha)
    ones = (draws == 1).float().mean(0)
    closed_one = 1 - torch.sigmoid(BETA * math.log((1 - low) / (high - 1)) - log_alpha)
    torch.testing.assert_close(ones, closed_one, atol=0.01, rtol=0)


def test_sample_is_differentiable_and_deterministic_gate_formula() -> None:
    log_alpha = torch.zeros(6, requires_grad=True)
    z = sample(log_alpha, torch.Generator().manual_seed(1))
    z.sum().backward()
    assert log_alpha.grad is not None and bool((log_alpha.grad >= 0).all())
    values = deterministic(torch.tensor([-10.0, -2.4, 0.0, 2.4, 10.0]))
    torch.testing.assert_close(values, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]), atol=2e-3, rtol=0)
    assert values[0] == 0 and values[-1] == 1


def test_size_model_prices_units_so_that_all_open_is_the_whole_encoder() -> None:
    _, module = tiny_bert(layers=2)
    structure = analyze(module)
    for measure in ("flops", "params"):
        size = size_model(module, structure, measure, seq=16)
        assert [g.kind for g in size.groups] == ["head", "neuron", "head", "neuron"]
        ones = {g.input_name: torch.ones(g.count) for g in size.groups}
        zeros = {g.input_name: torch.zeros(g.count) for g in size.groups}
        assert float(size.fraction(ones)) == pytest.approx(1.0)
        assert float(size.fraction(zeros)) == pytest.approx(size.fixed / size.full)
        assert size.full == encoder_cost(module, structure, measure, 16)
    params = size_model(module, structure, "params")
    head, neuron = params.groups[0], params.groups[1]
    assert head.unit_cost == 4 * 8 * 32 + 3 * 8  # q/k/v rows + biases, output columns (D=8)
    assert neuron.unit_cost == 32 + 1 + 32  # up row + bias, down column
    heads_only = size_model(module, structure, "flops", neurons=False)
    assert [g.kind for g in heads_only.groups] == ["head", "head"]


def test_edit_feeds_gates_and_all_open_gates_change_nothing() -> None:
    _, module = tiny_bert(layers=2)
    size = size_model(module, analyze(module), "flops")
    hooks = L0Gates(size, 0.5)
    plain = trainable(module, dropout=0.0)
    gated = trainable(module, dropout=0.0, edit=hooks.edit)
    assert {g.input_name for g in size.groups} <= set(gated.input_names)
    plain.eval()
    gated.eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]])
    gated.extra_inputs = {g.input_name: torch.ones(g.count) for g in size.groups}
    a, b = plain(input_ids=ids), gated(input_ids=ids)
    torch.testing.assert_close(a["last_hidden_state"], b["last_hidden_state"])
    gated.extra_inputs = {g.input_name: torch.zeros(g.count) for g in size.groups}
    c = gated(input_ids=ids)
    assert not torch.allclose(a["last_hidden_state"], c["last_hidden_state"], atol=1e-3)


def test_bad_targets_are_refused() -> None:
    _, module = tiny_bert(layers=1)
    size = size_model(module, analyze(module), "flops")
    for target in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(InputError, match="fraction in"):
            L0Gates(size, target)


def _train(task_dir, tokenizer, seed: int, steps: int = 30) -> L0Gates:
    _, module = tiny_bert(layers=2)
    size = size_model(module, analyze(module), "flops", seq=32)
    hooks = L0Gates(size, 0.5, warmup_steps=0, gate_lr=0.2, lambda_lr=0.2, seed=seed)
    finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=steps, epochs=10,
             batch_size=16, lr=1e-3, max_length=32, eval_split=None, seed=seed, dropout=0.0,
             hooks=hooks, edit=hooks.edit)
    return hooks


def test_expected_size_moves_to_the_target_and_runs_are_deterministic(task_dir, tokenizer) -> None:
    hooks = _train(task_dir, tokenizer, seed=0)
    sizes = [h["expected_size"] for h in hooks.history]
    assert len(sizes) == 30 and all(h["target"] == 0.5 for h in hooks.history)
    assert sizes[0] > 0.9  # init_drop=0.1: nearly every gate open
    reached = next(i for i, s in enumerate(sizes) if s <= 0.55)  # within a few dozen steps
    assert all(a >= b for a, b in zip(sizes[:reached], sizes[1:reached + 1], strict=True))
    assert hooks.history[reached]["lambda1"] > 0  # the multiplier rose while size > target
    # the deterministic gates close about as many units as expected
    assert abs(hooks.history[reached]["size"] - sizes[reached]) < 0.1
    again = _train(task_dir, tokenizer, seed=0)
    assert [h["expected_size"] for h in again.history] == sizes
    for name, z in hooks.final_gates().items():
        torch.testing.assert_close(z, again.final_gates()[name], atol=0, rtol=0)
    other = _train(task_dir, tokenizer, seed=1, steps=3)
    assert [h["expected_size"] for h in other.history] != sizes[:3]


def test_cofi_deterministic_gates_close_the_expected_count() -> None:
    log_alpha = torch.tensor([4.0, -3.0, 2.0, -4.0, 0.5, 3.0])
    z = expected_deterministic(log_alpha)
    closed = round(float(6 - open_probability(log_alpha).sum()))
    assert int((z == 0).sum()) == closed == 2
    assert z[1] == 0 and z[3] == 0 and bool((z[[0, 2, 4, 5]] > 0).all())
    torch.testing.assert_close(z[0], torch.sigmoid(torch.tensor(0.8 * 4.0 / BETA)))


def test_target_ramps_linearly_over_the_warmup() -> None:
    _, module = tiny_bert(layers=1)
    hooks = L0Gates(size_model(module, analyze(module), "params"), 0.5, warmup_steps=10)
    assert [hooks.target_at(s) for s in (0, 5, 10, 20)] == [1.0, 0.75, 0.5, 0.5]
    default = L0Gates(size_model(module, analyze(module), "params"), 0.5)
    default._feed = lambda *args, **kwargs: None  # no model here: only the schedule is checked
    default.start(None, 40)  # type: ignore[arg-type]
    assert default.warmup_steps == 20 and default.target_at(10) == 0.75
    assert default.keep_best(39) is False and default.keep_best(40) is True


def test_final_gates_follow_the_chosen_form_and_block_gates_multiply() -> None:
    _, module = tiny_bert(layers=1)
    size = size_model(module, analyze(module), "flops")
    louizos = L0Gates(size, 0.5, form="louizos", layers=True)
    cofi = L0Gates(size, 0.5, layers=True)
    with torch.no_grad():
        for hooks in (louizos, cofi):
            for name, alpha in hooks.log_alpha.items():
                alpha.copy_(torch.linspace(-4, 4, alpha.numel()))
                hooks.block_alpha[name].fill_(4.0)
    for g in size.groups:
        alpha = louizos.log_alpha[g.input_name].detach()
        torch.testing.assert_close(louizos.final_gates()[g.input_name],
                                   deterministic(alpha) * deterministic(torch.tensor([4.0])))
        torch.testing.assert_close(cofi.final_gates()[g.input_name],
                                   expected_deterministic(alpha)
                                   * expected_deterministic(torch.tensor([4.0])))
    with torch.no_grad():
        for alpha in louizos.block_alpha.values():
            alpha.fill_(-4.0)  # a closed block closes all of its units
    assert all(bool((z == 0).all()) for z in louizos.final_gates().values())
    assert float(louizos.expected_size().detach()) < 0.1
    with pytest.raises(InputError, match="cofi or louizos"):
        L0Gates(size, 0.5, form="other")  # type: ignore[arg-type]


def test_multiplier_stays_nonnegative_while_the_target_falls(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    size = size_model(module, analyze(module), "flops", seq=32)
    hooks = L0Gates(size, 0.5, warmup_steps=6, lambda_lr=0.5, seed=0)  # E0 ~0.98 < t = 1 at first
    finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=10, epochs=10, batch_size=16,
             lr=1e-3, max_length=32, eval_split=None, dropout=0.0, hooks=hooks, edit=hooks.edit)
    lambdas = [h["lambda1"] for h in hooks.history]
    assert hooks.history[0]["expected_size"] < hooks.history[0]["target"] == 1.0
    assert all(x >= 0 for x in lambdas[:6]) and lambdas[0] == 0.0  # clamped, not pushed open
    assert lambdas[-1] > 0  # after the ramp: size above 0.5 raises it
