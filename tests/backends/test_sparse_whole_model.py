"""``auto``'s whole-model check: after the per-layer choices, the whole module is timed with
them against all-dense at each token count, and sparse kernels stay only where the whole model
is ``margin`` faster (issue 10: ``auto`` never more than 5% slower than dense).

Per-layer and whole-model timings are injected where the decision is under test (the seams
``_measure`` and ``_time_models`` of :mod:`optc.backends.sparse_auto`); one test times the tiny
model for real.
"""

from __future__ import annotations

import json

import pytest
import torch

import optc
from optc.backends import sparse_auto, sparse_exec
from optc.backends.eager import EagerModule, to_eager
from optc.backends.model_inputs import seq_range, token_inputs
from optc.backends.sparse_exec import AutoOptions, ModelCheck, SparsePlan, plan_sparse_kernels
from optc.backends.torchscript import PLAN_FILE, export_torchscript
from optc.errors import InputError
from optc.passes.sparsify import Sparsify
from optc.tests.backends.test_sparse_exec import sparsified
from optc.tests.conftest import max_diff, padded_inputs

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

FAST = AutoOptions(tokens=(16, 64), rounds=1, block=1, cache_dir=None)
"""Two token counts (the tiny BERT's position table holds 64), one timing each, no disk cache."""


@pytest.fixture(scope="module")
def unstructured():
    return sparsified(sparsity=0.9, pattern="unstructured")


@pytest.fixture(autouse=True)
def _fresh_memory():
    sparse_exec.clear_memory_cache()
    yield
    sparse_exec.clear_memory_cache()


def _per_layer(monkeypatch, ratio_by_shape):
    """Per-layer measurements where dense takes 1 ms and the sparse kernel ``ratio_by_shape``
    of that (keyed by the weight's shape) at every token count."""

    def measure(weight, attr, has_bias, kernel, block, options, *rest):
        r = ratio_by_shape[tuple(weight.shape)]
        return {t: (1.0, r) for t in sorted(set(options.tokens))}

    monkeypatch.setattr(sparse_auto, "_measure", measure)


def _whole_model(monkeypatch, sparse_ms):
    """Whole-model timings: dense 10 ms, sparse ``sparse_ms(rows, sparse weights)`` ms; returns
    the (rows, sparse weights, plan) of every timing asked for."""
    asked = []

    def time_models(dense, sparse, feeds, options):
        rows = feeds["input_ids"].numel()
        plan = sparse.sparse_plan
        n = sum(c.kernel in ("csr", "bsr") for c in plan.layers)
        asked.append((rows, n, plan))
        assert dense.sparse_plan is None  # the reference is all dense
        return {"dense": 10.0, "sparse": sparse_ms(rows, n)}

    monkeypatch.setattr(sparse_auto, "_time_models", time_models)
    return asked


def _runner(module):
    return lambda plan: EagerModule(module, plan)


UNIFORM = {(64, 64): 0.5, (128, 64): 0.5, (64, 128): 0.5}


def test_whole_model_faster_keeps_the_per_layer_choices_and_records_the_timings(unstructured, monkeypatch):
    _, module = unstructured
    _per_layer(monkeypatch, UNIFORM)
    asked = _whole_model(monkeypatch, lambda rows, n: 8.0)
    plan = to_eager(module, "auto", auto=FAST).sparse_plan
    assert plan.counts() == {"csr": 12} and {c.max_tokens for c in plan.layers} == {None}
    assert [(r, n) for r, n, _ in asked] == [(16, 12), (64, 12)]
    assert plan.model_checks == (ModelCheck(16, 1, 16, 12, 10.0, 8.0, True),
                                 ModelCheck(64, 1, 64, 12, 10.0, 8.0, True))
    assert plan.model_note == "sparse choices kept (at least 10% faster at 16/64 rows)"
    table = plan.table()
    assert "whole model  batch x seq  sparse weights  dense ms  sparse ms  ratio" in table
    assert "64 rows      1x64         12              10.00     8.00       0.80x  kept" in table
    assert table.rstrip().endswith("whole model: " + plan.model_note)


