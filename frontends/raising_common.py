"""What the raising rules share: the run's context, small graph predicates and the rewrite that
redirects a pattern's result to a new high-level op (:mod:`optc.frontends.raising` and its rule
modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.types import TensorType

__all__ = ["VIEWS", "MUL", "DIV", "ADD", "MAX_CHAIN", "SKIP", "RuleContext", "is_tensor", "number",
           "producer", "scalar_operand", "only_feeds", "is_swap_last_two", "replace_uses_with_op",
           "strip_casts", "operand_pairs"]


VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
MUL = ("aten.mul.Tensor", "aten.mul.Scalar")
DIV = ("aten.div.Tensor", "aten.div.Scalar")
ADD = ("aten.add.Tensor", "aten.add.Scalar")
MAX_CHAIN = 6
SKIP = ""
"""A rule's answer when its root is not an instance of the pattern at all (not reported)."""



@dataclass
class RuleContext:
    """State shared by the rules during one raising run."""

    envs: list[dict[str, int]]
    """Concrete sizes for the module's symbolic dims (two independent assignments)."""
    transposed: dict[str, Parameter] = field(default_factory=dict)
    """Parameter name -> the parameter holding its transpose (shared weights transpose once)."""

    @property
    def env(self) -> dict[str, int]:
        return self.envs[0]


def is_tensor(v: Any) -> bool:
    return isinstance(v, Value) and isinstance(v.type, TensorType)


def number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def producer(value: Any, ops: tuple[str, ...]) -> Node | None:
    """The node defining ``value`` if its op is one of ``ops``."""
    if isinstance(value, Value) and value.producer is not None and value.producer.op in ops:
        return value.producer
    return None


def scalar_operand(value: Any, ops: tuple[str, ...]) -> tuple[Value, float] | None:
    """``(x, c)`` when ``value`` is ``op(x, c)`` (or ``op(c, x)`` for mul/add) with a number c."""
    node = producer(value, ops)
    if node is None or number(node.attr("alpha", 1)) != 1.0:
        return None
    x, c = node.arg(0), node.arg(1)
    if is_tensor(x) and number(c) is not None:
        return x, float(c)
    if node.op not in DIV and is_tensor(c) and number(x) is not None:
        return c, float(x)
    return None


def only_feeds(value: Value, user: Node) -> bool:
    """Whether ``value`` is read by ``user`` alone (and is not a graph output)."""
    graph = user.graph
    return value.users() == [user] and not (graph is not None and graph.is_output(value))


def is_swap_last_two(node: Node, rank: int) -> bool:
    """Whether a transpose/permute node swaps the last two dims of a rank-``rank`` tensor."""
    if node.op == "aten.t.default":
        return rank == 2
    if node.op == "aten.transpose.int":
        dims = sorted(d % rank for d in node.args[1:3] if isinstance(d, int))
        return dims == [rank - 2, rank - 1]
    if node.op == "aten.permute.default":
        return list(node.arg(1, [])) == list(range(rank - 2)) + [rank - 1, rank - 2]
    return False


def replace_uses_with_op(module: Module, anchor: Node, old: Value, op: str, args: tuple,
             kwargs: dict[str, Any], type_: TensorType) -> Node:
    """Create ``op`` after ``anchor`` and redirect every use of ``old`` to its output."""
    new = module.graph.create_node(op, args, kwargs, [type_], names=op, after=anchor)
    new.loc = anchor.loc
    module.graph.replace_all_uses(old, new.outputs[0])
    return new


def strip_casts(value: Any) -> Any:
    """``value`` without same-dtype, same-shape casts (``x.to(torch.float32)`` of an f32 x)."""
    while isinstance(value, Value) and value.producer is not None and value.producer.op in (
            "aten.to.dtype", "aten._to_copy.default", "aten.type_as.default", "aten.to.device"):
        src = value.producer.args[0]
        if not (is_tensor(src) and src.type == value.type):
            break
        value = src
    return value


def operand_pairs(node: Node | None) -> list[tuple[Any, Any]]:
    """The first two operands of ``node`` in both orders (none when there is no node)."""
    if node is None or len(node.args) < 2:
        return []
    return [tuple(node.args[:2]), tuple(node.args[1::-1])]
