"""Graph editing API of optc.ir.core: use-lists, replacement, removal, names, parameters, clone."""

from __future__ import annotations

import pytest
import torch

from optc.errors import IRError
from optc.ir import Graph, Module, Parameter, parse_module, print_module
from optc.ir.core import Node, Value
from optc.ir.types import SymType, TensorType
from optc.ir.verifier import collect_problems

F4 = TensorType(torch.float32, (4,))


def _users(value: Value) -> dict[Node, int]:
    return dict(value._users)


@pytest.fixture
def chain() -> tuple[Module, Value, Node, Node]:
    """x -> a = relu(x) -> b = add(a, a) -> output."""
    module = Module("chain")
    graph = module.graph
    x = graph.add_input("x", F4)
    a = graph.create_node("aten.relu.default", (x,), output_types=[F4], names="a")
    b = graph.create_node("aten.add.Tensor", (a.output, a.output), output_types=[F4], names="b")
    graph.set_output("out", b.output)
    return module, x, a, b


# -- use-lists ---------------------------------------------------------------------------------
def test_create_node_records_uses(chain):
    module, x, a, b = chain
    assert x.users() == [a]
    assert x.num_uses == 1
    assert a.output.users() == [b]
    assert a.output.num_uses == 2  # read twice by add
    assert b.output.users() == []
    assert a.output.producer is a and a.output.index == 0
    assert collect_problems(module) == []


def test_create_node_records_uses_in_nested_args_and_kwargs():
    graph = Graph()
    x = graph.add_input("x", F4)
    y = graph.add_input("y", F4)
    node = graph.create_node(
        "aten.cat.default", ([x, y, x],), {"other": (y,)}, output_types=[F4]
    )
    assert node.inputs == [x, y, x, y]
    assert _users(x) == {node: 2}
    assert _users(y) == {node: 2}


def test_create_node_multi_and_zero_outputs():
    graph = Graph()
    x = graph.add_input("x", F4)
    two = graph.create_node(
        "aten.max.dim", (x, 0), output_types=[F4, TensorType(torch.int64, (4,))],
        names=["values", "indices"],
    )
    assert [v.name for v in two.outputs] == ["values", "indices"]
    assert [v.index for v in two.outputs] == [0, 1]
    with pytest.raises(IRError, match="2 outputs"):
        _ = two.output
    none = graph.create_node("aten._assert_scalar.default", (x, "msg"))
    assert none.outputs == ()
    assert none.name == "<aten._assert_scalar.default>"
    assert x.users() == [two, none]


def test_create_node_position_before_and_after(chain):
    module, x, a, b = chain
    graph = module.graph
    first = graph.create_node("aten.neg.default", (x,), output_types=[F4], before=a)
    middle = graph.create_node("aten.neg.default", (x,), output_types=[F4], after=a)
    assert graph.nodes == [first, a, middle, b]
    assert graph.index(middle) == 2


def test_create_node_names_are_made_unique(chain):
    module, x, a, b = chain
    node = module.graph.create_node("aten.relu.default", (x,), output_types=[F4], names="a")
    assert node.output.name != "a"
    assert node.output.name.startswith("a_")
    default = module.graph.create_node("aten.relu.default", (x,), output_types=[F4])
    assert default.output.name == "relu"  # hint from the op name


def test_node_output_cannot_be_defined_twice(chain):
    module, x, a, b = chain
    with pytest.raises(IRError, match="already defined"):
        Node("aten.relu.default", (x,), {}, [a.output])


def test_args_setter_updates_use_lists(chain):
    module, x, a, b = chain
    b.args = (x, a.output)
    assert _users(a.output) == {b: 1}
    assert _users(x) == {a: 1, b: 1}
    b.args = (x, x)
    assert a.output.users() == []
    assert _users(x) == {a: 1, b: 2}
    assert collect_problems(module) == []