def test_whole_model_slower_at_the_larger_count_runs_dense_there(unstructured, monkeypatch):
    model, module = unstructured
    _per_layer(monkeypatch, UNIFORM)  # every layer wins alone at both counts
    asked = _whole_model(monkeypatch, lambda rows, n: 8.0 if rows == 16 else 10.7)
    plan = to_eager(module, "auto", auto=FAST).sparse_plan
    # one ratio group, so no smaller set to retry with: all twelve switch to dense above 16 rows
    assert [(r, n) for r, n, _ in asked] == [(16, 12), (64, 12)]
    assert plan.counts() == {"csr": 12} and {c.max_tokens for c in plan.layers} == {16}
    assert [m.won for m in plan.model_checks] == [True, False]
    assert plan.layers[0].reason.endswith(
        "; whole model at 64 rows 1.07x of dense with 12 sparse: dense above 16 rows")
    assert plan.model_note == "12 weight(s) dense above 16 rows (not 10% faster at 64 rows)"
    # the switch works in the lowered module: 48 rows run the dense weights, bit for bit
    eager = to_eager(module, plan)
    inputs = padded_inputs(model, module, 3, 16, 1)
    with torch.no_grad():
        assert max_diff(eager(**inputs)["last_hidden_state"],
                        to_eager(module)(**inputs)["last_hidden_state"]) == 0.0


def test_whole_model_slower_at_every_count_falls_back_to_dense(unstructured, monkeypatch):
    _, module = unstructured
    _per_layer(monkeypatch, UNIFORM)
    asked = _whole_model(monkeypatch, lambda rows, n: 9.5)  # faster, but within the margin
    plan = to_eager(module, "auto", auto=FAST).sparse_plan
    assert plan.counts() == {"dense": 12}
    assert all(c.block is None and c.max_tokens is None for c in plan.layers)
    assert len(asked) == 1  # nothing runs sparse at 64 rows once 16 lost: not timed
    assert plan.layers[0].reason.endswith("; whole model at 16 rows 0.95x of dense with 12 sparse: dense")
    assert plan.model_note == "12 weight(s) dense (not 10% faster at 16 rows)"
    # a smaller margin accepts the same timings
    loose = AutoOptions(tokens=(16, 64), rounds=1, block=1, cache_dir=None, margin=0.04)
    assert to_eager(module, "auto", auto=loose).sparse_plan.counts() == {"csr": 12}


def test_a_joint_loss_retries_with_the_layers_that_win_most(unstructured, monkeypatch):
    _, module = unstructured
    # the FFN shapes win more per layer than attention's; all twelve together lose, FFN alone wins
    _per_layer(monkeypatch, {(64, 64): 0.8, (128, 64): 0.4, (64, 128): 0.4})
    asked = _whole_model(monkeypatch, lambda rows, n: 11.0 if n > 4 else 8.5)
    plan = to_eager(module, "auto", auto=AutoOptions(tokens=(16,), rounds=1, block=1, cache_dir=None)).sparse_plan
    assert [(r, n) for r, n, _ in asked] == [(16, 12), (16, 4)]
    assert {p.param for p in asked[1][2].layers} == {c.param for c in plan.layers if c.shape != (64, 64)}
    assert plan.counts() == {"csr": 4, "dense": 8}
    assert {c.shape for c in plan.layers if c.kernel == "csr"} == {(128, 64), (64, 128)}
    attention = plan.choice("encoder.layer.0.attention.self.query.weight")
    assert attention.reason.endswith("; whole model at 16 rows 1.10x of dense with 12 sparse, "
                                     "0.85x with the 4 best: dense")
    assert [m.won for m in plan.model_checks] == [False, True]


