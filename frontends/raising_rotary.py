"""Raising rule for rotary position embeddings: ``x*cos + rotate_half(x)*sin`` on a head split
(rotate-half by a negated, concatenated half or by ``chunk``/``split`` halves; partial rotary on
the first features of each head, the rest concatenated back) -> the ``rotary`` op; and the
interleaved form on the same [batch, heads, seq, head_dim] split, ``x*cos +
rotate_every_two(x)*sin`` with ``rotate_every_two(x) = stack([-x[..., 1::2], x[..., ::2]],
-1)`` reshaped back to ``x``'s shape (RoFormer) -> ``rotary(interleaved=True)``. The tables are
[batch|1, seq, rot] tables unsqueezed over the heads, or any [batch|1, 1, seq, rot] tensor
(squeezed): the op multiplies them elementwise, whatever they hold."""

from __future__ import annotations

from typing import Any

from optc.frontends.layout import split_heads_source
from optc.frontends.raising_common import (
    SKIP,
    RuleContext,
    is_tensor,
    number,
    operand_pairs,
    producer,
    scalar_operand,
)
from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["raise_rotary"]

def _rotate_half_of(value: Any, rank: int) -> tuple[Value, int] | None:
    """``(x, half)`` when ``value`` is ``cat([-x[..., half:], x[..., :half]], -1)``."""
    cat = producer(value, ("aten.cat.default",))
    if cat is None or cat.arg(1, 0) not in (-1, rank - 1):
        return None
    parts = cat.arg(0)
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        return None
    neg = producer(parts[0], ("aten.neg.default",))
    halves = _chunked_halves(neg.args[0], parts[1], rank) if neg is not None else None
    if halves is not None:
        return halves
    hi = producer(neg.args[0], ("aten.slice.Tensor",)) if neg is not None else None
    lo = producer(parts[1], ("aten.slice.Tensor",))
    if hi is None or lo is None or hi.args[0] is not lo.args[0]:
        return None
    x = hi.args[0]
    last = (-1, rank - 1)
    if hi.arg(1, 0) not in last or lo.arg(1, 0) not in last or hi.arg(4, 1) != 1 or lo.arg(4, 1) != 1:
        return None
    half = hi.arg(2, 0)
    if lo.arg(2, 0) not in (0, None) or lo.arg(3) != half or not isinstance(half, int):
        return None
    width = x.tensor_type.shape[-1]
    if not isinstance(width, int) or width != 2 * half or (hi.arg(3) is not None and hi.arg(3) < width):
        return None
    return x, half


