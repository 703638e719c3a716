"""Sparse kernels in eager and TorchScript (``sparse_kernel=auto|dense|csr|bsr|semi-structured``).

Every kernel must compute what the dense lowering computes (fp32 tolerance) on a tiny sparsified
BERT with padded inputs, the weights it lowers must actually be stored compressed, TorchScript
files must save and load them, and ``auto`` must pick a sparse kernel only when the measurement
says it wins by the margin (timings are stubbed where the decision itself is under test).
"""

from __future__ import annotations

import json

import pytest
import torch

import optc
from optc.backends import sparse_auto, sparse_exec
from optc.backends.eager import to_eager
from optc.backends.sparse_exec import AutoOptions, SparsePlan, plan_sparse_kernels
from optc.backends.torchscript import PLAN_FILE, export_torchscript, to_torchscript
from optc.errors import BackendError, InputError
from optc.passes.sparsify import Sparsify
from optc.tests.conftest import max_diff, padded_inputs, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

TOLERANCE = 1e-5
FAST = AutoOptions(tokens=(16,), rounds=1, block=1, cache_dir=None)
"""auto options for tests: one small measurement, no disk cache."""


def sparsified(**options):
    model = tiny_model("bert")
    module = optc.capture(model)
    Sparsify(**options).run(module)
    return model, module


@pytest.fixture(scope="module")
def unstructured():
    return sparsified(sparsity=0.9, pattern="unstructured")


@pytest.fixture(scope="module")
def block():
    return sparsified(sparsity=0.75, pattern="block", block="4x4")


def _inputs(model, module, seed=0):
    # batch 3 with padded rows at the end of rows 0 and 2
    return padded_inputs(model, module, 3, 16, seed)


def _agree(got, want):
    assert list(got) == list(want)
    for name in want:
        assert max_diff(got[name], want[name]) <= TOLERANCE, name


@pytest.mark.parametrize("kernel", ["csr", "bsr"])
@pytest.mark.parametrize("case", ["unstructured", "block"])
def test_eager_sparse_kernels_match_dense(request, case, kernel):
    model, module = request.getfixturevalue(case)
    inputs = _inputs(model, module)
    dense = to_eager(module)(**inputs)
    eager = to_eager(module, kernel)
    assert eager.sparse_plan.counts() == {kernel: 12}
    buffers = dict(eager.graph_module.named_buffers())
    # the sparse weights are stored compressed only: no dense copy, parts of the right layout
    assert not any(name.endswith("query_weight") for name in buffers)
    values = buffers["encoder_layer_0_attention_self_query_weight_" + kernel + "_values"]
    assert values.dim() == (1 if kernel == "csr" else 3)
    with torch.no_grad():
        _agree(eager(**inputs), dense)


def test_bsr_block_comes_from_the_sparsity_attribute_or_a_square_default():
    _, module = sparsified(sparsity=0.5, pattern="block", block="1x4")
    plan = plan_sparse_kernels(module, "bsr")
    assert {c.block for c in plan.layers} == {(4, 4)}  # MKL takes square blocks only
    _, square = sparsified(sparsity=0.5, pattern="block", block="8x8")
    assert {c.block for c in plan_sparse_kernels(square, "bsr").layers} == {(8, 8)}
    model, nm = sparsified(pattern="2:4")
    plan = plan_sparse_kernels(nm, "bsr")
    assert {c.block for c in plan.layers} == {(4, 4)}
    inputs = _inputs(model, nm)
    with torch.no_grad():
        _agree(to_eager(nm, plan)(**inputs), to_eager(nm)(**inputs))


@pytest.mark.parametrize("kernel", ["csr", "bsr"])
def test_torchscript_saves_and_loads_sparse_kernels(unstructured, block, tmp_path, kernel):
    for model, module in (unstructured, block):
        inputs = _inputs(model, module, seed=1)
        names = [v.name for v in module.graph.inputs]
        dense = to_eager(module)(**inputs)
        scripted = to_torchscript(module, kernel)
        assert "k_sparse_linear" in scripted.code
        path = export_torchscript(module, tmp_path / f"{kernel}_{len(list(tmp_path.iterdir()))}.pt",
                                  sparse_kernel=kernel)
        extra = {PLAN_FILE: ""}
        loaded = torch.jit.load(str(path), _extra_files=extra)
        plan = SparsePlan.from_json(json.loads(extra[PLAN_FILE]))
        assert plan.requested == kernel and plan.counts() == {kernel: 12}
        buffers = dict(loaded.named_buffers())
        assert not any(n.endswith("query_weight") for n in buffers)
        with torch.no_grad():
            _agree(loaded(*[inputs[n] for n in names]), dense)
            # dynamic shapes: another batch and sequence
            other = padded_inputs(model, module, 2, 9, 3)
            _agree(loaded(*[other[n] for n in names]), to_eager(module)(**other))


