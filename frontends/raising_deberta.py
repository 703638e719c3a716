"""Raising DeBERTa's disentangled attention: ``attention`` whose mask is a ``disentangled_bias``.

DeBERTa(-v2/v3) computes attention on heads flattened into the batch ([batch*heads, seq,
head_dim], ``bmm``), and adds to the content scores two position terms (c2p, p2c) gathered from
the relative embeddings projected by the layer's own key/query projections (or by separate ones):

    total  = bmm(q, k^T * s) + [c2p * s'] + [p2c * s']
    c2p    = gather(bmm(q, pos_key^T), -1, expand(clamp(r + span, 0, 2*span-1)))
    p2c    = gather(bmm(k, pos_query^T), -1, expand(clamp(-r + span, 0, 2*span-1)))^T
    probs  = softmax(masked_fill(view(total, [B, H, S, S]), ~mask, lowest))
    result = merge_heads(bmm(view(probs, [B*H, S, S]), v))

The rule, rooted at the softmax, checks every piece on the graph (never module or parameter
names): q/k/v are head splits of [batch, seq, heads*head_dim] projections flattened into the
batch (proven by evaluating the view chain on index tensors), the position tables are a
[2*span, heads*head_dim] projection split into heads and tiled over the batch, the scales are
constants (torch.export lifts ``sqrt(head_dim * factor)`` into a parameter), both terms read the
same relative positions. It rewrites to ``disentangled_bias(q, k, r, pos_key, pos_query, mask)``
feeding ``attention(q, k, v, bias)``; the unused ATen nodes are left for DCE (the in-place
``add_`` that sums the terms becomes an ``add``, so DCE can drop it).

Without position terms (DeBERTa-v2's default ``relative_attention=False``) the same rule
raises the plain ``bmm(q, k^T * s)`` scores to ``attention`` whose additive mask is the dtype's
lowest value where the boolean mask is False (so a query row with no key attends uniformly,
as in Hugging Face).

This module is self-contained (the generic rules in :mod:`optc.frontends.raising` call it);
a rule returns None when it rewrote, ``""`` when the root is not this pattern at all, or a
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from optc.frontends.layout import (
    eval_chain,
    eval_dim,
    index_tensor,
    merge_heads_target,
    same_shape,
    split_heads_source,
)
from optc.ir.core import Module, Node, Parameter, Value, map_values
from optc.ir.targets import bind_args, resolve
from optc.ir.types import TensorType

__all__ = ["raise_disentangled_attention"]

_SKIP = ""
_VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
_ADDS = ("aten.add.Tensor", "aten.add_.Tensor")
_SCALES = ("aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar")
_CONSTANT_OPS = ("aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar",
                 "aten.sqrt.default", "aten.rsqrt.default", "aten.reciprocal.default",
                 "aten.to.dtype", "aten._to_copy.default", "aten.pow.Tensor_Scalar",
                 "aten.lift_fresh_copy.default")
_TABLE_OPS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
              "aten.permute.default", "aten.transpose.int", "aten.contiguous.default",
              "aten.clone.default", "aten.repeat.default", "aten.unsqueeze.default",
              "aten.expand.default")
_MAX_CHAIN = 8


def _producer(value: Any, ops: tuple[str, ...]) -> Node | None:
    if isinstance(value, Value) and value.producer is not None and value.producer.op in ops:
        return value.producer
    return None


def _is_tensor(v: Any) -> bool:
    return isinstance(v, Value) and isinstance(v.type, TensorType)


def _constant(value: Any, depth: int = 6) -> Any:
    """The value of ``value`` when it is computed from one-element parameters and literals
    alone (the ``sqrt(head_dim * factor)`` that torch.export lifts into a parameter), else None."""
    if isinstance(value, Parameter):
        return value.data if value.data.numel() == 1 else None
    if not isinstance(value, Value):
        return value
    node = value.producer
    if node is None or node.op not in _CONSTANT_OPS or depth == 0:
        return None

    def lookup(v: Value) -> Any:
        c = _constant(v, depth - 1)
        if c is None:
            raise LookupError(v.name)
        return c

    try:
        return resolve(node.op)(*map_values(node.args, lookup), **map_values(node.kwargs, lookup))
    except (LookupError, RuntimeError, TypeError):
        return None


def _scalar(value: Any) -> float | None:
    """A number, or a one-element constant tensor, as a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    c = _constant(value)
    if isinstance(c, torch.Tensor) and c.numel() == 1 and c.dtype.is_floating_point:
        return float(c)
    return None