def _chunked_halves(hi: Any, lo: Any, rank: int) -> tuple[Value, int] | None:
    """``(x, half)`` when ``lo, hi`` are the two outputs of ``chunk(x, 2, -1)`` (or
    ``split(x, half, -1)``), in that order."""
    node = producer(hi, ("aten.chunk.default", "aten.split.Tensor"))
    if node is None or lo not in node.outputs or len(node.outputs) != 2 or \
            node.outputs.index(lo) != 0 or node.outputs.index(hi) != 1 or \
            node.arg(2, 0) not in (-1, rank - 1) or not is_tensor(node.args[0]):
        return None
    x = node.args[0]
    width = x.tensor_type.shape[-1]
    if not isinstance(width, int) or width % 2 or \
            node.args[1] != (2 if node.op == "aten.chunk.default" else width // 2):
        return None
    return x, width // 2


_WHOLE = 2 ** 62


def _every_other(value: Any, start: int) -> Value | None:
    """``x`` when ``value`` is ``x[..., start::2]`` (rank 4)."""
    node = producer(value, ("aten.slice.Tensor",))
    if node is None or node.arg(1, 0) not in (-1, 3) or (node.arg(2, 0) or 0) != start or \
            node.arg(4, 1) != 2 or not is_tensor(node.args[0]):
        return None
    end = node.arg(3)
    return node.args[0] if end is None or (isinstance(end, int) and end >= _WHOLE) else None


def _rotate_every_two_of(value: Any) -> Value | None:
    """``x`` when ``value`` is ``stack([-x[..., 1::2], x[..., ::2]], -1)`` reshaped back to
    ``x``'s shape (``reshape_as``, ``view``, ``reshape`` or ``flatten(-2)``)."""
    node = producer(value, ("aten.reshape_as.default", "aten.view.default",
                            "aten.reshape.default", "aten.flatten.using_ints"))
    stack = producer(node.args[0], ("aten.stack.default",)) if node is not None else None
    if stack is None or stack.arg(1, 0) not in (-1, 4) or len(stack.arg(0, ())) != 2:
        return None
    neg = producer(stack.arg(0)[0], ("aten.neg.default",))
    x = _every_other(neg.args[0], 1) if neg is not None else None
    if x is None or _every_other(stack.arg(0)[1], 0) is not x:
        return None
    return x if tuple(value.tensor_type.shape) == tuple(x.tensor_type.shape) else None


def _table(value: Any, x4: Value) -> tuple[Value, bool] | None:
    """``(table, squeeze)``: the [batch|1, seq, dim] cos/sin table that ``value`` ([., 1, seq,
    dim]) unsqueezes (squeeze False), or ``value`` itself when it is a [batch|1, 1, seq, dim]
    tensor that broadcasts over the heads of ``x4`` (squeeze True: dim 1 is dropped)."""
    node = producer(value, ("aten.unsqueeze.default",))
    if node is not None and node.arg(1) == 1 and is_tensor(node.args[0]) and \
            node.args[0].tensor_type.rank == 3:
        return node.args[0], False
    if not is_tensor(value) or value.tensor_type.rank != 4:
        return None
    shape, xs = value.tensor_type.shape, x4.tensor_type.shape
    if shape[1] != 1 or shape[0] not in (1, xs[0]) or shape[2] != xs[2]:
        return None
    return value, True


def _partial_rotary(add: Node, x4: Value) -> tuple[Value, Value] | None:
    """``(whole, result)`` when the rotated ``x4`` is ``whole[..., :r]`` and the add's only use
    is ``cat([add, whole[..., r:]], -1)`` (partial rotary: the other features pass through)."""
    first = producer(x4, ("aten.slice.Tensor",))
    if first is None or first.arg(1) not in (-1, 3) or first.arg(2, 0) not in (0, None) or \
            first.arg(4, 1) != 1 or not is_tensor(first.args[0]):
        return None
    whole, r = first.args[0], first.arg(3)
    users = add.outputs[0].users()
    cat = users[0] if len(users) == 1 and users[0].op == "aten.cat.default" else None
    parts = cat.arg(0) if cat is not None else None
    if cat is None or cat.arg(1, 0) not in (-1, 3) or not isinstance(parts, (list, tuple)) or \
            len(parts) != 2 or parts[0] is not add.outputs[0]:
        return None
    rest = producer(parts[1], ("aten.slice.Tensor",))
    if rest is None or rest.args[0] is not whole or rest.arg(1) not in (-1, 3) or \
            rest.arg(2) != r or rest.arg(4, 1) != 1:
        return None
    return whole, cat.outputs[0]


def raise_rotary(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: ``x*cos + rotate_half(x)*sin`` (or ``rotate_every_two(x)``) on a [batch, heads,
    seq, head_dim] head split."""
    if node.op != "aten.add.Tensor" or number(node.attr("alpha", 1)) != 1.0:
        return SKIP
    for a, b in operand_pairs(node):
        if not (is_tensor(a) and is_tensor(b)) or a.tensor_type.rank != 4:
            continue
        for x4, cos4 in operand_pairs(producer(a, ("aten.mul.Tensor",))):
            for turned, sin4 in operand_pairs(producer(b, ("aten.mul.Tensor",))):
                found = _rotate_half_of(turned, 4)
                interleaved = found is None
                if interleaved:
                    every_two = _rotate_every_two_of(turned)
                    found = (every_two, None) if every_two is not None else None
                if found is None or found[0] is not x4 or not is_tensor(x4):
                    continue
                tables = _table(cos4, x4), _table(sin4, x4)
                if tables[0] is None or tables[1] is None:
                    return ("the cos/sin tables are not [batch|1, seq, head_dim] tables "
                            "broadcast over the heads")
                cos, sin = tables[0][0], tables[1][0]
                replaced, whole = node.outputs[0], _partial_rotary(node, x4)
                if whole is not None:  # rotary on the first features of each head only
                    x4, replaced = whole
                heads, dim = x4.tensor_type.shape[1], x4.tensor_type.shape[3]
                rot_dim = cos.tensor_type.shape[-1]
                if not (isinstance(heads, int) and isinstance(dim, int)) or \
                        sin.tensor_type.shape[-1] != rot_dim or \
                        (rot_dim != dim and whole is None):
                    return "the rotary tables do not cover the whole head"
                src = split_heads_source(x4, heads, dim, ctx.env)
                scaled = scalar_operand(x4, ("aten.mul.Tensor",)) if isinstance(src, str) else None
                if scaled is not None:  # q * scale before the rotary (ESM): scaled after it
                    inner = split_heads_source(scaled[0], heads, dim, ctx.env)
                    if not isinstance(inner, str):
                        src = inner
                if isinstance(src, str):
                    return src
                xt = src.tensor_type
                anchor = replaced.producer
                squeezed = []
                for table, squeeze in tables:
                    if squeeze:
                        t = table.tensor_type
                        anchor = module.graph.create_node(
                            "aten.squeeze.dim", (table, 1), {},
                            [TensorType(t.dtype, (t.shape[0],) + tuple(t.shape[2:]))],
                            names="rotary_table", after=anchor)
                        anchor.loc = node.loc
                        table = anchor.outputs[0]
                    squeezed.append(table)
                cos, sin = squeezed
                attrs = {"head_dim": dim, **({"interleaved": True} if interleaved else {})}
                rot = module.graph.create_node("rotary", (src, cos, sin), attrs, [xt],
                                               names="rotary", after=anchor)
                rotated = rot.outputs[0]
                if scaled is not None:  # rotary is linear: scaling after it is the same
                    mul = module.graph.create_node("aten.mul.Tensor", (rotated, scaled[1]), {},
                                                   [xt], names="rotary_scaled", after=rot)
                    mul.loc = node.loc
                    rotated, rot = mul.outputs[0], mul
                unflat = module.graph.create_node(
                    "aten.unflatten.int", (rotated, -1, [heads, dim]), {},
                    [TensorType(xt.dtype, xt.shape[:-1] + (heads, dim))], names="rotary_heads",
                    after=rot)
                split = module.graph.create_node(
                    "aten.transpose.int", (unflat.outputs[0], 1, 2), {}, [replaced.type],
                    names="rotary_heads", after=unflat)
                rot.loc = unflat.loc = split.loc = node.loc
                module.graph.replace_all_uses(replaced, split.outputs[0])
                return None
    return SKIP