def test_the_check_is_recorded_through_json_and_torchscript(unstructured, monkeypatch, tmp_path):
    _, module = unstructured
    _per_layer(monkeypatch, UNIFORM)
    _whole_model(monkeypatch, lambda rows, n: 8.0 if rows == 16 else 10.7)
    plan = to_eager(module, "auto", auto=FAST).sparse_plan
    again = SparsePlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan and again.table() == plan.table()
    # plans written before the check existed still load
    old = {k: v for k, v in plan.to_json().items() if k not in ("model_checks", "model_note")}
    assert SparsePlan.from_json(old).model_checks == () and SparsePlan.from_json(old).model_note == ""
    path = export_torchscript(module, tmp_path / "m.pt", sparse_kernel=plan)
    extra = {PLAN_FILE: ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert SparsePlan.from_json(json.loads(extra[PLAN_FILE])) == plan


def test_whole_model_timings_are_cached_by_pattern_and_threads(monkeypatch, tmp_path):
    _, unstructured = sparsified(sparsity=0.9, pattern="unstructured")
    _, blocked = sparsified(sparsity=0.75, pattern="block", block="4x4")
    _per_layer(monkeypatch, UNIFORM)
    asked = _whole_model(monkeypatch, lambda rows, n: 8.0)
    options = AutoOptions(tokens=(16,), rounds=1, block=1, candidates=("csr",), cache_dir=tmp_path)

    def model_keys():
        return {k for k in json.loads((tmp_path / "sparse_kernels.json").read_text()) if k.startswith("model|")}

    plan_sparse_kernels(unstructured, "auto", options, runner=_runner(unstructured))
    assert len(asked) == 1 and len(model_keys()) == 1
    sparse_exec.clear_memory_cache()
    again = plan_sparse_kernels(unstructured, "auto", options, runner=_runner(unstructured))
    assert len(asked) == 1  # from the disk cache
    assert again.model_checks[0] == ModelCheck(16, 1, 16, 12, 10.0, 8.0, True)
    plan_sparse_kernels(blocked, "auto", options, runner=_runner(blocked))
    keys = model_keys()
    assert len(asked) == 2 and len(keys) == 2  # another pattern is another key
    threads = torch.get_num_threads()
    assert all(f"threads={threads}|" in k and "|tokens=16|1x16|" in k for k in keys)
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        plan_sparse_kernels(blocked, "auto", options, runner=_runner(blocked))
        assert len(asked) == 3 and len(model_keys()) == 3  # another thread count: measured again
    finally:
        torch.set_num_threads(threads)


def test_the_check_is_skipped_with_a_reason(unstructured, monkeypatch):
    _, module = unstructured
    _per_layer(monkeypatch, UNIFORM)
    asked = _whole_model(monkeypatch, lambda rows, n: 20.0)
    off = AutoOptions(tokens=(16,), rounds=1, block=1, cache_dir=None, whole_model=False)
    plan = to_eager(module, "auto", auto=off).sparse_plan
    assert plan.counts() == {"csr": 12} and not plan.model_checks and not asked
    assert plan.model_note.startswith("not checked (AutoOptions(whole_model=False))")
    plan = plan_sparse_kernels(module, "auto", FAST)  # no runner: nothing to time
    assert plan.counts() == {"csr": 12} and not asked
    assert "no runner" in plan.model_note and "whole model: not checked" in plan.table()
    # no token-id input: inputs cannot be built generically
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    floats = optc.capture(mlp, (torch.randn(4, 64),))
    Sparsify(sparsity=0.9).run(floats)
    assert token_inputs(floats, 1, 16) is None
    plan = to_eager(floats, "auto", auto=FAST).sparse_plan
    assert plan.counts() == {"csr": 2} and not asked
    assert "no graph input indexes an embedding table" in plan.model_note
    # nothing sparse chosen: nothing to check, nothing said
    _per_layer(monkeypatch, {(64, 64): 1.0, (128, 64): 1.0, (64, 128): 1.0})
    plan = to_eager(module, "auto", auto=FAST).sparse_plan
    assert plan.counts() == {"dense": 12} and plan.model_note == "" and not asked
    with pytest.raises(InputError, match="auto seq"):
        AutoOptions(seq=0)


def test_the_real_check_on_the_tiny_model(unstructured, monkeypatch):
    """Real whole-model timings: the choice follows them, whatever this machine measures."""
    model, module = unstructured
    _per_layer(monkeypatch, UNIFORM)  # every layer claims a 2x win; the whole model decides
    options = AutoOptions(tokens=(16, 64), rounds=2, block=1, cache_dir=None, seq=32)
    eager = to_eager(module, "auto", auto=options)
    plan = eager.sparse_plan
    assert plan.model_checks and plan.model_note
    for m in plan.model_checks:
        assert m.batch * m.seq == m.rows and m.seq <= 32 and m.dense_ms > 0 and m.sparse_ms > 0
        assert m.won == (m.sparse_ms <= 0.9 * m.dense_ms)
    first = plan.model_checks[0]
    assert (first.rows, first.batch, first.seq, first.sparse_weights) == (16, 1, 16, 12)
    # a count that lost takes its sparse weights off: none runs sparse at a count whose last try lost
    for rows in (16, 64):
        tries = [m for m in plan.model_checks if m.rows == rows]
        running = [c for c in plan.layers if c.kernel == "csr" and (c.max_tokens or 1 << 30) >= rows]
        if tries and not tries[-1].won:
            assert not running
        elif tries:
            assert len(running) == tries[-1].sparse_weights
    inputs = padded_inputs(model, module, 2, 16, 0)
    with torch.no_grad():
        assert max_diff(eager(**inputs)["last_hidden_state"],
                        to_eager(module)(**inputs)["last_hidden_state"]) <= 1e-5


def test_token_inputs_follow_the_graph_inputs(unstructured):
    _, module = unstructured
    assert seq_range(module) == (1, 64)  # the position table
    feeds = token_inputs(module, 2, 8)
    assert list(feeds) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(t.shape == (2, 8) and t.dtype == torch.int64 for t in feeds.values())
    assert 5 <= int(feeds["input_ids"].min()) and int(feeds["input_ids"].max()) < 120
    assert bool((feeds["attention_mask"] == 1).all()) and not feeds["token_type_ids"].any()
