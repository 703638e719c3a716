"""The verifier: one test per kind of corruption; each message names the culprit and the fix."""

from __future__ import annotations

import pytest
import torch

from optc.errors import VerificationError
from optc.ir import Module, Parameter, collect_problems, parse_module, verify
from optc.ir.core import Value
from optc.ir.types import TensorType

VALID = """module @m {
  dim batch = [1, inf]
  param @q.weight : f32[8,8]
  param @q.bias : f32[8]
  param @ln.weight : f32[8]
  param @ln.bias : f32[8]
  param @table : f32[10,8]
  graph(%ids : i64[batch,4], %mask : bool[batch,1,4,4]) {
    %emb : f32[batch,4,8] = embedding(%ids, @table, padding_idx=0)
    %n : sym_int(batch) = aten.sym_size.int(%ids, 0)
    %m : sym_int("2*batch") = py.operator.mul(%n, 2)
    %ln : f32[batch,4,8] = layer_norm(%emb, @ln.weight, @ln.bias, normalized_shape=[8], eps=1e-12)
    %q : f32[batch,4,8] = linear(%ln, @q.weight, @q.bias)
    %att : f32[batch,4,8] = attention(%q, %q, %q, %mask, num_heads=2, head_dim=4, scale=0.5, causal=false)
    %act : f32[batch,4,8] = gelu(%att, approximate="tanh")
    %out : f32[batch,4,8] = aten.add.Tensor(%act, %ln)
    return (out=%out)
  }
}
"""


def _valid() -> Module:
    return parse_module(VALID)


def _problems(module: Module) -> str:
    """The verifier's message for ``module``, which must be invalid."""
    with pytest.raises(VerificationError) as info:
        verify(module, "in a test")
    err = info.value
    assert err.problems == collect_problems(module)
    assert str(err).startswith("IR verification failed in a test: ")
    return str(err)


def _edit(old: str, new: str) -> Module:
    assert old in VALID
    return parse_module(VALID.replace(old, new))


def test_valid_module_has_no_problems():
    module = _valid()
    assert collect_problems(module) == []
    verify(module)


def test_valid_module_built_by_hand_has_no_problems():
    module = Module()
    x = module.graph.add_input("x", TensorType(torch.float32, (2, 3)))
    w = module.add_param("w", torch.zeros(5, 3))
    lin = module.graph.create_node("linear", (x, w), output_types=[TensorType(torch.float32, (2, 5))])
    module.graph.set_output("y", lin.output)
    assert collect_problems(module) == []


# -- SSA ---------------------------------------------------------------------------------------
def test_use_before_definition():
    module = _valid()
    nodes = module.graph._nodes
    nodes[3], nodes[4] = nodes[4], nodes[3]  # linear now comes before the layer_norm it reads
    message = _problems(module)
    assert "node '%q = linear' uses %ln before it is defined" in message
    assert "move the node after %ln's producer" in message


def test_duplicate_value_names():
    module = _valid()
    module.graph.nodes[-1].output.name = "act"
    message = _problems(module)
    assert "value %act is defined 2 times" in message
    assert "SSA names must be unique" in message


def test_output_not_pointing_back_to_its_node():
    module = _valid()
    module.graph.nodes[0].output.producer = module.graph.nodes[1]
    message = _problems(module)
    assert "node '%emb = embedding': output %emb does not point back to its node" in message


def test_graph_input_with_a_producer():
    module = _valid()
    module.graph.inputs[0].producer = module.graph.nodes[0]
    assert "graph input %ids has a producer" in _problems(module)


def test_node_listed_but_not_attached():
    module = _valid()
    module.graph.nodes[-1].graph = None
    assert "node '%out = aten.add.Tensor' is listed in the graph but not attached" in _problems(module)


# -- use-lists ---------------------------------------------------------------------------------
def test_use_list_out_of_sync_after_direct_args_mutation():
    module = _valid()
    add = module.graph.nodes[-1]
    att = module.graph.nodes[-3].output
    add._args = (att, add.args[1])  # bypasses the use-list bookkeeping
    message = _problems(module)
    assert "use-list of %act is out of sync" in message
    assert "use-list of %att is out of sync" in message
    assert "never by mutating containers" in message


