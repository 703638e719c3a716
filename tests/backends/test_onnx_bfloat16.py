"""Values a float32 model computes in bfloat16 inside its graph (Falcon builds its ALiBi slopes
so) are emulated in the ONNX lowering: float32 rounded to bfloat16 after each op, the numbers
eager computes. bfloat16 weights, inputs and outputs stay refused
(test_lowering_regressions.py)."""

from __future__ import annotations

import onnx
import torch
from torch import nn

import optc
from optc.backends.differential import run_backend
from optc.backends.onnx import export_onnx


class _RoundsThroughBfloat16(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slopes = torch.arange(1, x.shape[-1] + 1, dtype=torch.bfloat16) / 3
        scaled = x.to(torch.bfloat16) * slopes
        return x + scaled.float()


def test_internal_bfloat16_values_export_with_eager_numbers(tmp_path):
    model = _RoundsThroughBfloat16().eval()
    x = torch.randn(2, 5, 8) * 10
    module = optc.capture(model, (x,))
    assert any(getattr(o.type, "dtype", None) == torch.bfloat16
               for n in module.graph for o in n.outputs)
    want = model(x)
    eager = run_backend(module, "eager", {"input_0": x})
    got = run_backend(module, "onnx", {"input_0": x})
    (name,) = got
    assert torch.equal(eager[name], want)
    assert torch.equal(got[name], want)  # bit for bit: rounded as torch rounds
    export_onnx(module, tmp_path / "m.onnx")
    casts = [n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type == "Cast"]
    assert any(a.i == onnx.TensorProto.BFLOAT16 for n in casts for a in n.attribute)


def test_falcon_alibi_lowers_to_onnx():
    from optc.tools.checks.coverage import _inputs, _model

    model = _model("Falcon (ALiBi)")
    inputs = _inputs(model)
    module = optc.capture(model)
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
    got = run_backend(module, "onnx", inputs)["last_hidden_state"]
    assert (got - want).abs().max().item() < 1e-5
