"""The int8 self-check: an output beyond the int8 tolerance passes only when it is no further
from the unquantized module than the eager int8 IR is; ``dequantized`` gives that module."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends import onnx as onnx_backend
from optc.backends.eager import to_eager
from optc.backends.selfcheck import check_written, example_inputs, write_checked
from optc.errors import BackendError
from optc.ir import collect_problems
from optc.ir.dequantize import dequantized, is_quantized
from optc.passes import PassManager
from optc.tests.conftest import tiny_model


@pytest.fixture(scope="module")
def modules():
    """(float module, its int8 form with int8 tables, per-token FFN and int8 matmuls)."""
    base = optc.capture(tiny_model("bert"), source={"model": "tiny-bert"})
    quantized = base.clone()
    PassManager("quantize{token_scales=ffn},quantize{targets=matmuls}").run(quantized)
    return base, quantized


def test_dequantized_is_the_float_module_with_the_rounded_weights(modules):
    base, quantized = modules
    assert is_quantized(quantized) and not is_quantized(base)
    floating = dequantized(quantized)
    assert not collect_problems(floating)
    used = {id(a) for n in floating.graph for a in n.inputs}
    assert not [p for p in floating.params.values() if p.data.dtype == torch.int8 and id(p) in used]
    assert not [n for n in floating.graph if n.attr("act_scales") or n.attr("int8")]
    assert is_quantized(quantized)  # the input is not changed
    feed = example_inputs(base)[1]
    with torch.inference_mode():
        want = to_eager(base)(**feed)["last_hidden_state"]
        rounded = to_eager(floating)(**feed)["last_hidden_state"]
        int8 = to_eager(quantized)(**feed)["last_hidden_state"]
    assert (rounded - want).abs().max() > 0  # the weights are the rounded ones ...
    assert (rounded - int8).abs().max() < 0.05 * int8.abs().max()  # ... activations are not
    q_node = next(n for n in quantized.graph if n.op == "linear" and n.arg(3) is not None)
    f_node = next(n for n in floating.graph if n.outputs[0].name == q_node.outputs[0].name)
    assert torch.equal(f_node.arg(1).data, q_node.arg(1).data.float() * q_node.arg(3).data[:, None])


def _noisy_lowering(monkeypatch, amount: float):
    """The ONNX lowering with the FFN down projections' weight scales off by ``amount``
    (relative)."""
    original = onnx_backend.lower_for_onnx

    def noisy(module):
        lowered, translations = original(module)
        names = [n for n in lowered.params if n.endswith("output.dense.weight_scale")]
        assert names
        for name in names:
            lowered.params[name].data = lowered.params[name].data * (1 + amount)
        return lowered, translations

    monkeypatch.setattr(onnx_backend, "lower_for_onnx", noisy)


def test_a_lowering_fault_in_an_int8_model_is_still_caught(modules, tmp_path, monkeypatch):
    _, quantized = modules
    _noisy_lowering(monkeypatch, 5.0)  # FFN outputs x6: a fault, not rounding
    with pytest.raises(BackendError, match="from the unquantized model where the eager int8 IR "
                                           r"is .* \(relative L2; allowed 1.5x\)"):
        write_checked(quantized, "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_an_int8_output_within_the_rounding_noise_passes(modules, tmp_path, monkeypatch):
    _, quantized = modules
    # with no tolerance at all, only the noise rule lets the (correct) ONNX file through
    monkeypatch.setattr("optc.backends.selfcheck.INT8_TOLERANCES", {"onnx": 0.0})
    assert write_checked(quantized, "onnx", tmp_path / "ok.onnx") is not None
    assert (tmp_path / "ok.onnx").exists()
    # a caller's explicit tolerance is a bound: no noise rule then
    with pytest.raises(BackendError, match="tolerance 0\\)"):
        check_written(quantized, "onnx", tmp_path / "ok.onnx", tolerance=0.0)