def _unscaled(value: Any) -> tuple[Any, float]:
    """``(x, s)`` when ``value`` is ``x * c`` or ``x / c`` for constants (``s`` the product)."""
    factor = 1.0
    for _ in range(3):
        node = _producer(value, _SCALES)
        if node is None or not _is_tensor(node.arg(0)):
            break
        c = _scalar(node.arg(1))
        if c is None or c == 0:
            break
        factor *= c if node.op.startswith("aten.mul") else 1.0 / c
        value = node.arg(0)
    return value, factor


def _swapped(value: Any) -> Value | None:
    """``x`` when ``value`` is ``x`` with its last two dims swapped."""
    node = _producer(value, ("aten.transpose.int",))
    if node is None or not _is_tensor(node.arg(0)):
        return None
    rank = node.arg(0).tensor_type.rank
    if sorted(d % rank for d in node.args[1:3]) != [rank - 2, rank - 1]:
        return None
    return node.arg(0)


def _flat_heads(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] projection that ``value`` ([B*heads, S, dim]) splits into heads
    flattened into the batch."""
    view = _producer(value, _VIEWS)
    x4 = view.args[0] if view is not None else None
    if not _is_tensor(x4) or x4.tensor_type.rank != 4 or value.tensor_type.rank != 3:
        return f"%{value.name} is not a view of [batch, heads, seq, head_dim] heads"
    x = index_tensor(x4, env)
    got = eval_chain([view], x4, x, env) if x is not None else None
    if got is None or not torch.equal(got, x.reshape(-1, x.shape[2], x.shape[3])):
        return f"%{value.name} does not flatten the heads of %{x4.name} into the batch"
    return split_heads_source(x4, heads, dim, env)


def _merged(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] value that merges ``value`` ([B*heads, S, dim]) back."""
    users = value.users()
    view = users[0] if len(users) == 1 and users[0].op in _VIEWS else None
    out = view.outputs[0] if view is not None else None
    if out is None or out.tensor_type.rank != 4 or out.tensor_type.shape[1] != heads:
        return f"the result %{value.name} is not viewed as [batch, {heads}, seq, {dim}]"
    x = index_tensor(value, env)
    got = eval_chain([view], value, x, env) if x is not None else None
    if got is None or not torch.equal(got, x.reshape(-1, heads, x.shape[1], x.shape[2])):
        return f"the result %{value.name} is not viewed as [batch, {heads}, seq, {dim}]"
    return merge_heads_target(out, heads, dim, env)


