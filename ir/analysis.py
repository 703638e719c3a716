"""Structure analysis: the transformer layers of a raised module, found from the graph alone.

An attention block is an ``attention`` node with the ``linear`` nodes that produce its query,
key and value and the ``linear`` that consumes its result (the output projection). An FFN block
is ``linear -> activation -> linear`` where the first widens and the second narrows back to the
same width. Each attention block opens a layer; the first FFN block after it (before the next
attention) completes it. Residual adds and layer norms are found through the uses of the blocks'
outputs and inputs. Parameter names are never consulted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy

from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["AttentionBlock", "FFNBlock", "Layer", "Structure", "analyze", "linear_flops",
           "attention_flops", "module_flops"]

_FFN_ACTIVATIONS = ("gelu", "relu", "silu")
_RESIDUAL_ADDS = ("aten.add.Tensor",)


def _producer(value: object, op: str) -> Node | None:
    node = value.producer if isinstance(value, Value) else None
    return node if node is not None and node.op == op else None


def _single_user(value: Value, ops: tuple[str, ...]) -> Node | None:
    users = value.users()
    if len(users) == 1 and users[0].op in ops:
        return users[0]
    return None


def _params_of(node: Node | None) -> list[str]:
    if node is None:
        return []
    return [v.name for v in node.inputs if v.is_param]


@dataclass
class AttentionBlock:
    """One multi-head attention with its projections."""

    node: Node
    """The ``attention`` node."""
    query: Node | None
    """``linear`` producing the query operand (None if it is not a linear)."""
    key: Node | None
    value: Node | None
    output: Node | None
    """``linear`` consuming the attention result (output projection)."""
    residual: Node | None = None
    """The add that puts the block's result back on the residual stream."""
    norms: list[Node] = field(default_factory=list)
    """Layer norms of this block (pre-LN: before the projections; post-LN: after the add)."""

    @property
    def num_heads(self) -> int:
        return int(self.node.attr("num_heads"))

    @property
    def head_dim(self) -> int:
        return int(self.node.attr("head_dim"))

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.query, self.key, self.value, self.output, *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class FFNBlock:
    """A feed-forward block ``down(act(up(x)))``."""

    up: Node
    activation: Node
    down: Node
    residual: Node | None = None
    norms: list[Node] = field(default_factory=list)

    @property
    def width(self) -> int:
        """Number of intermediate neurons (rows of the up projection)."""
        return int(self.up.args[1].tensor_type.shape[0])

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.up, self.down, *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class Layer:
    """A transformer layer: an attention block and/or an FFN block."""

    index: int
    attention: AttentionBlock | None
    ffn: FFNBlock | None

    def param_names(self) -> list[str]:
        names = self.attention.param_names() if self.attention else []
        if self.ffn:
            names += [p for p in self.ffn.param_names() if p not in names]
        return names


@dataclass
class Structure:
    """The layers of a module, in order."""

    layers: list[Layer]
    unassigned_ffns: list[FFNBlock] = field(default_factory=list)
    """FFN blocks that follow no attention block (e.g. before the first layer)."""


def _find_ffns(module: Module) -> list[FFNBlock]:
    ffns = []
    for node in module.graph:
        if node.op != "linear":
            continue
        act = _single_user(node.outputs[0], _FFN_ACTIVATIONS)
        if act is None:
            continue
        down = _single_user(act.outputs[0], ("linear",))
        if down is None:
            continue
        up_w, down_w = node.args[1], down.args[1]
        if not (isinstance(up_w, Value) and isinstance(down_w, Value)):
            continue
        if up_w.tensor_type.shape[1] != down_w.tensor_type.shape[0]:
            continue  # not width-preserving: a classifier head, not an FFN
        ffns.append(FFNBlock(node, act, down))
    return ffns


