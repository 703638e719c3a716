"""quantize: int8 weights and scales as IR objects, the kernel's arithmetic, refusals,
composition with the structural passes and sparsify on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import optc
from optc.backends.differential import check_backends, run_backend
from optc.errors import PipelineSpecError, VerificationError
from optc.ir import collect_problems, parse_module, print_module
from optc.ir.attributes import Quantization
from optc.ir.ops.quantized_linear import int8_linear, quantize_weight
from optc.passes import PassManager, parse_pipeline
from optc.tests.conftest import assert_refused_unchanged

QUERY = "encoder.layer.0.attention.self.query.weight"


def _reference_int8_linear(x, q, scale, bias):
    """ONNX Runtime's DynamicQuantizeLinear + integer matmul, written in float64."""
    x = x.double()
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    s = (hi - lo) / 255 or 1.0
    zp = min(max(round(-lo / s), 0), 255)
    xq = (torch.round(x / s) + zp).clamp(0, 255) - zp
    return (xq @ q.double().t()) * s * scale.double() + bias.double()


def test_quantize_weight_is_per_channel_symmetric() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    w[2] = 0.0
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    assert q.abs().amax(1).tolist() == [127, 127, 0, 127, 127, 127]
    assert scale[2] == 1.0
    assert torch.allclose(q.float() * scale[:, None], w, atol=scale.max().item() / 2)


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 5, 16), (7, 16)])
def test_int8_kernel_computes_onnx_runtimes_integers(shape) -> None:
    torch.manual_seed(1)
    x, w, b = torch.randn(shape) * 3, torch.randn(8, 16), torch.randn(8)
    q, scale = quantize_weight(w)
    got = int8_linear(x, q, scale, b)
    expected = _reference_int8_linear(x.reshape(-1, 16), q, scale, b).reshape(*shape[:-1], 8)
    assert got.shape == expected.shape
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)
    dense = F.linear(x, w, b)
    assert (got - dense).abs().max() < 0.02 * dense.abs().max()  # int8 rounding only


def test_pass_writes_int8_weights_scales_and_attributes(bert) -> None:
    model, base, inputs = bert
    module = base.clone()
    report = PassManager("quantize").run(module)
    stats = report.records[0].stats
    assert report.records[0].modified and stats["linears"] == 12
    w = module.params[QUERY]
    assert w.data.dtype == torch.int8
    assert w.attrs["quantization"] == Quantization("symmetric", 7, axis=0)
    assert int(w.data.abs().max()) == 63
    node = next(n for n in module.graph if n.op == "linear" and n.args[1] is w)
    assert node.args[3].name == QUERY + "_scale" and node.args[3].data.shape == (64,)
    assert "pooler.dense.weight" in module.params and module.params["pooler.dense.weight"].data.dtype == torch.float32
    text = print_module(module)
    assert f"param @{QUERY} : i8[64,64]" in text and 'quantization=quantization(scheme="symmetric", bits=7, axis=0)' in text
    weights = {k: p.data for k, p in module.params.items()}
    assert print_module(parse_module(text, weights)) == text
    assert not collect_problems(module)
    ref = run_backend(base, "eager", inputs)["last_hidden_state"]
    got = run_backend(module, "eager", inputs)["last_hidden_state"]
    cos = F.cosine_similarity(got.flatten(1), ref.flatten(1)).min().item()
    assert cos > 0.995


def test_eight_bit_weights_and_the_verifier_checks_the_range(bert) -> None:
    module = bert[1].clone()
    PassManager("quantize{bits=8,targets=query}").run(module)
    w = module.params[QUERY]
    assert int(w.data.abs().max()) == 127 and w.attrs["quantization"].bits == 8
    w.attrs["quantization"] = Quantization("symmetric", 7, axis=0)
    with pytest.raises(VerificationError, match="outside the 7-bit symmetric range"):
        optc.verify(module)


def test_verifier_rejects_a_scale_that_does_not_match(bert) -> None:
    module = bert[1].clone()
    PassManager("quantize{targets=query}").run(module)
    scale = module.params[QUERY + "_scale"]
    scale.data = scale.data[:10]
    with pytest.raises(VerificationError, match="weight_scale"):
        optc.verify(module)


def test_sparsity_survives_quantization(bert) -> None:
    module = bert[1].clone()
    PassManager("sparsify{pattern=2:4},quantize").run(module)
    w = module.params[QUERY]
    assert w.data.dtype == torch.int8 and set(w.attrs) == {"sparsity", "quantization"}
    assert ((w.data.reshape(-1, 4) != 0).sum(1) <= 2).all()
    assert not collect_problems(module)


def test_refusals_leave_the_ir_unchanged(bert) -> None:
    module = bert[1].clone()
    PassManager("quantize{targets=ffn}").run(module)
    assert_refused_unchanged(module, "quantize", "is already quantized (int8): quantize runs once")
    assert_refused_unchanged(module, "sparsify{sparsity=0.5,targets=up}", "sparsify before quantize")


def test_bad_options_are_spec_errors() -> None:
    with pytest.raises(PipelineSpecError, match="choose one of dynamic"):
        parse_pipeline("quantize{mode=int4}")
    with pytest.raises(PipelineSpecError, match="unknown target 'conv'"):
        parse_pipeline("quantize{targets=conv}")
    with pytest.raises(PipelineSpecError, match="bits must be 7 or 8"):
        parse_pipeline("quantize{bits=4}")


def test_three_backends_agree_on_an_int8_model(bert) -> None:
    _, base, inputs = bert
    module = base.clone()
    PassManager("quantize{targets=attention,ffn,head}").run(module)
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= 1e-4


@pytest.mark.parametrize("spec", [
    "prune-heads{amount=0.25},prune-neurons{amount=0.25},sparsify{sparsity=0.5},quantize,dce",
    "prune-neurons{amount=0.5,per_layer=true},sparsify{pattern=2:4},quantize{targets=ffn},dce",
])
def test_composition_lowers_to_all_backends_which_agree(bert, spec) -> None:
    _, base, inputs = bert
    module = base.clone()
    PassManager(spec).run(module)
    assert any(p.data.dtype == torch.int8 for p in module.params.values())
    report = check_backends(module, inputs)
    assert max(report.diffs["onnx"].values()) <= 1e-4