def test_export_torchscript_uses_the_recorded_kernel(unstructured, tmp_path):
    _, module = unstructured
    work = module.clone()
    work.meta["sparse_kernel"] = "csr"
    path = export_torchscript(work, tmp_path / "m.pt")
    extra = {PLAN_FILE: ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra[PLAN_FILE])["requested"] == "csr"
    dense = export_torchscript(module, tmp_path / "d.pt")
    assert "k_sparse_linear" not in torch.jit.load(str(dense)).code


def test_auto_matches_dense_in_eager_and_torchscript(unstructured):
    model, module = unstructured
    inputs = _inputs(model, module, seed=2)
    names = [v.name for v in module.graph.inputs]
    dense = to_eager(module)(**inputs)
    eager = to_eager(module, "auto", auto=FAST)
    plan = eager.sparse_plan
    assert plan.requested == "auto" and len(plan.layers) == 12
    assert all(c.kernel in ("dense", "csr", "bsr") and c.reason for c in plan.layers)
    measured = [c for c in plan.layers if c.timings]
    assert measured and all("dense@16" in c.timings for c in measured)
    with torch.no_grad():
        _agree(eager(**inputs), dense)
        _agree(to_torchscript(module, plan)(*[inputs[n] for n in names]), dense)
    assert "auto" in plan.table() and "encoder.layer.1.output.dense.weight" in plan.table()


def _stub_timings(monkeypatch, ratio: dict[str, float]):
    """Measurements where dense takes 1 ms and each sparse kernel ``ratio[kernel]`` ms."""
    calls = []

    def fake(variants, rounds, block):
        calls.append(1)
        return {"dense": 1.0, "sparse": ratio[fake.kernel]}

    real_measure = sparse_auto._measure

    def measure(weight, attr, has_bias, kernel, *rest):
        fake.kernel = kernel
        return real_measure(weight, attr, has_bias, kernel, *rest)

    monkeypatch.setattr(sparse_auto, "_median_ms", fake)
    monkeypatch.setattr(sparse_auto, "_measure", measure)
    sparse_exec.clear_memory_cache()
    return calls


def test_auto_chooses_sparse_only_when_it_wins_by_the_margin(unstructured, block, monkeypatch):
    _, module = unstructured
    _stub_timings(monkeypatch, {"csr": 0.5, "bsr": 0.2})
    plan = plan_sparse_kernels(module, "auto", FAST)
    # 90% unstructured: 4x4 blocks are mostly non-empty, so bsr is not even measured
    assert plan.counts() == {"csr": 12}
    assert plan.layers[0].reason.startswith("vs dense at 16 rows: csr 0.50x; bsr 4x4 not measured (")
    _stub_timings(monkeypatch, {"csr": 0.95, "bsr": 0.95})  # faster, but within the margin
    plan = plan_sparse_kernels(module, "auto", FAST)
    assert plan.counts() == {"dense": 12}
    assert "none >= 10% faster" in plan.layers[0].reason
    _, blocked = block
    _stub_timings(monkeypatch, {"csr": 0.8, "bsr": 0.3})
    plan = plan_sparse_kernels(blocked, "auto", FAST)
    assert plan.counts() == {"bsr": 12} and plan.layers[0].block == (4, 4)
    assert plan.layers[0].timings == {"dense@16": 1.0, "csr@16": 0.8, "bsr4x4@16": 0.3}


def test_auto_runs_dense_above_the_token_count_where_sparse_stops_winning(unstructured, monkeypatch):
    model, module = unstructured
    ratios = iter([0.5, 1.2] * 100)  # wins at 16 rows, loses at 64
    monkeypatch.setattr(sparse_auto, "_median_ms", lambda v, r, b: {"dense": 1.0, "sparse": next(ratios)})
    sparse_exec.clear_memory_cache()
    plan = plan_sparse_kernels(module, "auto", AutoOptions(tokens=(64, 16), candidates=("csr",),
                                                           cache_dir=None))
    assert plan.counts() == {"csr": 12} and {c.max_tokens for c in plan.layers} == {16}
    assert plan.layers[0].reason == "vs dense at 16/64 rows: csr 0.50x/1.20x; dense above 16 rows"
    assert "csr <=16 rows" in plan.table()
    eager, scripted = to_eager(module, plan), to_torchscript(module, plan)
    assert "encoder_layer_0_attention_self_query_weight" in dict(eager.graph_module.named_buffers())
    names = [v.name for v in module.graph.inputs]
    with torch.no_grad():
        for batch, seq, path in ((3, 16, "dense"), (1, 8, "sparse")):  # 48 rows, 8 rows
            inputs = padded_inputs(model, module, batch, seq, 4)
            want = to_eager(module)(**inputs)["last_hidden_state"]
            for got in (eager(**inputs), scripted(*[inputs[n] for n in names])):
                diff = max_diff(got["last_hidden_state"], want)
                # the dense path is the same computation, bit for bit; the sparse one rounds apart
                assert (diff == 0.0) if path == "dense" else (0.0 < diff <= TOLERANCE), (path, diff)


