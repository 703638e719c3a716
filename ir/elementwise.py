"""Elementwise structure the analysis (:mod:`optc.ir.analysis`) looks through: head-local ops
between a projection and its attention (rotary, per-head norms, a scaled split), and an FFN's
activation written as a region of elementwise ops (``relu(x)**2``, ``x * sigmoid(x)``,
xIELU's learned scalars). Pure predicates on nodes: they read the graph and change nothing."""

from __future__ import annotations

import functools

import torch

from optc.errors import IRError
from optc.ir.core import Node, Parameter, Value
from optc.ir.ops import get_op
from optc.ir.targets import resolve
from optc.ir.types import TensorType

__all__ = ["activation_region", "is_head_local", "is_pointwise", "is_scalar_param",
           "through_head_local"]


def is_head_local(node: Node) -> bool:
    """Whether ``node`` maps a ``[..., heads*head_dim]`` tensor head by head with nothing that
    depends on the head count (ops with the ``head-local`` trait, such as ``rotary``, norms
    with a ``head_dim``, elementwise ATen ops of the tensor and numbers): removing heads only
    changes its last dim."""
    opdef = get_op(node.op)
    if opdef is None:  # an elementwise ATen op of the tensor and numbers (a scaled query)
        return is_pointwise(node) and len([v for v in node.inputs
                                            if isinstance(v.type, TensorType)]) == 1
    return "head-local" in opdef.traits or ("norm" in opdef.traits and node.attr("head_dim") is not None)


def through_head_local(value: object) -> tuple[object, tuple[Node, ...]]:
    """``value``'s source before a chain of head-local ops, and that chain (source side first)."""
    chain: list[Node] = []
    while isinstance(value, Value) and value.producer is not None and is_head_local(value.producer):
        chain.insert(0, value.producer)
        value = value.producer.args[0]
    return value, tuple(chain)


def is_pointwise(node: Node) -> bool:
    """An ATen op tagged pointwise by PyTorch, or an optc ``activation``: it maps each element
    on its own, so an FFN's neurons stay independent through it."""
    opdef = get_op(node.op)
    if opdef is not None:
        return "activation" in opdef.traits
    return len(node.outputs) == 1 and _aten_pointwise(node.op)


@functools.cache
def _aten_pointwise(op: str) -> bool:
    """Whether the ATen op ``op`` is tagged pointwise (looked up once per op name: the
    analysis asks for every user of every projection, each time it runs)."""
    if not op.startswith("aten."):
        return False
    try:
        return torch.Tag.pointwise in resolve(op).tags
    except IRError:
        return False


def is_scalar_param(value: Value, depth: int = 4) -> bool:
    """A learned scalar (one element, the same for every neuron), or one computed from such
    scalars and numbers only (xIELU's ``softplus(alpha)``)."""
    if not isinstance(value.type, TensorType) or not all(d == 1 for d in value.tensor_type.shape):
        return False
    if isinstance(value, Parameter):
        return True
    node = value.producer
    return node is not None and depth > 0 and is_pointwise(node) and bool(node.inputs) and \
        all(is_scalar_param(v, depth - 1) for v in node.inputs)


def activation_region(up: Node) -> tuple[Node, ...] | None:
    """The nodes of the activation between an FFN's up projection and what reads it:
    elementwise ops (:func:`is_pointwise`; an ``ffn-activation`` op alone in the common case)
    that read only the projection, each other and numbers, and meet in one result read outside
    (``relu(x)**2``, ``x * sigmoid(x)``); learned scalars are numbers too (xIELU). A lone
    optc ``activation`` without the ``ffn-activation`` trait (``tanh``: a pooler) is not an FFN
    activation. The nodes come in dependency order: each joins once all its inputs are in."""
    inside: set[Value] = {up.outputs[0]}
    region: list[Node] = []
    frontier = [up.outputs[0]]
    graph = up.graph
    while frontier and len(region) <= _MAX_ACTIVATION_OPS:
        value = frontier.pop()
        for user in value.users():
            if user in region:
                continue
            if not is_pointwise(user) or not all(v in inside or is_scalar_param(v) for v in user.inputs):
                continue
            region.append(user)
            inside.add(user.outputs[0])
            frontier.append(user.outputs[0])
    if not region or len(region) > _MAX_ACTIVATION_OPS:
        return None
    exits = [n for n in region if graph.is_output(n.outputs[0]) or
             any(u not in region for u in n.outputs[0].users())]
    if len(exits) != 1 or graph.is_output(exits[0].outputs[0]) or \
            any(u not in region for u in up.outputs[0].users()):
        return None
    ops = [get_op(n.op) for n in region]
    if all(op is not None and "ffn-activation" not in op.traits for op in ops):
        return None  # tanh alone (a pooler), not an FFN
    return tuple(region) if region[-1] is exits[0] else None


_MAX_ACTIVATION_OPS = 24