def _residual_and_norm(out: Node | None, block_input: Value | None) -> tuple[Node | None, list[Node]]:
    if out is None:
        return None, []
    norms: list[Node] = []
    add = _single_user(out.outputs[0], _RESIDUAL_ADDS)
    if add is not None:
        post = [u for u in add.outputs[0].users() if u.op == "layer_norm"]
        if post and len(add.outputs[0].users()) == 1:
            norms.append(post[0])
    if block_input is not None and block_input.producer is not None:
        if block_input.producer.op == "layer_norm" and add is not None:
            # pre-LN: the norm feeds the block and its input is the residual that the add uses
            norm_in = block_input.producer.args[0]
            if norm_in in add.inputs:
                norms.insert(0, block_input.producer)
    return add, norms


def analyze(module: Module) -> Structure:
    """Find the transformer layers of ``module`` (which must have raised ops)."""
    order = {id(n): i for i, n in enumerate(module.graph)}
    blocks: list[AttentionBlock] = []
    for node in module.graph:
        if node.op != "attention":
            continue
        q = _producer(node.args[0], "linear")
        k = _producer(node.args[1], "linear")
        v = _producer(node.args[2], "linear")
        out = _single_user(node.outputs[0], ("linear",))
        block = AttentionBlock(node, q, k, v, out)
        block.residual, block.norms = _residual_and_norm(out, q.args[0] if q else None)
        blocks.append(block)
    ffns = _find_ffns(module)
    for ffn in ffns:
        ffn.residual, ffn.norms = _residual_and_norm(ffn.down, ffn.up.args[0])

    layers: list[Layer] = []
    unassigned: list[FFNBlock] = []
    ffn_iter = sorted(ffns, key=lambda f: order[id(f.up)])
    for i, block in enumerate(blocks):
        start = order[id(block.node)]
        end = order[id(blocks[i + 1].node)] if i + 1 < len(blocks) else math.inf
        mine = [f for f in ffn_iter if start < order[id(f.up)] < end]
        layers.append(Layer(i, block, mine[0] if mine else None))
        unassigned += mine[1:]
    first = order[id(blocks[0].node)] if blocks else math.inf
    unassigned = [f for f in ffn_iter if order[id(f.up)] < first] + unassigned
    return Structure(layers, unassigned)


# -- cost model ------------------------------------------------------------------------------
def _rows(t: TensorType, dims: dict[str, int]) -> int:
    total = 1
    for d in t.shape[:-1]:
        if isinstance(d, int):
            total *= d
        else:
            try:
                total *= int(sympy.sympify(d).subs({sympy.Symbol(k): v for k, v in dims.items()}))
            except (TypeError, ValueError, sympy.SympifyError):
                total *= dims.get(d, 1)
    return total


def linear_flops(node: Node, dims: dict[str, int]) -> int:
    """2 * rows * in * out for a ``linear`` node, with symbolic dims set from ``dims``."""
    x, w = node.args[0].tensor_type, node.args[1].tensor_type
    return 2 * _rows(x, dims) * int(w.shape[0]) * int(w.shape[1])


def attention_flops(node: Node, dims: dict[str, int]) -> int:
    """Scores plus weighted sum: 4 * batch * q_len * k_len * heads * head_dim."""
    q, k = node.args[0].tensor_type, node.args[1].tensor_type
    q_rows = _rows(q, dims)
    k_len = _rows(k, dims) // max(1, _rows(TensorType(k.dtype, k.shape[:1] + (1,)), dims))
    return 4 * q_rows * k_len * int(node.attr("num_heads")) * int(node.attr("head_dim"))


def module_flops(module: Module, seq: int, batch: int = 1) -> int:
    """Estimated FLOPs of one forward pass (linears and attention) at ``batch`` x ``seq``."""
    dims = {"batch": batch, "seq": seq}
    total = 0
    for node in module.graph:
        if node.op == "linear":
            total += linear_flops(node, dims)
        elif node.op == "attention":
            total += attention_flops(node, dims)
    return total
