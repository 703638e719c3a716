"""Dynamic int8 q/k/v linears of one input lower to ONNX Runtime's QAttention (one
DynamicQuantizeLinear, packed int8 weights with per-column scales), computing eager's integers;
every case the new path does not cover keeps its old lowering."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import optc
from optc.backends.differential import check_backends
from optc.backends.onnx import OnnxModule, export_onnx, session_options
from optc.ir import parse_module
from optc.passes import PassManager

MSFT = "com.microsoft"


@pytest.fixture(scope="module")
def bert():
    from optc.tests.frontends.hf_cases import captured

    return captured("bert")


def _inputs(model, batch: int = 3, seq: int = 7) -> dict[str, torch.Tensor]:
    """Random ids, padding at the end of every other row."""
    from optc.tests.conftest import token_inputs

    inputs = token_inputs(model, batch, seq)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    return inputs


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((n.domain or "", n.op_type) for n in model.graph.node)


def _quantized(base: optc.Module, spec: str = "quantize") -> optc.Module:
    module = base.clone()
    PassManager(spec).run(module)
    return module


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_int8_qkv_of_one_input_become_one_qattention_per_layer(bert, tmp_path: Path) -> None:
    module = _quantized(bert[1])
    model = onnx.load(str(export_onnx(module, tmp_path / "q.onnx")))
    ops = _ops(model)
    assert ops[(MSFT, "QAttention")] == 2
    assert ops[("", "DynamicQuantizeLinear")] == 2  # the layer input is quantized once
    assert ops[(MSFT, "MultiHeadAttention")] == 0 and ops[(MSFT, "Attention")] == 0
    assert ops[(MSFT, "DynamicQuantizeMatMul")] == 6  # output, up and down of two layers
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QAttention")
    attrs = _attrs(node)
    assert attrs["num_heads"] == 4 and attrs["unidirectional"] == 0
    assert attrs["scale"] == pytest.approx(0.25)
    assert attrs["mask_filter_value"] == torch.finfo(torch.float32).min
    names = [f"encoder.layer.0.attention.self.{p}.weight" for p in ("query", "key", "value")]
    assert node.input[1] == "encoder_layer_0_attention_self_qkv_weight_int8"
    weight = torch.from_numpy(init[node.input[1]].copy())
    assert weight.dtype == torch.int8
    assert torch.equal(weight, torch.cat([module.params[n].data for n in names], 0).t())
    assert torch.equal(torch.from_numpy(init[node.input[4]].copy()),
                       torch.cat([module.params[n + "_scale"].data for n in names]))
    assert torch.equal(torch.from_numpy(init[node.input[2]].copy()),
                       torch.cat([module.params[n[:-len("weight")] + "bias"].data for n in names]))
    assert not any("query_weight_t" in name for name in init)  # the unpacked ones are gone


def test_qattention_equals_eager_int8_with_padding(bert, tmp_path: Path) -> None:
    model, base = bert
    module = _quantized(base)
    runner = OnnxModule(export_onnx(module, tmp_path / "q.onnx"))
    eager = optc.to_eager(module)
    cases = [_inputs(model, b, s) for b, s in ((1, 5), (3, 7), (2, 31))]
    empty = _inputs(model, 2, 6)
    empty["attention_mask"][1] = 0  # a row with no key: zeros in torch, so in ONNX
    for inputs in [*cases, empty]:
        ref, got = eager(**inputs), runner(**inputs)
        for name in ref:
            assert (got[name] - ref[name]).abs().max() <= 1e-4, name


def test_three_backends_agree(bert) -> None:
    model, base = bert
    module = _quantized(base, "sparsify{sparsity=0.5},quantize")
    report = check_backends(module, _inputs(model, 3, 9))
    assert max(report.diffs["onnx"].values()) <= 1e-4
    assert max(report.diffs["torchscript"].values()) <= 1e-5


def test_qattention_survives_onnx_runtime_optimizations(bert, tmp_path: Path) -> None:
    path = export_onnx(_quantized(bert[1]), tmp_path / "q.onnx")
    opts = session_options()
    opts.optimized_model_filepath = str(tmp_path / "q.opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = _ops(onnx.load(opts.optimized_model_filepath))
    assert ops[(MSFT, "QAttention")] == 2 and ops[(MSFT, "MultiHeadAttention")] == 0


@pytest.mark.parametrize(("spec", "op"), [
    ("quantize{targets=ffn}", (MSFT, "Attention")),  # float q/k/v: the packed fp32 Attention
    ("quantize{targets=query,key,output,ffn}", (MSFT, "MultiHeadAttention")),  # value in f32
    ("quantize{targets=attention,ffn,matmuls}", ("", "MatMulInteger")),  # int8 attention matmuls
])
def test_other_projections_keep_their_lowering(bert, tmp_path: Path, spec, op) -> None:
    model, base = bert
    module = _quantized(base, spec)
    path = export_onnx(module, tmp_path / "m.onnx")
    ops = _ops(onnx.load(str(path)))
    assert ops[(MSFT, "QAttention")] == 0 and ops[op] >= 2
    inputs = _inputs(model)
    got, ref = OnnxModule(path)(**inputs), optc.to_eager(module)(**inputs)
    assert (got["last_hidden_state"] - ref["last_hidden_state"]).abs().max() <= 1e-3


# -- hand-written layers: causal, additive masks, static int8, a projection read twice --------
def _layer(mask: str = "bool[batch,1,seq,seq]", causal: bool = False, static: bool = False,
           extra_use: bool = False) -> optc.Module:
    """q, k, v: int8 linears (7-bit weights, per-channel scales) of %x; v without a bias."""
    gen = torch.Generator().manual_seed(0)
    weights: dict[str, torch.Tensor] = {}
    params = []
    for p in ("q", "k", "v"):
        weights[f"{p}.weight"] = torch.randint(-63, 64, (16, 12), generator=gen, dtype=torch.int8)
        weights[f"{p}.weight_scale"] = torch.rand(16, generator=gen) * 0.02 + 0.005
        params += [f"param @{p}.weight : i8[16,12] "
                   "{quantization=quantization(scheme=\"symmetric\", bits=7, axis=0)}",
                   f"param @{p}.weight_scale : f32[16]"]
        if p != "v":
            weights[f"{p}.bias"] = torch.randn(16, generator=gen) * 0.1
            params.append(f"param @{p}.bias : f32[16]")
        if static:
            weights[f"{p}.input_scale"] = torch.tensor(0.02)
            weights[f"{p}.input_zero_point"] = torch.tensor(128, dtype=torch.uint8)
            params += [f"param @{p}.input_scale : f32[]", f"param @{p}.input_zero_point : u8[]"]

    def linear(p: str) -> str:
        bias = f"@{p}.bias" if p != "v" else "none"
        args = f"%x, @{p}.weight, {bias}, @{p}.weight_scale"
        if static:
            args += f", @{p}.input_scale, @{p}.input_zero_point"
        return f"%{p} : f32[batch,seq,16] = linear({args})"

    mask_in = f", %mask : {mask}" if mask else ""
    mask_arg = ", %mask" if mask else ""
    outputs = "out=%a, q=%q" if extra_use else "out=%a"
    lines = "\n".join(f"  {p}" for p in params)
    return parse_module(f"""module @layer {{
  dim batch = [1, 8]
  dim seq = [1, 32]
{lines}
  graph(%x : f32[batch,seq,12]{mask_in}) {{
    {linear("q")}
    {linear("k")}
    {linear("v")}
    %a : f32[batch,seq,16] = attention(%q, %k, %v{mask_arg}, num_heads=2, head_dim=8, causal={str(causal).lower()})
    return ({outputs})
  }}
}}""", weights)


def _layer_inputs(mask: str | None, batch: int = 3, seq: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    inputs = {"x": torch.randn(batch, seq, 12, generator=gen)}
    if mask:
        keep = torch.ones(batch, 1, 1, seq, dtype=torch.bool)
        keep[1, ..., 4:] = False
        keep[2, ..., 2:] = False
        keep = keep.expand(batch, 1, seq, seq).clone() if "seq,seq" in mask else keep
        inputs["mask"] = keep if mask.startswith("bool") else torch.where(keep, 0.0, -1e4)
    return inputs


@pytest.mark.parametrize(("mask", "causal"), [
    ("bool[batch,1,seq,seq]", False), ("bool[batch,1,seq,seq]", True),
    ("bool[batch,1,1,seq]", False), ("", True), ("", False),
])
def test_masks_and_causal_in_qattention(tmp_path: Path, mask: str, causal: bool) -> None:
    module = _layer(mask, causal)
    path = export_onnx(module, tmp_path / "l.onnx")
    node = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "QAttention")
    assert _attrs(node)["unidirectional"] == int(causal)
    assert (node.input[5] != "") == bool(mask)  # mask_index
    inputs = _layer_inputs(mask)
    got, ref = OnnxModule(path)(**inputs)["out"], optc.to_eager(module)(**inputs)["out"]
    assert (got - ref).abs().max() <= 1e-4


@pytest.mark.parametrize(("kwargs", "op"), [
    ({"mask": "f32[batch,1,1,seq]"}, (MSFT, "MultiHeadAttention")),  # additive mask
    ({"static": True}, ("", "QuantizeLinear")),  # calibrated activation scales: QDQ
    ({"extra_use": True}, (MSFT, "MultiHeadAttention")),  # q is also an output
])
def test_layers_qattention_cannot_take_keep_the_old_path(tmp_path: Path, kwargs, op) -> None:
    module = _layer(**kwargs)
    before = optc.ir.print_module(module)
    path = export_onnx(module, tmp_path / "l.onnx")
    assert optc.ir.print_module(module) == before  # the export lowers a copy
    ops = _ops(onnx.load(str(path)))
    assert ops[(MSFT, "QAttention")] == 0 and ops[op] >= 1
    inputs = _layer_inputs(kwargs.get("mask", "bool[batch,1,seq,seq]"))
    got, ref = OnnxModule(path)(**inputs)["out"], optc.to_eager(module)(**inputs)["out"]
    assert (got - ref).abs().max() <= 1e-3
