"""Op conformance, generated from the registry: every sample of every built-in op
(:attr:`OpDef.samples`) parses, verifies, and runs the same on eager, TorchScript and ONNX with
random parameters and inputs. The eager kernel is the reference semantics; the TorchScript
source and the ONNX lowering are checked against it op by op, not only inside whole models."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.ir import parse_module, print_module
from optc.ir.ops import all_ops

_BUILTIN = {name: op for name, op in all_ops().items()
            if op.kernel.__module__.startswith("optc.ir.ops.")}
_CASES = [pytest.param(name, i, text, id=f"{name}-{i}")
          for name, op in sorted(_BUILTIN.items()) for i, text in enumerate(op.samples)]


def _random(dtype: torch.dtype, shape: tuple[int, ...], name: str, attrs: dict,
            gen: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        t = torch.rand(shape, generator=gen) > 0.2
        return t.index_fill(-1, torch.tensor([0]), True) if t.dim() else t
    if dtype == torch.uint8:
        return torch.randint(100, 156, shape, generator=gen, dtype=torch.uint8)
    if dtype == torch.int8:
        quant = attrs.get("quantization")
        top = 2 ** ((quant.bits if quant is not None else 8) - 1) - 1
        return torch.randint(-top, top + 1, shape, generator=gen, dtype=torch.int8)
    if not dtype.is_floating_point:
        return torch.randint(0, 4, shape, generator=gen, dtype=dtype)
    if name.endswith("scale"):
        return torch.rand(shape, generator=gen, dtype=dtype) * 0.02 + 0.01
    return torch.randn(shape, generator=gen, dtype=dtype)


def test_every_builtin_op_has_samples_that_use_it():
    assert set(_BUILTIN) >= {"linear", "attention", "embedding", "layer_norm", "gelu", "rotary"}
    for name, op in _BUILTIN.items():
        assert op.samples, f"op {name} has no samples (OpDef.samples)"
        for text in op.samples:
            assert any(node.op == name for node in parse_module(text).graph), (name, text)


@pytest.mark.parametrize("name,index,text", _CASES)
def test_op_sample_runs_the_same_on_every_backend(name, index, text):
    gen = torch.Generator().manual_seed(index)
    module = parse_module(text)
    for param in module.params.values():
        param.data = _random(param.data.dtype, tuple(param.data.shape), param.name, param.attrs,
                             gen)
    optc.verify(module)
    assert parse_module(print_module(module), {n: p.data for n, p in module.params.items()})
    inputs = {v.name: _random(v.tensor_type.dtype, tuple(int(d) for d in v.tensor_type.shape),
                              v.name, {}, gen) for v in module.graph.inputs}
    report = check_backends(module, inputs, backends=("eager", "torchscript", "onnx"))
    assert set(report.diffs) == {"torchscript", "onnx"}


def test_analysis_and_pictures_read_op_traits_not_names():
    from optc.ir.ops import ops_with

    assert set(ops_with("ffn-activation")) == {"gelu", "relu", "silu"}
    assert "tanh" in ops_with("activation") and "tanh" not in ops_with("ffn-activation")
    assert set(ops_with("norm")) == {"layer_norm", "rms_norm"}
    assert ops_with("projection") == ("linear",) and ops_with("attention") == ("attention",)
    for name, op in _BUILTIN.items():
        assert op.traits, f"op {name} declares no traits"
