"""quantize{token_scales=...}: dynamic int8 linears with one activation scale per token (row):
the kernel's arithmetic, its accuracy on outlier rows, the pass and verifier, and the three
backends computing the same integers (ONNX: MatMulInteger with the zero-point correction)."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

from optc.backends.differential import check_backends
from optc.backends.int8_exec import packed_int8_nodes
from optc.backends.onnx import export_onnx
from optc.errors import PipelineSpecError
from optc.ir import collect_problems
from optc.ir.ops.quantized_linear import int8_linear, quantize_weight
from optc.passes import PassManager, parse_pipeline
from optc.passes.sparsify import linear_targets


def _reference_per_row(x, q, scale, bias):
    """DynamicQuantizeLinear's formula applied to each row of ``x`` alone, in float64."""
    rows = []
    for row in x.reshape(-1, x.shape[-1]).double():
        lo, hi = min(row.min().item(), 0.0), max(row.max().item(), 0.0)
        s = (hi - lo) / 255 or 1.0
        zp = min(max(round(-lo / s), 0), 255)
        rows.append(((torch.round(row / s) + zp).clamp(0, 255) - zp) * s)
    xq = torch.stack(rows)
    return ((xq @ q.double().t()) * scale.double() + bias.double()).reshape(
        *x.shape[:-1], q.shape[0])


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 5, 16), (7, 16)])
def test_kernel_quantizes_each_row_alone(shape) -> None:
    torch.manual_seed(1)
    x, w, b = torch.randn(shape) * 3, torch.randn(8, 16), torch.randn(8)
    q, scale = quantize_weight(w, bits=7)
    got = int8_linear(x, q, scale, b, act_scales="token")
    expected = _reference_per_row(x, q, scale, b)
    assert got.shape == expected.shape
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_one_outlier_token_no_longer_flattens_the_others() -> None:
    torch.manual_seed(2)
    x, w = torch.rand(2, 6, 64), torch.randn(32, 64)
    x[0, 0, 3] = 200.0  # one token with an outlier feature (as in GELU outputs of real models)
    q, scale = quantize_weight(w, bits=7)
    dense = F.linear(x, w)
    others = (slice(None), slice(1, None))  # every token but the outlier

    def error(kind: str) -> float:
        got = int8_linear(x, q, scale, act_scales=kind)
        return float((got - dense)[others].norm() / dense[others].norm())

    assert error("token") < 0.02 < 0.2 < error("tensor")


def test_pass_sets_token_scales_on_the_named_roles_only(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    report = PassManager("quantize{token_scales=down}").run(module)
    downs = {id(n) for _, _, n in linear_targets(module, ("down",))}
    linears = [n for n in module.graph if n.op == "linear" and n.arg(3) is not None]
    assert {id(n) for n in linears if n.attr("act_scales") == "token"} == downs
    assert report.records[0].stats["per_token"] == len(downs) > 0
    assert "token_scales=down" in report.records[0].spec
    assert not [n for n in packed_int8_nodes(module) if id(n) in downs]  # fbgemm: per tensor


def test_options_and_verifier_refuse_what_cannot_be_per_token(bert) -> None:
    with pytest.raises(PipelineSpecError, match="unknown token_scales role 'conv'"):
        parse_pipeline("quantize{token_scales=conv}")
    with pytest.raises(PipelineSpecError, match="token_scales is for mode=dynamic"):
        parse_pipeline("quantize{mode=static,token_scales=ffn}")
    _, base, _ = bert
    module = base.clone()
    node = next(n for n in module.graph if n.op == "linear")
    node.set_attr("act_scales", "token")  # a float linear
    assert any("act_scales='token' is for dynamic int8" in p for p in collect_problems(module))
    node.set_attr("act_scales", "channel")
    assert any("must be one of tensor, token" in p for p in collect_problems(module))


@pytest.mark.parametrize("spec", ["quantize{token_scales=ffn}",
                                  "quantize{token_scales=attention,ffn,bits=8}"])
def test_three_backends_compute_the_same_integers(bert, spec, tmp_path) -> None:
    _, base, inputs = bert
    module = base.clone()
    PassManager(spec).run(module)
    report = check_backends(module, inputs)
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= 1e-4
    ops = {n.op_type for n in onnx.load(str(export_onnx(module, tmp_path / "m.onnx"))).graph.node}
    assert "MatMulInteger" in ops
