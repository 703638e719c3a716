"""quantize{targets=...,matmuls}: int8 attention matmuls (Q·Kᵀ, P·V) as an attention attribute,
the kernel's integer arithmetic, all three backends, composition and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import optc
from optc.backends.differential import check_backends, run_backend
from optc.backends.selfcheck import INT8_TOLERANCES, tolerance_for
from optc.errors import PipelineSpecError, VerificationError
from optc.ir import collect_problems, parse_module, print_module
from optc.ir.ops.quantized_attention import dynamic_quantize, int8_attention, int8_matmul
from optc.passes import PassManager, parse_pipeline
from optc.tests.conftest import assert_refused_unchanged, padded_inputs, token_inputs
from optc.tests.frontends.hf_cases import captured
from optc.tests.frontends.llm_cases import llm_captured, llm_inputs
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer

ONNX_TOL = 1e-3
"""int8 attention, ONNX vs eager: the same integers; ORT's softmax/GELU round differently by
ulps, which can move one value across an int8 step (measured 7e-7 on the tiny BERT)."""


def _attention_nodes(module):
    return [n for n in module.graph if n.op == "attention"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double()).min().item()


# -- the kernel ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 16), (6, 9, 4)])
def test_int8_matmul_is_the_exact_integer_product(shape) -> None:
    gen = torch.Generator().manual_seed(0)
    *lead, m, k = shape
    a = torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (*lead, k, 11), dtype=torch.int8, generator=gen)
    za, zb = torch.tensor(37.0), torch.tensor(255.0)
    got = int8_matmul(a, za, b, zb)
    expected = (a.long() + 128 - 37) @ (b.long() + 128 - 255)
    assert got.dtype == torch.int32 and torch.equal(got.long(), expected)


def test_dynamic_quantize_is_onnx_dynamic_quantize_linear() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = torch.randn(3, 40) * 2 + 0.5
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 40])],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT),
                                ("z", TensorProto.UINT8))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    y, s, z = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x.numpy()})
    q, scale, zp = dynamic_quantize(x)
    assert torch.equal(q.long() + 128, torch.from_numpy(y).long())
    assert scale.item() == s.item() and zp.item() == z.item()


def _reference(q, k, v, mask, heads, dim):
    """Quantize, then the integer products and float steps, all in float64."""
    def deq(x):
        xq, s, z = dynamic_quantize(x)
        return (xq.double() + 128 - z.double()), s.double()

    b, n = q.shape[0], q.shape[1]
    qi, qs = deq(q)
    ki, ks = deq(k)
    vi, vs = deq(v)
    split = lambda t: t.view(b, -1, heads, dim).transpose(1, 2)  # noqa: E731
    scores = (split(qi) @ split(ki).transpose(-1, -2)) * (qs * ks).float().double() / math.sqrt(dim)
    scores = scores.masked_fill(~mask, -1e30)
    pi, ps = deq(torch.softmax(scores.float(), -1))
    out = (pi @ split(vi)) * ps * vs
    return out.transpose(1, 2).reshape(b, n, heads * dim)


def test_kernel_matches_a_float64_reference_and_the_float_attention() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 9, 4 * 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    got = int8_attention(q, k, v, mask, num_heads=4, head_dim=8, scale=None, causal=False,
                         kv_index=None)
    assert torch.allclose(got.double(), _reference(q, k, v, mask, 4, 8), atol=1e-5)
    dense = optc.ir.ops.attention.attention(q, k, v, mask, num_heads=4, head_dim=8)
    assert _cosine(got, dense) > 0.99
    assert (got - dense).abs().max() < 0.05 * dense.abs().max()


# -- the pass and the IR ------------------------------------------------------------------------
def test_matmuls_target_sets_the_attribute_which_prints_parses_and_verifies() -> None:
    model, base = captured("bert")
    inputs = token_inputs(model, 3, 7)
    module = base.clone()
    report = PassManager("quantize{targets=matmuls}").run(module)
    record = report.records[0]
    assert record.modified and record.stats["attention_matmuls"] == 2
    assert record.stats["linears"] == 0
    assert all(p.data.dtype != torch.int8 for p in module.params.values())  # linears untouched
    assert [n.attr("int8") for n in _attention_nodes(module)] == ["dynamic", "dynamic"]
    text = print_module(module)
    assert text.count('int8="dynamic"') == 2
    assert print_module(parse_module(text, {k: p.data for k, p in module.params.items()})) == text
    assert not collect_problems(module)
    ref = run_backend(base, "eager", inputs)["last_hidden_state"]
    got = run_backend(module, "eager", inputs)["last_hidden_state"]
    assert _cosine(got, ref) > 0.99 and not torch.equal(got, ref)
    assert_refused_unchanged(module, "quantize{targets=matmuls}", "already has int8 matmuls")
    assert tolerance_for(module, "onnx") == INT8_TOLERANCES["onnx"]


def test_verifier_rejects_int8_where_it_makes_no_sense() -> None:
    module = captured("bert")[1].clone()
    node = _attention_nodes(module)[0]
    node.set_attr("int8", "int4")
    with pytest.raises(VerificationError, match="is not a mode"):
        optc.verify(module)
    node.set_attr("int8", "static")
    with pytest.raises(VerificationError, match=r"needs operands int8_scale: f32\[3\]"):
        optc.verify(module)
    node.set_attr("int8", "dynamic")
    node.set_attr("kind", "topk")
    node.set_attr("topk", 2)
    with pytest.raises(VerificationError, match=r"hard attention \(kind=topk\) is not supported"):
        optc.verify(module)
    text = print_module(module)
    with pytest.raises(VerificationError, match="kind=topk"):
        optc.verify(parse_module(text, {k: p.data for k, p in module.params.items()}))


def test_refusals_and_bad_options() -> None:
    # a module without an attention op: typed error, IR unchanged
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    plain = optc.capture(mlp.eval(), example_inputs=(torch.randn(2, 8),))
    assert not _attention_nodes(plain)
    assert_refused_unchanged(plain, "quantize{targets=matmuls}",
                             "quantizes the matmuls of attention ops, and this module has none")
    # hard attention keeps its float matmuls
    hard = captured("bert")[1].clone()
    PassManager("hard-attention{k=2}").run(hard)
    assert_refused_unchanged(hard, "quantize{targets=attention,matmuls}", "is hard attention")
    assert not any(p.data.dtype == torch.int8 for p in hard.params.values())
    # ... and the other order: hard attention after int8 matmuls refuses, naming the fix
    int8 = captured("bert")[1].clone()
    PassManager("quantize{targets=matmuls}").run(int8)
    assert_refused_unchanged(int8, "hard-attention{k=2}", "run hard-attention before quantize")
    with pytest.raises(PipelineSpecError, match=r"add a second quantize\{targets=matmuls\}"):
        parse_pipeline("quantize{mode=qat,targets=attention,matmuls}")
    with pytest.raises(PipelineSpecError, match="without max_drop"):
        parse_pipeline("quantize{max_drop=1,targets=matmuls}")
    with pytest.raises(PipelineSpecError, match="choose from .*matmuls"):
        parse_pipeline("quantize{targets=matmul}")


# -- backends -----------------------------------------------------------------------------------
def test_three_backends_agree_and_onnx_runs_integer_matmuls(tmp_path) -> None:
    import onnx

    from optc.backends.onnx import OnnxModule, export_onnx

    model, base = captured("bert", "sequence-classification")
    module = base.clone()
    stats = PassManager("quantize{targets=attention,ffn,matmuls}").run(module).records[0].stats
    assert stats["linears"] == 12 and stats["attention_matmuls"] == 2
    inputs = token_inputs(model, 4, 9)
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL
    path = export_onnx(module, tmp_path / "model.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == 4 and ops.count("DynamicQuantizeLinear") >= 8
    assert "Attention" not in ops and "MultiHeadAttention" not in ops
    runner = OnnxModule(path)
    for batch, seq in ((1, 5), (3, 31)):  # one file, dynamic batch and sequence, padding kept
        x = padded_inputs(model, module, batch, seq, seed=seq)
        eager = run_backend(module, "eager", x)["logits"]
        got = runner(**{n: x[n] for n in runner.input_names})["logits"]
        assert (got - eager).abs().max() <= ONNX_TOL
        fp32 = run_backend(base, "eager", x)["logits"]
        assert _cosine(eager, fp32) > 0.99
        assert torch.equal(eager.argmax(-1), fp32.argmax(-1))


def test_causal_gpt2_on_every_backend() -> None:
    model, base = captured("gpt2")
    module = base.clone()
    PassManager("quantize{targets=matmuls}").run(module)
    assert all(n.attr("causal") or n.arg(3) is not None for n in _attention_nodes(module))
    inputs = token_inputs(model, 3, 7)
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL
    ref = run_backend(base, "eager", inputs)["last_hidden_state"]
    got = run_backend(module, "eager", inputs)["last_hidden_state"]
    assert _cosine(got, ref) > 0.99


def test_grouped_query_attention_on_every_backend() -> None:
    model, base = llm_captured("llama")
    module = base.clone()
    PassManager("quantize{targets=matmuls}").run(module)
    node = _attention_nodes(module)[0]
    assert node.attr("num_kv_heads") == 2 and node.attr("num_heads") == 4
    inputs = llm_inputs(model)
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL
    name = next(iter(module.graph.outputs))
    ref = run_backend(base, "eager", inputs)[name]
    assert _cosine(run_backend(module, "eager", inputs)[name], ref) > 0.99


@pytest.mark.parametrize("spec", [
    "prune-heads{amount=0.25},quantize{targets=attention,ffn,matmuls},dce",
    "quantize{targets=attention,ffn,matmuls},prune-heads{amount=0.5},dce",
    "quantize{targets=ffn},quantize{targets=matmuls},prune-neurons{amount=0.25},dce",
])
def test_composition_with_pruning_lowers_to_all_backends(spec) -> None:
    model, base = captured("bert")
    module = base.clone()
    PassManager(spec).run(module)
    nodes = _attention_nodes(module)
    assert nodes and all(n.attr("int8") == "dynamic" for n in nodes)
    if "prune-heads" in spec:
        assert sum(n.attr("num_heads") for n in nodes) < 8
    assert any(p.data.dtype == torch.int8 for p in module.params.values())
    report = check_backends(module, token_inputs(model, 3, 7))
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL


# -- static -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """(model, fp32 module, static int8 module with int8 attention matmuls, inputs)."""
    root = tmp_path_factory.mktemp("qattn")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    model, base = tiny_bert(layers=2)
    base.meta["source"]["tokenizer"] = str(root / "tok")
    module = base.clone()
    record = PassManager(f"quantize{{mode=static,data={root / 'task'},targets=attention,ffn,"
                         "matmuls}").run(module).records[0]
    assert record.stats["attention_matmuls"] == 2 and record.stats["linears"] > 0
    return model, base, module, token_inputs(model, 3, 9)


def test_static_matmuls_are_calibrated_parameters_in_the_ir(calibrated) -> None:
    _, base, module, inputs = calibrated
    nodes = _attention_nodes(module)
    assert [n.attr("int8") for n in nodes] == ["static", "static"]
    scale, zp = nodes[0].args[4], nodes[0].args[5]
    assert scale.is_param and scale.name.endswith(".int8_scale") and scale.data.shape == (3,)
    assert zp.data.dtype == torch.uint8 and zp.data.shape == (3,)
    assert (scale.data > 0).all() and (scale.data < 1).all()
    text = print_module(module)
    assert text.count('int8="static"') == 2
    assert print_module(parse_module(text, {k: p.data for k, p in module.params.items()})) == text
    assert not collect_problems(module)
    ref = run_backend(base, "eager", inputs)["last_hidden_state"]
    assert _cosine(run_backend(module, "eager", inputs)["last_hidden_state"], ref) > 0.99
    # the verifier: wrong operand types, and static operands on a dynamic node
    broken = module.clone()
    node = _attention_nodes(broken)[0]
    node.set_attr("int8", "dynamic")
    with pytest.raises(VerificationError, match='set int8="static" or drop them'):
        optc.verify(broken)
    node.set_attr("int8", "static")
    node.args[4].data = node.args[4].data[:2]
    with pytest.raises(VerificationError, match=r"int8_scale: f32\[3\] .*, got f32\[2\]"):
        optc.verify(broken)


def test_static_kernel_uses_the_calibrated_ranges_and_backends_agree(calibrated, tmp_path) -> None:
    from optc.ir.ops.quantized_attention import P_SCALE

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 5, 8) for _ in range(3))
    scales, zps = torch.tensor([0.02, 0.03, 0.04]), torch.tensor([128, 100, 140], dtype=torch.uint8)
    got = int8_attention(q, k, v, None, num_heads=2, head_dim=4, scale=None, causal=False,
                         kv_index=None, scales=scales, zero_points=zps)

    def deq(x, s, z):
        return (torch.round(x / s) + z).clamp(0, 255).double() - z

    split = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    scores = (split(deq(q, scales[0], 128)) @ split(deq(k, scales[1], 100)).transpose(-1, -2))
    probs = torch.softmax((scores * float(scales[0] * scales[1] * 0.5)).float(), -1)
    p = torch.round(probs / torch.tensor(P_SCALE)).clamp(0, 255).double()
    out = (p @ split(deq(v, scales[2], 140))) * float(torch.tensor(P_SCALE) * scales[2])
    assert torch.allclose(got.double(), out.transpose(1, 2).reshape(2, 5, 8), atol=1e-5)
    _, _, module, inputs = calibrated
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL
    import onnx

    from optc.backends.onnx import export_onnx

    ops = [n.op_type for n in onnx.load(str(export_onnx(module, tmp_path / "s.onnx"))).graph.node]
    assert ops.count("MatMulInteger") == 4 and "DynamicQuantizeLinear" not in ops
    assert ops.count("QuantizeLinear") >= 8  # Q, K, V, P of each layer (+ the linears' QDQ)


def test_static_matmuls_survive_an_artifact_and_head_pruning(calibrated, tmp_path) -> None:
    from optc.artifacts import load_module

    model, _, module, inputs = calibrated
    loaded = load_module(optc.save(module, tmp_path / "art"))
    assert print_module(loaded) == print_module(module)
    assert torch.equal(run_backend(loaded, "eager", inputs)["last_hidden_state"],
                       run_backend(module, "eager", inputs)["last_hidden_state"])
    pruned = module.clone()
    PassManager("prune-heads{amount=0.5},dce").run(pruned)
    nodes = _attention_nodes(pruned)
    assert [n.attr("num_heads") for n in nodes] == [2, 2]
    assert all(n.attr("int8") == "static" and n.args[4].data.shape == (3,) for n in nodes)
    report = check_backends(pruned, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= ONNX_TOL