def test_auto_skips_dense_weights_and_caches_measurements(monkeypatch, tmp_path):
    _, half = sparsified(sparsity=0.5, pattern="unstructured")
    calls = _stub_timings(monkeypatch, {"csr": 0.5, "bsr": 0.5})
    plan = plan_sparse_kernels(half, "auto", FAST)
    assert plan.counts() == {"dense": 12} and not calls  # 50% sparse: not worth measuring
    assert "not measured" in plan.layers[0].reason

    _, module = sparsified(sparsity=0.9, pattern="unstructured")
    options = AutoOptions(tokens=(16,), rounds=1, block=1, candidates=("csr",), cache_dir=tmp_path)
    plan_sparse_kernels(module, "auto", options)
    # three distinct (shape, density) keys: q/k/v/out 64x64, up 128x64, down 64x128
    assert len(calls) == 3
    plan_sparse_kernels(module, "auto", options)
    assert len(calls) == 3  # memory cache
    sparse_exec.clear_memory_cache()
    again = plan_sparse_kernels(module, "auto", options)
    assert len(calls) == 3  # disk cache
    assert again.counts() == {"csr": 12}
    cache = json.loads((tmp_path / "sparse_kernels.json").read_text())
    assert {k.split("|")[0] for k in cache} == {"64x64", "128x64", "64x128"}
    assert all(f"threads={plan.threads}" in k for k in cache)
    torch.set_num_threads(1 if plan.threads > 1 else 2)
    try:
        plan_sparse_kernels(module, "auto", options)
        assert len(calls) == 6  # another thread count is another measurement
    finally:
        torch.set_num_threads(plan.threads)


def test_dense_and_unsparsified_modules_lower_as_before(unstructured):
    model, module = unstructured
    assert to_eager(module, "dense").sparse_plan is None
    plain = optc.capture(model)
    plan = plan_sparse_kernels(plain, "csr")
    assert plan.layers == () and "no sparse weights" in plan.table()
    eager = to_eager(plain, "csr")
    inputs = _inputs(model, plain)
    _agree(eager(**inputs), to_eager(plain)(**inputs))


