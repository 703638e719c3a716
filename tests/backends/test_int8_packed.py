"""Dynamic int8 linears on fbgemm's prepacked kernel (eager and TorchScript): which linears take
it, that it computes what the IR's portable kernel computes, and that TorchScript saves it."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends import int8_exec
from optc.backends.eager import build_graph_module
from optc.backends.int8_exec import packed_int8_linear, packed_int8_nodes, unpacked_weights
from optc.backends.torchscript import export_torchscript
from optc.passes import PassManager

pytestmark = pytest.mark.skipif(not int8_exec.available(), reason="this PyTorch has no fbgemm")


@pytest.fixture(scope="module")
def bert():
    from optc.tests.conftest import token_inputs
    from optc.tests.frontends.hf_cases import captured

    model, module = captured("bert")
    return module, token_inputs(model, 3, 7)


def _quantized(module, spec="quantize{mode=dynamic}"):
    m = module.clone()
    PassManager(spec).run(m)
    return m


def _int8_linears(module):
    return [n for n in module.graph if n.op == "linear" and n.arg(1).data.dtype == torch.int8]


def _packed_calls(eager):
    return [n for n in eager.graph_module.graph.nodes if n.target is packed_int8_linear]


def _run_portable(module, inputs):
    gm = build_graph_module(module)  # packed_int8=False: the IR's own kernel
    eager = optc.to_eager(module)
    args = [inputs.get(name, torch.zeros_like(inputs["input_ids"])) for name in eager.input_names]
    return gm(*args)


def test_every_dynamic_int8_linear_runs_prepacked_and_matches_the_portable_kernel(bert) -> None:
    module, inputs = bert
    q = _quantized(module)
    eager = optc.to_eager(q)
    assert len(_packed_calls(eager)) == len(_int8_linears(q)) > 0
    # the int8 weights are not kept twice: only the prepacked copy is there (the int8
    # embedding tables are gathered as they are)
    assert not any(b.dtype == torch.int8 for name, b in eager.graph_module.named_buffers()
                   if not name.startswith("embeddings_"))
    got, want = eager(**inputs), _run_portable(q, inputs)
    for name in want:
        scale = max(1.0, want[name].abs().max().item())
        assert (got[name] - want[name]).abs().max().item() / scale < 1e-5, name


def test_prepacked_weights_are_the_ir_weights(bert) -> None:
    module, _ = bert
    q = _quantized(module)
    eager = optc.to_eager(q)
    packed = {n.name: getattr(eager.graph_module, n.args[1].target) for n in _packed_calls(eager)}
    node = _int8_linears(q)[0]
    weight, scale, bias = unpacked_weights(next(iter(packed.values())))
    assert torch.equal(weight, node.arg(1).data)
    assert torch.allclose(scale, node.arg(3).data, rtol=0, atol=0)
    assert torch.equal(bias, node.arg(2).data)


def test_torchscript_saves_the_prepacked_kernel_bit_identical_to_eager(bert, tmp_path) -> None:
    module, inputs = bert
    q = _quantized(module, "quantize{mode=dynamic,targets=ffn}")
    path = tmp_path / "q.pt"
    export_torchscript(q, path)
    loaded = torch.jit.load(str(path))
    assert "quantized.linear_dynamic" in loaded.code
    eager = optc.to_eager(q)
    full = {n: inputs.get(n, torch.zeros_like(inputs["input_ids"])) for n in eager.input_names}
    got, want = loaded(**full), eager(**inputs)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_wide_weights_keep_the_portable_kernel(bert) -> None:
    # 8-bit weights (|q| up to 127) could saturate AVX2's int16 pair sums at full 8-bit
    # activations: they stay on the exact portable kernel
    module, inputs = bert
    q = _quantized(module, "quantize{mode=dynamic,bits=8}")
    assert any(int(n.arg(1).data.to(torch.int16).abs().max()) > 63 for n in _int8_linears(q))
    wide = [n for n in _int8_linears(q) if int(n.arg(1).data.to(torch.int16).abs().max()) > 63]
    assert not set(wide) & set(packed_int8_nodes(q))
    got, want = optc.to_eager(q)(**inputs), _run_portable(q, inputs)
    for name in want:
        scale = max(1.0, want[name].abs().max().item())
        assert (got[name] - want[name]).abs().max().item() / scale < 1e-5, name


def test_without_fbgemm_or_off_the_cpu_nothing_is_packed(bert, monkeypatch) -> None:
    module, _ = bert
    q = _quantized(module)
    assert packed_int8_nodes(q, "meta") == []
    monkeypatch.setattr(int8_exec, "available", lambda: False)
    assert packed_int8_nodes(q) == []
    assert _packed_calls(optc.to_eager(q)) == []


def test_float_and_static_linears_are_not_packed(bert, tmp_path) -> None:
    from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer

    module, _ = bert
    assert packed_int8_nodes(module) == []
    write_tokenizer(tmp_path / "tok")
    write_task(tmp_path / "task")
    _, small = tiny_bert(layers=1)
    small.meta["source"]["tokenizer"] = str(tmp_path / "tok")
    PassManager(f"quantize{{mode=static,data={tmp_path / 'task'}}}").run(small)
    assert _int8_linears(small) and packed_int8_nodes(small) == []


def test_linears_sharing_a_weight_with_different_biases_each_keep_their_bias(bert, tmp_path) -> None:
    # the bias is packed with the weight: one packed copy per (weight, bias) pair
    module, inputs = bert
    q = _quantized(module)
    # (a key bias would not do: softmax ignores what it adds to a row of scores)
    query, value = (next(n for n in q.graph if n.op == "linear" and n.arg(1).name == name)
                    for name in ("encoder.layer.0.attention.self.query.weight",
                                 "encoder.layer.0.attention.self.value.weight"))
    value.replace_input(value.arg(1), query.arg(1))
    value.replace_input(value.arg(3), query.arg(3))
    assert value.arg(2) is not query.arg(2)
    value.arg(2).data = torch.randn(value.arg(2).data.shape, generator=torch.Generator().manual_seed(0))
    eager = optc.to_eager(q)
    assert len(_packed_calls(eager)) == len(_int8_linears(q))
    want = _run_portable(q, inputs)
    got = eager(**inputs)
    path = tmp_path / "shared.pt"
    export_torchscript(q, path)
    full = {n: inputs.get(n, torch.zeros_like(inputs["input_ids"])) for n in eager.input_names}
    scripted = torch.jit.load(str(path))(**full)
    for name in want:
        scale = max(1.0, want[name].abs().max().item())
        assert (got[name] - want[name]).abs().max().item() / scale < 1e-5, name
        assert torch.equal(scripted[name], got[name]), name
