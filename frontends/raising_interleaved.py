"""Raising GPT-J's interleaved rotary: ``rotate_every_two`` (on ``[B, S, heads, head_dim]``,
before the heads move ahead of the sequence, optionally on the first features of each head)
becomes ``rotary(interleaved=True)``. Run with :data:`optc.frontends.raising_parallel.FUSED_RULES`
(before raising.py's composite rules). Matched on the graph alone, never on names."""

from __future__ import annotations

from typing import Any

from optc.frontends.layout import unflatten_heads_source
from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["raise_interleaved_rotary"]


def _producer(value: Any, *ops: str) -> Node | None:
    node = value.producer if isinstance(value, Value) else None
    return node if node is not None and node.op in ops else None


_BIG = 2 ** 62


def _through_noop_slices(value: Any) -> Any:
    """``value`` without slices that keep everything (``x[:, :]``)."""
    while True:
        node = _producer(value, "aten.slice.Tensor")
        if node is None or node.arg(2, 0) not in (0, None) or node.arg(4, 1) != 1 or \
                not (node.arg(3) is None or (isinstance(node.arg(3), int) and node.arg(3) >= _BIG)):
            return value
        value = node.args[0]


def _last_dim_slice(value: Any, rank: int) -> tuple[Value, int, int | None, int] | None:
    """``(x, start, end, step)`` when ``value`` is ``x[..., start:end:step]``."""
    node = _producer(value, "aten.slice.Tensor")
    if node is None or node.arg(1, 0) not in (-1, rank - 1) or not isinstance(node.args[0], Value):
        return None
    start, end, step = node.arg(2, 0) or 0, node.arg(3), node.arg(4, 1)
    if not isinstance(start, int) or not isinstance(step, int):
        return None
    end = None if end is None or (isinstance(end, int) and end >= _BIG) else end
    return _through_noop_slices(node.args[0]), start, end, step


def _every_two_of(value: Any) -> Value | None:
    """``x`` when ``value`` is ``flatten(stack([-x[..., 1::2], x[..., ::2]], -1), -2)``."""
    flat = _producer(value, "aten.flatten.using_ints")
    stack = _producer(flat.args[0], "aten.stack.default") if flat is not None else None
    if stack is None or flat.arg(1) not in (-2, 3) or flat.arg(2, -1) not in (-1, 4) or \
            stack.arg(1, 0) not in (-1, 4) or len(stack.arg(0, ())) != 2:
        return None
    neg_v, even_v = stack.arg(0)
    neg = _producer(neg_v, "aten.neg.default")
    odd = _last_dim_slice(neg.args[0], 4) if neg is not None else None
    even = _last_dim_slice(even_v, 4)
    if odd is None or even is None or odd[0] is not even[0] or odd[1:] != (1, None, 2) or \
            even[1:] != (0, None, 2):
        return None
    return odd[0]


def _interleaved_table(value: Any) -> Value | None:
    """The [batch|1, seq, rot] table of ``repeat_interleave(t[:, :, None, :], 2, 3)``
    ([., seq, 1, rot], each frequency twice in a row), squeezed back to rank 3."""
    rep = _producer(value, "aten.repeat_interleave.self_int")
    if rep is None or rep.arg(1) != 2 or rep.arg(2) not in (3, -1):
        return None
    t = rep.outputs[0].tensor_type
    return rep.outputs[0] if t.rank == 4 and t.shape[2] == 1 else None


def raise_interleaved_rotary(module: Module, node: Node, ctx: Any) -> str | None:
    """Root: ``x*cos + rotate_every_two(x)*sin`` on a [batch, seq, heads, head_dim] head split
    (GPT-J, before the heads move ahead of the sequence), possibly on the first ``rot``
    features of each head with the rest concatenated back -> ``rotary(interleaved=True)``."""
    if node.op != "aten.add.Tensor" or node.attr("alpha", 1) != 1 or len(node.args) < 2:
        return ""
    for a, b in (node.args[:2], node.args[1::-1]):
        ma, mb = _producer(a, "aten.mul.Tensor"), _producer(b, "aten.mul.Tensor")
        if ma is None or mb is None:
            continue
        for x4, cos4 in (ma.args[:2], ma.args[1::-1]):
            for turned, sin4 in (mb.args[:2], mb.args[1::-1]):
                x = _every_two_of(turned)
                if x is None or _through_noop_slices(x4) is not x:
                    continue
                cos, sin = _interleaved_table(cos4), _interleaved_table(sin4)
                if cos is None or sin is None:
                    return "the cos/sin tables are not [batch|1, seq, 1, rot] repeated twice in a row"
                return _rewrite_interleaved(module, node, x, cos, sin, ctx)
    return ""


def _rewrite_interleaved(module: Module, node: Node, x: Value, cos: Value, sin: Value,
                         ctx: Any) -> str | None:
    replaced, whole = node.outputs[0], x
    part = _last_dim_slice(x, 4)
    rot = x.tensor_type.shape[-1]
    if part is not None and part[1] == 0 and part[3] == 1:  # rotary on the first rot features
        users = node.outputs[0].users()
        cat = users[0] if len(users) == 1 and users[0].op == "aten.cat.default" else None
        pieces = cat.arg(0) if cat is not None else None
        rest = _last_dim_slice(pieces[1], 4) if pieces is not None and len(pieces) == 2 else None
        if cat is None or cat.arg(1, 0) not in (-1, 3) or pieces[0] is not node.outputs[0] or \
                rest is None or rest[0] is not part[0] or rest[1:] != (rot, None, 1):
            return "the rotated features are not concatenated back with the rest of each head"
        whole, replaced = part[0], cat.outputs[0]
    wt = whole.tensor_type
    heads, dim = wt.shape[2], wt.shape[3]
    if not (isinstance(heads, int) and isinstance(dim, int)) or cos.tensor_type.shape[-1] != rot \
            or sin.tensor_type.shape[-1] != rot:
        return "the rotary tables do not match the rotated features"
    src = unflatten_heads_source(whole, heads, dim, ctx.env)
    if src is None:
        return f"%{whole.name} is not a [batch, seq, {heads}*{dim}] tensor viewed per head"
    anchor, tables = replaced.producer, []
    for table in (cos, sin):
        t = table.tensor_type
        anchor = module.graph.create_node(
            "aten.squeeze.dim", (table, 2), {}, [TensorType(t.dtype, (t.shape[0], t.shape[1], t.shape[3]))],
            names="rotary_table", after=anchor)
        anchor.loc = node.loc
        tables.append(anchor.outputs[0])
    new = module.graph.create_node("rotary", (src, *tables), {"head_dim": dim, "interleaved": True},
                                   [src.tensor_type], names="rotary", after=anchor)
    heads_view = module.graph.create_node("aten.unflatten.int", (new.outputs[0], -1, [heads, dim]),
                                          {}, [replaced.type], names="rotary_heads", after=new)
    new.loc = heads_view.loc = node.loc
    module.graph.replace_all_uses(replaced, heads_view.outputs[0])
    return None