def test_kwargs_setter_and_set_attr_update_use_lists(chain):
    module, x, a, b = chain
    b.kwargs = {"alpha": 2, "extra": [x]}
    assert _users(x) == {a: 1, b: 1}
    assert b.attr("alpha") == 2
    b.set_attr("extra", None)
    assert _users(x) == {a: 1}
    assert b.kwargs == {"alpha": 2, "extra": None}


def test_kwargs_returns_a_copy(chain):
    module, x, a, b = chain
    b.kwargs["sneaky"] = x  # edits a copy, not the node
    assert "sneaky" not in b.kwargs
    assert x.users() == [a]


def test_replace_input_rewrites_every_slot(chain):
    module, x, a, b = chain
    b.replace_input(a.output, x)
    assert b.args == (x, x)
    assert a.output.users() == []
    assert _users(x) == {a: 1, b: 2}
    assert collect_problems(module) == []


def test_replace_input_in_nested_containers():
    graph = Graph()
    x = graph.add_input("x", F4)
    y = graph.add_input("y", F4)
    node = graph.create_node("aten.cat.default", ([x, (x, 1)],), {"k": [x]}, output_types=[F4])
    node.replace_input(x, y)
    assert node.args == ([y, (y, 1)],)
    assert node.kwargs == {"k": [y]}
    assert x.users() == []
    assert _users(y) == {node: 3}


def test_dict_arguments_are_refused():
    graph = Graph()
    x = graph.add_input("x", F4)
    with pytest.raises(IRError, match="dict arguments"):
        graph.create_node("aten.relu.default", (x,), {"extra": {"k": x}}, output_types=[F4])


# -- replace_all_uses --------------------------------------------------------------------------
def test_replace_all_uses_redirects_node_arguments(chain):
    module, x, a, b = chain
    graph = module.graph
    count = graph.replace_all_uses(a.output, x)
    assert count >= 1
    assert b.args == (x, x)
    assert a.output.users() == []
    assert _users(x) == {a: 1, b: 2}