def test_use_list_with_stale_user_not_in_graph():
    module = _valid()
    add = module.graph.nodes[-1]
    module.graph._nodes.remove(add)  # dropped from the list without removing its uses
    add.graph = None
    module.graph.set_output("out", module.graph.nodes[-1].output)
    message = _problems(module)
    assert "use-list of %act is out of sync" in message
    assert "stale users not in the graph" in message


# -- parameters --------------------------------------------------------------------------------
def test_param_not_in_module():
    module = _valid()
    linear = next(n for n in module.graph if n.op == "linear")
    stray = Parameter("q.weight", torch.zeros(8, 8))  # same name, different object
    linear.replace_input(module.params["q.weight"], stray)
    message = _problems(module)
    assert "node '%q = linear' reads @q.weight, which is not a parameter of this module" in message
    assert "module.add_param" in message


def test_param_stored_under_another_name():
    module = _valid()
    module.params["renamed"] = module.params.pop("table")
    message = _problems(module)
    assert "parameter stored as @renamed is named @table" in message


# -- high-level ops ----------------------------------------------------------------------------
def test_high_level_op_with_wrong_operand_count():
    module = _edit("linear(%ln, @q.weight, @q.bias)", "linear(%ln)")
    message = _problems(module)
    assert "node '%q = linear': linear takes operands (x, weight, bias?, weight_scale?, input_scale?, input_zero_point?), got 1" in message


def test_high_level_op_with_too_many_operands():
    module = _edit("gelu(%att, ", "gelu(%att, %att, ")
    assert "gelu takes operands (x), got 2" in _problems(module)


def test_high_level_op_operand_must_be_a_tensor():
    module = _edit("linear(%ln, @q.weight, @q.bias)", "linear(%ln, 3, @q.bias)")
    assert "linear operand 'weight' must be a tensor value" in _problems(module)


def test_unknown_attribute():
    module = _edit("approximate=\"tanh\"", "approximate=\"tanh\", fast=true")
    message = _problems(module)
    assert "node '%act = gelu': gelu has no attribute 'fast' (valid: approximate)" in message


def test_attribute_with_bad_type():
    module = _edit("num_heads=2", "num_heads=\"two\"")
    assert "attention attribute 'num_heads' has a bad value 'two'" in _problems(module)


def test_missing_required_attribute():
    module = _edit("num_heads=2, ", "")
    message = _problems(module)
    assert "node '%att = attention': attention needs attribute 'num_heads'" in message


@pytest.mark.parametrize(
    "old, new",
    [("num_heads=2", "num_heads=none"), ("normalized_shape=[8]", "normalized_shape=none")],
)
def test_required_attribute_given_as_none_is_reported(old, new):
    module = _edit(old, new)
    message = _problems(module)
    assert new.split("=")[0] in message


def test_linear_weight_does_not_match_input():
    module = _edit("param @q.weight : f32[8,8]", "param @q.weight : f32[8,6]")
    message = _problems(module)
    assert "node '%q = linear': linear input f32[batch,4,8] does not match weight f32[8,6]" in message
    assert "slice both sides together" in message


def test_linear_bias_does_not_match_weight():
    module = _edit("param @q.bias : f32[8]", "param @q.bias : f32[7]")
    assert "linear bias f32[7] must be [8] to match weight f32[8,8]" in _problems(module)


def test_linear_weight_must_be_2d():
    module = _edit("param @q.weight : f32[8,8]", "param @q.weight : f32[8,8,1]")
    assert "linear weight must be 2-D [out, in]" in _problems(module)


def test_linear_output_type_stale_after_slicing_weight_rows():
    module = parse_module(VALID, weights={"q.weight": torch.randn(8, 8), "q.bias": torch.randn(8)})
    weight, bias = module.params["q.weight"], module.params["q.bias"]
    weight.data = weight.data[:6]  # prune output rows without updating the declared output type
    bias.data = bias.data[:6]
    message = _problems(module)
    assert "node '%q = linear': declared output type f32[batch,4,8] but operands give f32[batch,4,6]" in message
    assert "update the output type after editing weights or attributes" in message


