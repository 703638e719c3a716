"""The hf backend refuses IR nodes its generated classes do not compute (a plugin op, an
activation inserted on the residual stream) with one line naming the node and op, and writes
nothing (it used to write a directory computing without them); ``check_backends`` runs hf on
the modules it writes and leaves it out for the others."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends import write_backend
from optc.backends.differential import check_backends, default_backends
from optc.backends.hf import hf_refusal
from optc.errors import BackendError
from optc.ir.analysis import analyze
from optc.ir.ops.base import Attr, OpDef, Operand, get_op, register_op
from optc.tests.conftest import tiny_model, token_inputs


def _scale(x: torch.Tensor, *, factor: float) -> torch.Tensor:
    return x * factor


def plugin_op() -> None:
    """The README's one-file op ``scale`` (also defined by tests/ir/test_foundation.py)."""
    if get_op("scale") is None:
        register_op(OpDef(
            name="scale", doc="y = x * factor", operands=(Operand("x"),),
            attrs={"factor": Attr(float, doc="multiplier")},
            infer=lambda node: [node.args[0].type], kernel=_scale,
            script="def k_scale(x: Tensor, factor: float) -> Tensor:\n    return x * factor\n",
        ))


@pytest.fixture(scope="module")
def bert():
    model = tiny_model("bert")
    return model, optc.capture(model)


def with_plugin(module: optc.Module) -> optc.Module:
    plugin_op()
    module = module.clone()
    out = module.graph.outputs["last_hidden_state"]
    node = module.graph.create_node("scale", (out,), {"factor": 4.0}, [out.type], names="scaled")
    module.graph.set_output("last_hidden_state", node.outputs[0])
    optc.verify(module)
    return module


def with_stream_gelu(module: optc.Module) -> optc.Module:
    """A gelu on the residual stream between layer 0 and layer 1."""
    module = module.clone()
    stream = analyze(module).layers[1].attention.stream_in
    users = stream.users()
    node = module.graph.create_node("gelu", (stream,), {"approximate": "none"}, [stream.type],
                                    names="stray", after=stream.producer)
    for user in users:
        user.replace_input(stream, node.outputs[0])
    optc.verify(module)
    return module


@pytest.mark.parametrize(("edit", "op"), [(with_plugin, "scale"), (with_stream_gelu, "gelu")])
@pytest.mark.parametrize("check", [True, False])
def test_unexpressed_node_is_refused_and_nothing_written(bert, tmp_path, edit, op, check) -> None:
    module = edit(bert[1])
    out = tmp_path / "hf"
    with pytest.raises(BackendError, match=rf"hf backend: <Node %\w+ = {op}> \(op '{op}'\) has no "
                                           r"equivalent in the generated OptcBertModel") as info:
        write_backend(module, "hf", out, check=check)
    assert info.value.exit_code == 6 and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert "has no equivalent" in hf_refusal(module)


def test_check_backends_covers_hf_when_it_writes_the_module(bert) -> None:
    model, module = bert
    inputs = token_inputs(model, 2, 6)
    assert default_backends(module) == ("eager", "torchscript", "onnx", "hf")
    report = check_backends(module, inputs, backends=("eager", "hf"))
    assert set(report.diffs) == {"hf"} and report.worst("hf") <= 1e-4
    plugged = with_plugin(module)
    assert default_backends(plugged) == ("eager", "torchscript", "onnx")
    assert set(check_backends(plugged, inputs).diffs) == {"torchscript", "onnx"}