def _table(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [1|, rows, heads*dim] projection that ``value`` ([B*heads, rows, dim]) splits into
    heads and tiles over the batch."""
    batch_heads = eval_dim(value.tensor_type.shape[0], env)
    chain: list[Node] = []
    current: Any = value
    for _ in range(_MAX_CHAIN):
        node = current.producer
        if node is None or node.op not in _TABLE_OPS or not _is_tensor(node.arg(0)):
            break
        chain.insert(0, node)
        current = node.args[0]
        t = current.tensor_type
        if t.shape[-1] != heads * dim or t.rank not in (2, 3) or (t.rank == 3 and t.shape[0] != 1):
            continue
        x = index_tensor(current, env)
        if x is None or batch_heads is None:
            continue
        got = eval_chain(chain, current, x, env)
        want = x.reshape(-1, heads, dim).transpose(0, 1).repeat(batch_heads // heads, 1, 1)
        if got is not None and got.shape == want.shape and torch.equal(got, want):
            return current
    return f"%{value.name} is not a [rows, {heads}*{dim}] projection split into heads and tiled"


@dataclass
class _Term:
    """One position term: ``gather(bmm(left, table^T), -1, clamp(+-r + span))`` (p2c: then
    transposed) times ``scale``."""

    left: Value
    table: Value
    relative: Value
    span: int
    scale: float
    p2c: bool


def _relative_index(index: Any, sign: int) -> tuple[Value, int] | str:
    """``(r, span)`` when ``index`` is ``expand(squeeze(clamp(sign*r + span, 0, 2*span-1)))``."""
    expand = _producer(index, ("aten.expand.default",))
    value = expand.args[0] if expand is not None else index
    for _ in range(2):
        node = _producer(value, ("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default"))
        if node is None:
            break
        value = node.args[0]
    clamp = _producer(value, ("aten.clamp.default",))
    add = _producer(clamp.args[0], ("aten.add.Tensor", "aten.add.Scalar")) if clamp else None
    if add is None or add.attr("alpha", 1) != 1 or not isinstance(add.arg(1), int):
        return "the gather index is not clamp(relative position + span, 0, 2*span - 1)"
    span = add.arg(1)
    if clamp.arg(1) != 0 or clamp.arg(2) != 2 * span - 1:
        return f"the relative positions are not clamped to [0, {2 * span - 1}]"
    rel = add.args[0]
    if sign < 0:
        neg = _producer(rel, ("aten.neg.default",))
        if neg is None:
            return "the p2c index does not negate the relative positions"
        rel = neg.args[0]
    if not _is_tensor(rel) or rel.tensor_type.dtype.is_floating_point or rel.tensor_type.rank < 2 \
            or any(d != 1 for d in rel.tensor_type.shape[:-2]):
        return "the relative positions are not an integer [1, ..., q_len, k_len] tensor"
    return rel, span


def _term(value: Any) -> _Term | str:
    inner, scale = _unscaled(value)
    flipped = _swapped(inner)
    gather = _producer(flipped if flipped is not None else inner, ("aten.gather.default",))
    if gather is None:
        return f"%{getattr(value, 'name', value)} is not a gathered position term"
    a = bind_args(gather.op, gather.args, gather.kwargs)
    src = a["self"]
    if a["dim"] not in (-1, 2) or a.get("sparse_grad") or not _is_tensor(src) or src.tensor_type.rank != 3:
        return "the position term does not gather along the relative positions"
    bmm = _producer(src, ("aten.bmm.default",))
    table = _swapped(bmm.args[1]) if bmm is not None else None
    if table is None or not _is_tensor(bmm.args[0]):
        return "the position term is not bmm(heads, table^T)"
    found = _relative_index(a["index"], -1 if flipped is not None else 1)
    if isinstance(found, str):
        return found
    return _Term(bmm.args[0], table, found[0], found[1], scale, flipped is not None)


def _sum_terms(value: Any, adds: list[Node], depth: int = 4) -> list[Any]:
    """The summands of a tree of adds (``0 +`` dropped; in-place adds collected in ``adds``)."""
    node = _producer(value, _ADDS)
    if node is None or depth == 0 or node.attr("alpha", 1) != 1:
        return [value]
    if node.op == "aten.add_.Tensor":
        adds.append(node)
    terms = []
    for arg in node.args[:2]:
        if isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == 0:
            continue
        terms += _sum_terms(arg, adds, depth - 1)
    return terms


def _content_scores(value: Any) -> tuple[Value, Value, float] | None:
    """``(q, k, scale)`` when ``value`` is ``bmm(q, k^T)`` with constant factors on either."""
    outer, scale = _unscaled(value)
    bmm = _producer(outer, ("aten.bmm.default",))
    if bmm is None or not _is_tensor(bmm.args[0]):
        return None
    kt, inner = _unscaled(bmm.args[1])
    k = _swapped(kt)
    return None if k is None else (bmm.args[0], k, scale * inner)


def _plain_attention(module: Module, qkv: tuple[Value, Value, Value], fill: Node | None,
                     heads: int, dim: int, scale: float, target: Value, root: Node) -> None:
    """Rewrite DeBERTa's attention without position terms (``relative_attention=False``):
    ``attention(q, k, v, bias)`` where the additive ``bias`` is the dtype's lowest value where
    the boolean mask is False (``to(~mask) * lowest``), so that a query row with no key attends
    uniformly, exactly as the ``masked_fill`` before the softmax makes it do."""
    graph, anchor = module.graph, target.producer
    bias: Value | None = None
    if fill is not None:
        masked = fill.args[1]
        dtype = fill.outputs[0].tensor_type.dtype
        shape = masked.tensor_type.shape
        cast = graph.create_node("aten.to.dtype", (masked, dtype), {}, [TensorType(dtype, shape)],
                                 names="mask_float", after=anchor)
        lowest = graph.create_node("aten.mul.Scalar", (cast.outputs[0], torch.finfo(dtype).min), {},
                                   [TensorType(dtype, shape)], names="mask_bias", after=cast)
        cast.loc = lowest.loc = root.loc
        bias, anchor = lowest.outputs[0], lowest
    att = graph.create_node(
        "attention", (*qkv, bias), {"num_heads": heads, "head_dim": dim, "scale": scale,
                                    "causal": False},
        [target.tensor_type], names="attention", after=anchor)
    att.loc = root.loc
    graph.replace_all_uses(target, att.outputs[0])
    return None


def raise_disentangled_attention(module: Module, node: Node, ctx: Any) -> str | None:
    """Root: the softmax of DeBERTa's masked scores (see the module docstring)."""
    a = bind_args(node.op, node.args, node.kwargs)
    scores = a["self"]
    if not _is_tensor(scores) or scores.tensor_type.rank != 4 or a["dim"] not in (-1, 3):
        return _SKIP
    users = node.outputs[0].users()
    flat = users[0] if len(users) == 1 and users[0].op in _VIEWS else None
    flat_users = flat.outputs[0].users() if flat is not None else []
    pv = flat_users[0] if len(flat_users) == 1 and flat_users[0].op == "aten.bmm.default" else None
    if pv is None or pv.args[0] is not flat.outputs[0] or not _is_tensor(pv.args[1]):
        return _SKIP  # not attention on heads flattened into the batch
    # Up: [masked_fill(., ~mask, lowest)] <- view [B, H, S, S] <- content + position terms.
    mask = None
    fill = _producer(scores, ("aten.masked_fill.Scalar",))
    s4 = scores
    if fill is not None:
        inverted = _producer(fill.args[1], ("aten.bitwise_not.default", "aten.logical_not.default"))
        if inverted is None or not _is_tensor(inverted.args[0]) or \
                inverted.args[0].tensor_type.dtype != torch.bool:
            return "the scores are masked by a fill mask that is not ~(boolean mask)"
        if fill.args[2] != torch.finfo(scores.tensor_type.dtype).min:
            return "the masked scores are not filled with the dtype's lowest value"
        mask, s4 = inverted.args[0], fill.args[0]
    view = _producer(s4, _VIEWS)
    total = view.args[0] if view is not None else None
    if not _is_tensor(total) or total.tensor_type.rank != 3:
        return _SKIP
    heads = s4.tensor_type.shape[1]
    if not isinstance(heads, int) or not same_shape(
            (s4.tensor_type.shape[0] if heads == 1 else f"({s4.tensor_type.shape[0]})*{heads}",
             *s4.tensor_type.shape[2:]), total.tensor_type.shape, ctx.envs):
        return "the scores are not viewed from [batch*heads, q_len, k_len] to [batch, heads, ...]"
    add = _producer(total, ("aten.add.Tensor",))
    content, rel_sum = None, None
    if add is None:  # no position terms (relative_attention=False): plain scaled dot product
        content = _content_scores(total)
    elif add.attr("alpha", 1) == 1:
        for first, second in (add.args[:2], add.args[1::-1]):
            content = _content_scores(first)
            if content is not None:
                rel_sum = second
                break
    if content is None:
        return ("the scores are not bmm(query, key^T), optionally scaled by a constant and plus "
                "position terms")
    q3, k3, scale = content
    in_place: list[Node] = []
    terms = [_term(t) for t in _sum_terms(rel_sum, in_place)] if rel_sum is not None else []
    bad = [t for t in terms if isinstance(t, str)]
    if bad:
        return bad[0]
    c2p = [t for t in terms if not t.p2c]
    p2c = [t for t in terms if t.p2c]
    if len(c2p) > 1 or len(p2c) > 1:
        return "more than one c2p or p2c term"
    if any(t.left is not q3 for t in c2p) or any(t.left is not k3 for t in p2c):
        return "the position terms do not read the attention's own query (c2p) and key (p2c)"
    if terms and (len({id(t.relative) for t in terms}) != 1 or len({t.span for t in terms}) != 1
                  or len({t.scale for t in terms}) != 1):
        return "the c2p and p2c terms differ in relative positions, span or scale"
    dim = q3.tensor_type.shape[-1]
    if not isinstance(dim, int):
        return "the head size is symbolic"
    v3 = pv.args[1]
    sources = [_flat_heads(x, heads, dim, ctx.env) for x in (q3, k3, v3)]
    tables = {t.p2c: _table(t.table, heads, dim, ctx.env) for t in terms}
    target = _merged(pv.outputs[0], heads, dim, ctx.env)
    problems = [x for x in [*sources, *tables.values(), target] if isinstance(x, str)]
    if problems:
        return problems[0]
    q, k, v = sources
    if not terms:
        return _plain_attention(module, (q, k, v), fill, heads, dim, scale, target, node)
    rel = terms[0].relative
    if not same_shape(rel.tensor_type.shape[-2:], s4.tensor_type.shape[-2:], ctx.envs):
        return "the relative positions are not [q_len, k_len]"
    if any(n.args[0].users() != [n] or module.graph.is_output(n.args[0]) for n in in_place):
        return "an in-place add of the position terms updates a tensor that is read elsewhere"
    for n in in_place:  # nothing else reads the updated tensor: a plain add is the same
        n.op = "aten.add.Tensor"
    attrs = {"num_heads": heads, "head_dim": dim, "span": terms[0].span, "scale": terms[0].scale}
    bias = module.graph.create_node(
        "disentangled_bias", (q, k, rel, tables.get(False), tables.get(True), mask), attrs,
        [TensorType(s4.tensor_type.dtype, s4.tensor_type.shape)], names="disentangled_bias",
        after=target.producer)
    att = module.graph.create_node(
        "attention", (q, k, v, bias.outputs[0]),
        {"num_heads": heads, "head_dim": dim, "scale": scale, "causal": False},
        [target.tensor_type], names="attention", after=bias)
    bias.loc = att.loc = node.loc
    module.graph.replace_all_uses(target, att.outputs[0])
    return None