def test_bad_kernel_and_foreign_plan_are_input_errors(unstructured, block):
    _, module = unstructured
    with pytest.raises(InputError, match="unknown sparse kernel 'cusparse'.*auto, dense, csr"):
        to_eager(module, "cusparse")
    with pytest.raises(InputError, match="auto margin"):
        AutoOptions(margin=1.5)
    _, other = sparsified(sparsity=0.9, pattern="unstructured", targets=("ffn",))
    plan = plan_sparse_kernels(module, "csr")
    with pytest.raises(InputError, match="plan the module you lower"):
        to_eager(other, SparsePlan("csr", 1, plan.layers[:1] + (
            sparse_exec.LayerChoice("nope", (2, 2), "unstructured", 0.1, "csr"),)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_semi_structured_is_a_clear_error_without_cuda():
    _, module = sparsified(pattern="2:4")
    with pytest.raises(BackendError, match="needs CUDA.*auto, csr or bsr"):
        to_eager(module, "semi-structured")
    with pytest.raises(BackendError, match="needs CUDA"):
        to_torchscript(module, "semi-structured")
    from optc.tools.cli.main import main

    # the CLI refuses before loading the model (which does not exist here)
    assert main(["/nonexistent/model", "--sparse-kernel", "semi-structured", "-q"]) == 6


def test_semi_structured_plan_and_lowering_with_a_stand_in_kernel(monkeypatch):
    """The plumbing without a GPU: only 2:4 weights are converted (others stay dense and say
    why), their nodes call the semi-structured kernel, the outputs match dense."""
    from optc.backends import eager as eager_backend

    model = tiny_model("bert")
    module = optc.capture(model)
    Sparsify(pattern="2:4", targets=("attention",)).run(module)
    Sparsify(sparsity=0.9, targets=("ffn",)).run(module)
    converted = []

    def stand_in(weight, device, name):
        converted.append((name, str(device)))
        return weight.to(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(eager_backend, "semi_structured_weight", stand_in)
    eager = to_eager(module, "semi-structured", device="cpu")
    plan = eager.sparse_plan
    assert plan.counts() == {"semi-structured": 8, "dense": 4}
    assert {c.reason for c in plan.layers if c.kernel == "dense"} == {"not 2:4: dense"}
    assert sorted(n for n, _ in converted) == sorted(c.param for c in plan.layers
                                                     if c.kernel == "semi-structured")
    assert {d for _, d in converted} == {"cpu"}
    buffers = dict(eager.graph_module.named_buffers())
    assert "encoder_layer_0_attention_self_query_weight_semi_structured" in buffers
    assert "encoder_layer_0_attention_self_query_weight" not in buffers  # no dense copy
    assert "encoder_layer_0_intermediate_dense_weight" in buffers  # unstructured: dense
    targets = [n.target for n in eager.graph_module.graph.nodes]
    assert targets.count(sparse_exec.semi_structured_linear) == 8
    inputs = _inputs(model, module)
    with torch.no_grad():
        _agree(eager(**inputs), to_eager(module)(**inputs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need CUDA")
def test_semi_structured_matches_dense_on_cuda():
    model, module = sparsified(pattern="2:4")
    _, unstructured = sparsified(sparsity=0.9, pattern="unstructured")
    with pytest.raises(BackendError, match="no.*2:4|none"):
        to_eager(unstructured, "semi-structured")
    inputs = _inputs(model, module)
    dense = to_eager(module)(**inputs)
    eager = to_eager(module, "semi-structured")
    assert eager.sparse_plan.counts() == {"semi-structured": 12}
    with torch.no_grad():
        got = eager(**{k: v.cuda() for k, v in inputs.items()})
    for name in dense:  # 2:4 tensor-core kernels may accumulate through TF32
        scale = max(1.0, dense[name].abs().max().item())
        assert max_diff(got[name].cpu(), dense[name]) <= 2e-2 * scale, name
    with pytest.warns(UserWarning, match="cannot script semi-structured"):
        scripted = to_torchscript(module, "semi-structured")
    assert "k_sparse_linear" not in scripted.code


def test_cli_sparse_kernel_flag(tmp_path, capsys):
    from optc.backends import load
    from optc.tools.cli.main import main

    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    spec = "sparsify{sparsity=0.9,pattern=unstructured}"
    out = tmp_path / "m.pt"
    assert main([str(tmp_path / "m"), f"--passes={spec}", "--backend", "torchscript",
                 "--sparse-kernel", "csr", "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "sparse kernels (csr" in printed and "csr 12" in printed
    extra = {PLAN_FILE: ""}
    assert "k_sparse_linear" in torch.jit.load(str(out), _extra_files=extra).code
    assert json.loads(extra[PLAN_FILE])["requested"] == "csr"
    art = tmp_path / "art"
    assert main([str(tmp_path / "m"), f"--passes={spec}", "--sparse-kernel", "bsr", "-o", str(art),
                 "-q"]) == 0
    loaded = load(art)
    assert loaded.sparse_plan.counts() == {"bsr": 12}
    assert load(art, sparse_kernel="dense").sparse_plan is None
    assert main([str(tmp_path / "m"), "--backend", "onnx", "--sparse-kernel", "csr", "-o",
                 str(tmp_path / "m.onnx"), "-q"]) == 2
    assert "--sparse-kernel chooses eager and TorchScript" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_sparse_then_int8_weights_keep_the_int8_kernel():
    from optc.passes import PassManager

    model = tiny_model("bert")
    module = optc.capture(model)
    PassManager("sparsify{sparsity=0.9},quantize{mode=dynamic,targets=ffn}").run(module)
    plan = plan_sparse_kernels(module, "csr")
    assert plan.counts() == {"csr": 8, "int8": 4}
    assert {c.param.split(".")[3] for c in plan.layers if c.kernel == "int8"} == {"intermediate", "output"}
    inputs = _inputs(model, module)
    names = [v.name for v in module.graph.inputs]
    with torch.no_grad():
        want = to_eager(module)(**inputs)
        _agree(to_eager(module, plan)(**inputs), want)
        _agree(to_torchscript(module, plan)(*[inputs[n] for n in names]), want)


def test_device_moves_weights_and_tensors_created_in_the_graph():
    """``to_eager(device=...)`` (what semi-structured uses for CUDA): the graph's own tensors
    (``arange(..., device=cpu)`` recorded at capture) follow the weights; meta stands in for
    CUDA here. The model is the GPU check's encoder (one layer)."""
    from optc.ir import print_module
    from optc.tools.checks.gpu_semi_structured import build, inputs

    module = build(torch.float32, 1)
    assert 'device=device("cpu")' in print_module(module)
    eager = to_eager(module, device="meta")
    devices = [n.kwargs["device"] for n in eager.graph_module.graph.nodes if "device" in n.kwargs]
    assert devices and set(devices) == {torch.device("meta")}
    assert {b.device.type for b in eager.graph_module.buffers()} == {"meta"}
    out = eager(**inputs(2, 16, "meta"))["output"]
    assert out.device.type == "meta" and out.shape == (2, 16, 384)