def test_replace_all_uses_redirects_graph_outputs(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.set_output("also", b.output)
    count = graph.replace_all_uses(b.output, a.output)
    assert count == 2  # two graph outputs, no node users
    assert graph.outputs == {"out": a.output, "also": a.output}
    assert not graph.is_output(b.output)
    graph.remove(b)
    assert collect_problems(module) == []


def test_replace_all_uses_then_remove_leaves_valid_module(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.replace_all_uses(a.output, x)
    graph.remove(a)
    assert graph.nodes == [b]
    assert collect_problems(module) == []


# -- snapshots ---------------------------------------------------------------------------------
def test_users_is_a_snapshot_safe_to_mutate_while_iterating():
    graph = Graph()
    x = graph.add_input("x", F4)
    y = graph.add_input("y", F4)
    nodes = [graph.create_node("aten.relu.default", (x,), output_types=[F4]) for _ in range(4)]
    users = x.users()
    for user in x.users():
        user.replace_input(x, y)
    assert x.users() == []
    assert y.users() == nodes
    assert users == nodes  # the earlier snapshot is not affected by the edits


def test_nodes_is_a_snapshot_safe_to_remove_while_iterating():
    graph = Graph()
    x = graph.add_input("x", F4)
    for _ in range(3):
        graph.create_node("aten.relu.default", (x,), output_types=[F4])
    for node in graph:
        graph.remove(node)
    assert len(graph) == 0
    assert x.users() == []


# -- removal -----------------------------------------------------------------------------------
def test_remove_refuses_node_with_users(chain):
    module, x, a, b = chain
    before = print_module(module)
    with pytest.raises(IRError, match=r"cannot remove .*%a.*still used.*replace its uses"):
        module.graph.remove(a)
    assert print_module(module) == before
    assert a.graph is module.graph


def test_remove_refuses_node_whose_output_is_a_graph_output(chain):
    module, x, a, b = chain
    with pytest.raises(IRError, match="graph output"):
        module.graph.remove(b)


def test_remove_unsafe_drops_uses_of_the_removed_node(chain):
    module, x, a, b = chain
    module.graph.remove(a, safe=False)
    assert a.graph is None
    assert x.users() == []
    assert module.graph.nodes == [b]


def test_remove_node_not_in_graph(chain):
    module, x, a, b = chain
    other = Graph()
    with pytest.raises(IRError, match="not in this graph"):
        other.remove(a)


def test_remove_frees_the_output_name(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.replace_all_uses(a.output, x)
    graph.remove(a)
    assert graph.unique_name("a") == "a"


def test_remove_many_removes_a_chain_used_only_inside_the_set(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.set_output("out", x)
    graph.remove_many([a, b])  # b uses a; both go
    assert len(graph) == 0
    assert x.users() == []
    assert a.graph is None and b.graph is None
    assert collect_problems(module) == []


def test_remove_many_refuses_outside_users(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.set_output("out", x)
    with pytest.raises(IRError, match=r"%a is still used outside the set"):
        graph.remove_many([a])
    assert graph.nodes == [a, b]
    assert x.users() == [a]


def test_remove_many_refuses_graph_outputs(chain):
    module, x, a, b = chain
    with pytest.raises(IRError, match="outside the set"):
        module.graph.remove_many([a, b])
    assert len(module.graph) == 2


def test_remove_many_refuses_nodes_of_another_graph(chain):
    module, x, a, b = chain
    other = Module("other")
    y = other.graph.add_input("y", F4)
    foreign = other.graph.create_node("aten.relu.default", (y,), output_types=[F4])
    other.graph.set_output("out", foreign.output)
    with pytest.raises(IRError, match="not in this graph"):
        module.graph.remove_many([foreign])
    assert foreign.graph is other.graph
    assert collect_problems(other) == []


# -- names -------------------------------------------------------------------------------------
def test_unique_name_sanitizes_and_avoids_taken_names(chain):
    module, x, a, b = chain
    graph = module.graph
    assert graph.unique_name("fresh") == "fresh"
    assert graph.unique_name("x") not in {"x", "a", "b"}
    assert graph.unique_name("x").startswith("x_")
    assert graph.unique_name("a.b-c") == "a_b_c"
    assert graph.unique_name("") == "v"


def test_add_input_refuses_duplicate_and_invalid_names():
    graph = Graph()
    graph.add_input("x", F4)
    with pytest.raises(IRError, match="already defined"):
        graph.add_input("x", F4)
    with pytest.raises(IRError, match="invalid value name"):
        graph.add_input("a b", F4)


def test_insert_refuses_duplicate_output_name(chain):
    module, x, a, b = chain
    clash = Node("aten.relu.default", (x,), {}, [Value("a", F4)])
    with pytest.raises(IRError, match="already defined"):
        module.graph.insert(clash)
    assert clash.graph is None
    assert all(n is not clash for n in module.graph)


def test_insert_refuses_node_already_in_a_graph(chain):
    module, x, a, b = chain
    with pytest.raises(IRError, match="already in a graph"):
        module.graph.insert(a)


def test_insert_reattaches_a_removed_node(chain):
    module, x, a, b = chain
    graph = module.graph
    node = graph.create_node("aten.neg.default", (x,), output_types=[F4], names="n")
    graph.remove(node)
    assert node.graph is None and x.users() == [a]
    node.args = (x,)  # a removed node lost its uses; give it arguments again
    graph.insert(node, before=b)
    assert graph.nodes == [a, node, b]
    assert x.users() == [a, node]
    assert collect_problems(module) == []


def test_rename(chain):
    module, x, a, b = chain
    graph = module.graph
    graph.rename(a.output, "activated")
    assert a.output.name == "activated"
    assert "%activated" in print_module(module)
    assert graph.unique_name("a") == "a"  # old name is free again
    graph.rename(a.output, "activated")  # same name: no-op
    with pytest.raises(IRError, match="already defined"):
        graph.rename(a.output, "b")
    with pytest.raises(IRError, match="invalid value name"):
        graph.rename(a.output, "has space")
    assert collect_problems(module) == []


def test_rename_refuses_parameters():
    module = Module()
    w = module.add_param("w", torch.zeros(4))
    with pytest.raises(IRError, match="parameter"):
        module.graph.rename(w, "v")


# -- parameters --------------------------------------------------------------------------------
def test_parameter_type_is_derived_from_data():
    p = Parameter("w", torch.zeros(3, 5, dtype=torch.float16))
    assert p.type == TensorType(torch.float16, (3, 5))
    assert p.is_param
    assert repr(p) == "@w"
    p.data = torch.zeros(2, dtype=torch.int64)
    assert p.type == TensorType(torch.int64, (2,))
    with pytest.raises(IRError, match="assign a new tensor to .data"):
        p.type = TensorType(torch.float32, (9,))  # the type follows the data
    assert p.type == TensorType(torch.int64, (2,))
    p.type = TensorType(torch.int64, (2,))  # setting the type it has is harmless


def test_value_tensor_type():
    v = Value("s", SymType("int", "seq"))
    with pytest.raises(IRError, match="not a tensor"):
        _ = v.tensor_type
    assert Value("t", F4).tensor_type == F4


def test_add_param_and_remove_unused_param():
    module = Module()
    w = module.add_param("w", torch.ones(2, 3))
    assert module.params == {"w": w}
    assert module.num_parameters() == 6
    with pytest.raises(IRError, match="already exists"):
        module.add_param("w", torch.ones(1))
    assert module.unique_param_name("w") == "w_1"
    module.remove_param("w")
    assert module.params == {}


def test_remove_param_refuses_used_param():
    module = Module()
    x = module.graph.add_input("x", TensorType(torch.float32, (3,)))
    w = module.add_param("w", torch.ones(2, 3))
    node = module.graph.create_node(
        "linear", (x, w), output_types=[TensorType(torch.float32, (2,))]
    )
    module.graph.set_output("y", node.output)
    with pytest.raises(IRError, match=r"cannot remove @w: still used by"):
        module.remove_param("w")
    assert "w" in module.params


def test_remove_param_refuses_param_that_is_a_graph_output():
    module = Module()
    w = module.add_param("w", torch.ones(2))
    module.graph.set_output("w", w)
    with pytest.raises(IRError, match="the output"):
        module.remove_param("w")


def test_value_by_name(chain):
    module, x, a, b = chain
    assert module.value_by_name("x") is x
    assert module.value_by_name("b") is b.output
    with pytest.raises(KeyError):
        module.value_by_name("nope")


# -- clone -------------------------------------------------------------------------------------
CLONE_SRC = """module @m {
  meta {"nested": {"list": [1, 2]}}
  dim batch = [1, inf]
  param @w : f32[3,4]
  graph(%x : f32[batch,4]) {
    %y : f32[batch,3] = linear(%x, @w) loc("layer.0")
    %z : f32[batch,3] = aten.relu.default(%y) loc("layer.1")
    return (out=%z)
  }
}
"""


def test_clone_is_structurally_equal_and_shares_weights():
    w = torch.randn(3, 4)
    module = parse_module(CLONE_SRC, weights={"w": w})
    copy = module.clone()
    assert print_module(copy, locations=True) == print_module(module, locations=True)
    assert copy.params["w"].data is w
    assert copy.params["w"] is not module.params["w"]
    assert copy.meta == module.meta
    assert collect_problems(copy) == []


def test_clone_is_independent_of_the_original():
    module = parse_module(CLONE_SRC, weights={"w": torch.randn(3, 4)})
    before = print_module(module, locations=True)
    copy = module.clone()
    graph = copy.graph
    relu = graph.nodes[1]
    graph.replace_all_uses(relu.output, relu.args[0])
    graph.remove(relu)
    copy.meta["nested"]["list"].append(3)
    copy.dims["batch"].max = 8
    copy.add_param("extra", torch.zeros(1))
    copy.params["w"].data = torch.zeros(2, 4)
    assert print_module(module, locations=True) == before
    assert module.meta == {"nested": {"list": [1, 2]}}
    assert module.params["w"].type == TensorType(torch.float32, (3, 4))
    assert collect_problems(module) == []