def test_attention_heads_times_head_dim_differs_from_width():
    module = _edit("num_heads=2, head_dim=4", "num_heads=3, head_dim=4")
    message = _problems(module)
    assert "node '%att = attention': attention query is f32[batch,4,8] but num_heads*head_dim = 3*4 = 12" in message
    assert "operands are [batch, seq, num_heads*head_dim]" in message


def test_attention_bad_kind_and_topk():
    module = _edit("causal=false", "causal=false, kind=\"sparse\"")
    assert "attention kind must be 'softmax' or 'topk', got 'sparse'" in _problems(module)
    module = _edit("causal=false", "causal=false, kind=\"topk\"")
    assert "attention kind=topk needs an integer attribute topk >= 1" in _problems(module)
    assert collect_problems(_edit("causal=false", "causal=false, kind=\"topk\", topk=2")) == []


def test_attention_non_positive_heads():
    module = _edit("num_heads=2, head_dim=4", "num_heads=0, head_dim=4")
    assert "attention needs num_heads >= 1 and head_dim >= 1, got 0 and 4" in _problems(module)


def test_layer_norm_shape_mismatch():
    module = _edit("normalized_shape=[8]", "normalized_shape=[6]")
    message = _problems(module)
    assert "node '%ln = layer_norm': layer_norm normalized_shape [6] does not end input f32[batch,4,8]" in message
    assert "layer_norm weight f32[8] must have shape [6]" in message


def test_layer_norm_weight_mismatch():
    module = _edit("param @ln.bias : f32[8]", "param @ln.bias : f32[4]")
    assert "layer_norm bias f32[4] must have shape [8]" in _problems(module)


def test_embedding_table_must_be_2d():
    module = _edit("param @table : f32[10,8]", "param @table : f32[80]")
    assert "node '%emb = embedding': embedding table must be 2-D, got f32[80]" in _problems(module)


# -- ATen and Python ops -----------------------------------------------------------------------
def test_unknown_aten_op():
    module = _edit("aten.add.Tensor", "aten.add_all_the_things.Tensor")
    message = _problems(module)
    assert "node '%out = aten.add_all_the_things.Tensor': unknown op 'aten.add_all_the_things.Tensor'" in message
    assert "does not exist" in message


def test_op_name_without_overload():
    module = _edit("aten.add.Tensor", "aten.add")
    message = _problems(module)
    assert "unknown op 'aten.add'" in message
    assert "namespace.name.overload" in message


def test_py_op_not_in_allow_list():
    module = _edit("py.operator.mul", "py.os.system")
    message = _problems(module)
    assert "node '%m = py.os.system': unknown op 'py.os.system'" in message


# -- types and outputs -------------------------------------------------------------------------
def test_undeclared_symbolic_dim():
    module = _edit("%ids : i64[batch,4]", "%ids : i64[batch,seq]")
    message = _problems(module)
    assert "%ids has type i64[batch,seq] using undeclared dim 'seq'" in message
    assert "declare it with `dim seq = [min, max]`" in message
    assert "(batch)" in message


def test_undeclared_dim_in_sym_type_expression():
    module = _edit('sym_int("2*batch")', 'sym_int("2*batch + heads")')
    assert "%m has type sym_int(\"2*batch + heads\") using undeclared dim 'heads'" in _problems(module)


def test_sympy_function_names_are_not_dims():
    module = _edit('sym_int("2*batch")', 'sym_int("Max(1, floor(batch/2))")')
    assert collect_problems(module) == []


def test_no_outputs():
    module = _valid()
    module.graph.set_outputs({})
    message = _problems(module)
    assert "the graph has no outputs: set at least one with graph.set_output" in message


def test_output_not_defined_in_graph():
    module = _valid()
    module.graph.set_output("ghost", Value("ghost", TensorType(torch.float32, (1,))))
    message = _problems(module)
    assert "output 'ghost' is %ghost, which the graph does not define" in message


def test_output_not_a_value():
    module = _valid()
    module.graph.set_output("const", 3)
    assert "output 'const' is 3, not a value" in _problems(module)


def test_error_lists_at_most_five_problems():
    module = _valid()
    for node in module.graph:
        node.op = "aten.nope.default"
    err = pytest.raises(VerificationError, verify, module).value
    assert len(err.problems) == 8
    assert str(err).endswith("(+3 more)")
