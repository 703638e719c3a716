"""Raising rules for attention: ``softmax(scale * Q K^T + B1 + B2 ...) V`` with Q, K, V per-head
views of projections of the layer input (proven on index tensors by :mod:`optc.frontends.layout`),
K and V possibly of fewer (repeated) heads, and the additive terms B kept as the model computes
them (summed into the ``attention`` op's bias operand); ``scaled_dot_product_attention`` nodes;
and the check that finds attention no rule explained (a softmax weighting values)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optc.frontends.layout import (
    MOVEMENT_OPS,
    merge_heads_projection,
    merge_heads_target,
    moves_as,
    repeat_kv_source,
    split_heads_source,
)
from optc.frontends.raising_common import (
    DIV,
    MAX_CHAIN,
    MUL,
    SKIP,
    RuleContext,
    is_swap_last_two,
    is_tensor,
    number,
    only_feeds,
    producer,
    replace_uses_with_op,
    scalar_operand,
)
from optc.frontends.raising_forms import FILLS, build_fill_term, fill_term, nan_where_no_key
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.targets import bind_args
from optc.ir.types import TensorType

__all__ = ["raise_sdpa", "raise_eager_attention", "weights_values"]

def _heads_and_size(t: TensorType, flat_heads: int | None) -> tuple[Any, Any] | None:
    """(heads, head_dim) of a [batch, heads, seq, head_dim] operand, or of a [batch*heads, seq,
    head_dim] one (heads flattened into the batch) when ``flat_heads`` gives its head count."""
    if t.rank == 4:
        return t.shape[1], t.shape[3]
    if t.rank == 3 and flat_heads is not None:
        return flat_heads, t.shape[2]
    return None


def _build_attention(module: Module, anchor: Node, q4: Value, k4: Value, v4: Value, mask: Any,
                     scale: float | None, causal: bool, out4: Value, ctx: RuleContext,
                     softcap: float | None = None, flat_heads: int | None = None) -> str | None:
    """Check that q/k/v are head splits (k/v possibly of fewer, repeated kv heads) and ``out4``
    is merged back; then rewrite. An operand or result of rank 3 has its ``flat_heads`` heads
    flattened into the batch ([batch*heads, seq, head_dim], what ``bmm`` multiplies)."""
    qt, kt, vt = q4.tensor_type, k4.tensor_type, v4.tensor_type
    found = [_heads_and_size(t, flat_heads) for t in (qt, kt, vt)]
    if None in found:
        return ("query/key/value are not 4-D [batch, heads, seq, head_dim] (nor [batch*heads, "
                "seq, head_dim] of heads flattened into the batch)")
    (heads, dim), (kv_heads, kdim), (v_heads, vdim) = found
    if not (isinstance(heads, int) and isinstance(dim, int)):
        return "the head count or head size is symbolic"
    if kv_heads != v_heads or kdim != dim or vdim != dim:
        return "query, key and value differ in head count or head size"
    if not isinstance(kv_heads, int) or heads % kv_heads:
        return "the key/value head count does not divide the query head count"
    if isinstance(mask, Value):
        mt = mask.type
        if not isinstance(mt, TensorType) or (mt.rank >= 3 and mt.shape[-3] not in (1, heads)):
            return "the mask's head dim is neither 1 (broadcast) nor the head count (a per-head bias)"
        if mt.rank >= 3 and mt.shape[-3] == heads and heads > 1 and mt.rank != 4:
            return "a per-head mask is not [batch|1, heads, q_seq, k_seq]"
    elif mask is not None:
        return "the mask is not a tensor"
    src = split_heads_source(q4, heads, dim, ctx.env)
    if isinstance(src, str):
        return src
    folded = scalar_operand(src, ("aten.mul.Tensor",))
    if folded is not None and folded[0].producer is not None and \
            folded[0].producer.op in ("linear", "rotary"):
        # a query scaled after its projection or rotary (ESM): the factor joins the op's scale,
        # so the analysis sees the projection (prune-heads slices it)
        src, scale = folded[0], (dim ** -0.5 if scale is None else scale) * folded[1]
    sources: list[Value] = [src]
    kv_counts = set()
    for v in (k4, v4):
        n = kv_heads
        src = split_heads_source(v, n, dim, ctx.env)
        if isinstance(src, str) and n == heads and v.tensor_type.rank == 4:
            repeated = repeat_kv_source(v, heads, dim, ctx.env)
            if repeated is not None:
                n = repeated[1]
                src = split_heads_source(repeated[0], n, dim, ctx.env)
        if isinstance(src, str):
            return src
        sources.append(src)
        kv_counts.add(n)
    if len(kv_counts) != 1:
        return "key and value have different kv head counts"
    target = merge_heads_target(out4, heads, dim, ctx.env)
    projected = _merged_through_projection(out4, heads, dim, ctx) \
        if isinstance(target, str) and out4.tensor_type.rank == 4 else None
    if isinstance(target, str) and projected is None:
        return target
    kwargs: dict[str, Any] = {"num_heads": heads, "head_dim": dim, "scale": scale, "causal": causal}
    kv = kv_counts.pop()
    if kv != heads:
        kwargs["num_kv_heads"] = kv
    if softcap is not None:
        kwargs["softcap"] = softcap
    if projected is None:
        replace_uses_with_op(module, anchor, target, "attention", (*sources, mask), kwargs, target.tensor_type)
        return None
    # rows merged, projected and moved back (nn.MultiheadAttention): the projection of the
    # merged heads, [B, S, heads*dim] -> [B, S, out] (moved to [S, B, out] when the model's
    # rows are sequence-first: the residual stream keeps the model's layout)
    (proj, result, seq_first), qt = projected, sources[0].tensor_type
    att = module.graph.create_node("attention", (*sources, mask), kwargs,
                                   [TensorType(qt.dtype, qt.shape[:-1] + (heads * dim,))],
                                   names="attention", after=anchor)
    att.loc = anchor.loc
    out_type = TensorType(qt.dtype, qt.shape[:-1] + (result.tensor_type.shape[-1],))
    if seq_first:
        lin = module.graph.create_node("linear", (att.outputs[0], *proj.args[1:3]), {}, [out_type],
                                       names="linear", after=att)
        lin.loc = proj.loc
        replace_uses_with_op(module, lin, result, "aten.transpose.int", (lin.outputs[0], 0, 1), {},
                             result.tensor_type).loc = proj.loc
    else:
        replace_uses_with_op(module, att, result, "linear", (att.outputs[0], *proj.args[1:3]), {},
                             out_type).loc = proj.loc
    dead = result.producer  # the old merge, projection and moves back (each read by the next)
    while dead is not None and dead.outputs[0] is not out4 and not dead.outputs[0].users():
        previous = dead.args[0].producer
        module.graph.remove(dead)
        dead = previous
    return None


def _merged_through_projection(out4: Value, heads: int, dim: int,
                               ctx: RuleContext) -> tuple[Node, Value, bool] | None:
    """``merge_heads_projection`` at both sizes, with a parameter weight (and bias)."""
    found = [merge_heads_projection(out4, heads, dim, env) for env in ctx.envs]
    if found[0] is None or found[0] != found[1]:
        return None
    proj = found[0][0]
    weight, bias = proj.args[1], proj.arg(2)
    if not isinstance(weight, Parameter) or not (bias is None or isinstance(bias, Parameter)):
        return None
    return found[0]


def raise_sdpa(module: Module, node: Node, ctx: RuleContext) -> str | None:
    a = bind_args(node.op, node.args, node.kwargs)
    if a.get("dropout_p") not in (0, 0.0, None):
        return "dropout_p is not 0 (capture the model in eval mode)"
    q4, k4, v4, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    if not all(is_tensor(v) for v in (q4, k4, v4)):
        return "query/key/value are not tensors"
    scale = a.get("scale")
    return _build_attention(module, node, q4, k4, v4, mask, None if scale is None else float(scale),
                            bool(a.get("is_causal")), node.outputs[0], ctx)


def raise_eager_attention(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: the softmax of ``[mask +] scale * matmul(q, k^T)`` that feeds ``matmul(., v)``;
    or, with the heads flattened into the batch, of ``view(alpha * bmm(q, k^T) [+ bias])``
    viewed back to [batch, heads, q, k] that feeds ``bmm(view(.), v)`` (``baddbmm`` adds the
    bias, e.g. ALiBi)."""
    a = bind_args(node.op, node.args, node.kwargs)
    scores = a["self"]
    if not is_tensor(scores) or scores.tensor_type.rank != 4 or a["dim"] not in (-1, 3):
        return SKIP
    if (a.get("dtype") is not None and a["dtype"] != scores.tensor_type.dtype) or a.get("half_to_float"):
        return SKIP
    # Down: softmax -> (same-dtype cast) -> matmul(probs, v), or -> flatten the heads into the
    # batch -> bmm(probs, v).
    found_pv = _probs_times_values(node, ctx)
    if found_pv is None:
        return SKIP  # a softmax that does not weight values is not attention
    if isinstance(found_pv, str):
        return found_pv
    pv, path = found_pv
    flat_heads = scores.tensor_type.shape[1] if pv.op == "aten.bmm.default" else None
    if any(len(v.users()) != 1 or module.graph.is_output(v) for v in path):
        return "the attention probabilities are used elsewhere (e.g. returned as attentions)"
    # Up: [+ B1 + B2 ...] <- [mul/div scale] <- matmul(q, transpose(k)); the B terms (padding or
    # causal masks, relative-position biases, ...) are kept as the model computes them.
    chain = _additive_chain(scores, ctx)
    if isinstance(chain, str):
        return chain
    scaled, terms = chain
    if not only_feeds(scores, node):
        return ("the masked scores are used outside the attention pattern" if terms else
                "the scores are used outside the attention pattern")
    dtype = scores.tensor_type.dtype
    if scaled.tensor_type.dtype != dtype:
        return "the scores change dtype when the additive terms are added"
    for term in terms:  # a bool or integer term is promoted by the add: cast it the same way
        if not isinstance(term, tuple) and term.tensor_type.dtype != dtype and term.tensor_type.dtype.is_floating_point:
            return f"the additive mask %{term.name} is not of the scores' dtype"
    softcap = None
    capped = _softcapped(scaled)
    if capped is not None:
        scaled, softcap = capped
    product = _qk_product(scaled, ctx)
    if product is None:
        return (f"%{scaled.name} is not matmul(query, key^T), optionally scaled by a constant "
                "(and soft-capped as c * tanh(x / c)), nor bmm/baddbmm(query, key^T) of heads "
                "flattened into the batch and viewed back to [batch, heads, q_len, k_len]")
    if (product.heads is None) != (flat_heads is None):
        return ("the scores and the values' product differ in where the heads are (one "
                "flattens them into the batch, the other does not)")
    steps = [product.node, *product.between]
    if any(not only_feeds(x.outputs[0], y) for x, y in zip(steps, steps[1:], strict=False)):
        return "the raw scores matmul(query, key^T) are used outside the attention pattern"
    q4, kt = product.q, product.kt
    k4 = kt.producer.args[0]
    if not only_feeds(kt, product.node):
        return "the transposed key is used outside the attention pattern"
    built: list[Node] = []
    if product.bias is not None:  # baddbmm's input: the innermost additive term
        bias = _unflattened_bias(module, product, scores, node, built)
        if isinstance(bias, str):
            return bias
        terms.insert(0, bias)
    mask = _sum_of(module, terms, dtype, node, built)
    if isinstance(mask, str):
        for created in reversed(built):
            module.graph.remove(created)
        return mask
    if any(isinstance(t, tuple) and t[1] == -math.inf for t in terms):
        # the model's softmax of a row whose keys are all -inf is NaN; the attention op's is 0
        mask = nan_where_no_key(module, mask, node, built)  # raising_forms.py
    reason = _build_attention(module, pv, q4, k4, pv.args[1], mask, product.scale, False,
                              pv.outputs[0], ctx, softcap=softcap, flat_heads=flat_heads)
    if reason:  # not raised: drop the casts and sums built for it
        for created in reversed(built):
            module.graph.remove(created)
    return reason


def _probs_times_values(softmax: Node, ctx: RuleContext) -> tuple[Node, list[Value]] | str | None:
    """``(pv, path)``: the product ``matmul(probs, v)`` the softmax's probabilities feed through
    same-dtype casts, or ``bmm(probs, v)`` after movement ops that flatten the heads into the
    batch ([batch, heads, q, k] -> [batch*heads, q, k], proven on an index tensor); ``path``
    the values from the softmax to the product's left operand. None when the probabilities
    feed no such product; the reason when they are moved but not flattened so."""
    probs, path, moves = softmax.outputs[0], [softmax.outputs[0]], []
    for _ in range(2 + MAX_CHAIN):
        users = probs.users()
        if len(users) != 1:
            return None
        user = users[0]
        if user.arg(0) is probs and user.op == ("aten.bmm.default" if moves else "aten.matmul.default"):
            if not is_tensor(user.arg(1)):
                return None
            if moves and not moves_as(moves, moves[0].args[0], ctx.env,
                                      lambda x: x.reshape(-1, *x.shape[2:])):
                return ("the probabilities are not [batch, heads, q_len, k_len] flattened into "
                        "[batch*heads, q_len, k_len] for bmm")
            return user, path
        if user.op in MOVEMENT_OPS and user.args[0] is probs:
            moves.append(user)
        elif not (user.op in ("aten.to.dtype", "aten.type_as.default") and not moves
                  and user.output.type == probs.type):
            return None
        probs = user.outputs[0]
        path.append(probs)
    return None


def _unflattened_bias(module: Module, product: _Product, scores: Value, before: Node,
                      built: list[Node]) -> Value | str:
    """``beta * bias`` of ``baddbmm(bias, q, k^T)`` on heads flattened into the batch, as a
    term of the [batch, heads, q, k] scores: a [batch*heads, q|1, k] bias viewed as [batch,
    heads, q|1, k] (the head axis that prune-heads slices), one that broadcasts over the
    flattened batch as it is."""
    bias, t = product.bias, product.bias.tensor_type
    out = product.node.outputs[0].tensor_type
    if t.rank == 3 and t.shape[0] != 1:
        if t.shape[0] != out.shape[0]:
            return f"the baddbmm input %{bias.name} is neither [batch*heads, ...] nor broadcast"
        shape = (scores.tensor_type.shape[0], product.heads, *t.shape[1:])
        node = module.graph.create_node("aten.unflatten.int", (bias, 0, [-1, product.heads]), {},
                                        [TensorType(t.dtype, shape)], names="attention_bias",
                                        before=before)
        built.append(node)
        bias = node.outputs[0]
    if product.beta != 1.0:
        node = module.graph.create_node("aten.mul.Tensor", (bias, product.beta), {},
                                        [bias.type], names="attention_bias", before=before)
        built.append(node)
        bias = node.outputs[0]
    return bias


def _leads_to_qk(value: Any, ctx: RuleContext, depth: int = MAX_CHAIN) -> bool:
    """Whether ``value`` is ``matmul(q, k^T)`` (scaled), possibly plus further terms (added,
    or written into it by ``masked_fill``)."""
    if not is_tensor(value) or depth == 0:
        return False
    capped = _softcapped(value)
    if _qk_product(capped[0] if capped is not None else value, ctx) is not None:
        return True
    fill = producer(value, FILLS)
    if fill is not None:
        return _leads_to_qk(fill.args[0], ctx, depth - 1)
    add = producer(value, ("aten.add.Tensor",))
    return add is not None and any(_leads_to_qk(x, ctx, depth - 1) for x in add.args[:2])


_Term = Value | tuple[Value, float]
"""An additive term on the scores: a tensor, or ``(mask, c)`` for ``where(mask, c, 0)`` (a
``masked_fill`` of the scores, see :mod:`optc.frontends.raising_forms`)."""


def _additive_chain(scores: Value, ctx: RuleContext) -> tuple[Value, list[_Term]] | str:
    """``(scaled, [B1, B2, ...])`` when ``scores = scaled + B1 + B2 ...`` in any association of
    ``aten.add`` (alpha 1) with ``scaled`` leading to the product ``matmul(q, k^T)``; the terms
    in order from the product up. A ``masked_fill(s, m, c)`` on the way is the term ``(m, c)``
    when that is exact, else the reason. Without adds: ``(scores, [])``."""
    terms: list[_Term] = []
    value = scores
    for _ in range(MAX_CHAIN):
        if _qk_product(value, ctx) is not None:
            break
        fill = producer(value, FILLS)
        if fill is not None and _leads_to_qk(fill.args[0], ctx):
            found = fill_term(fill)
            if isinstance(found, str):
                return found
            if not only_feeds(fill.args[0], fill):
                return "the scores before the masked_fill are used outside the attention pattern"
            terms.append(found)
            value = fill.args[0]
            continue
        add = producer(value, ("aten.add.Tensor",))
        if add is None or number(add.attr("alpha", 1)) != 1.0 or \
                not all(is_tensor(x) for x in add.args[:2]):
            break
        first, second = add.args[:2]
        if _leads_to_qk(first, ctx):
            inner, term = first, second
        elif _leads_to_qk(second, ctx):
            inner, term = second, first
        else:
            break
        if not only_feeds(inner, add):
            return "the masked scores are used outside the attention pattern"
        terms.append(term)
        value = inner
    for i, term in enumerate(terms):  # c + B is not c where an inner term B is -inf
        if isinstance(term, tuple) and math.isfinite(term[1]) and i + 1 < len(terms):
            return ("a masked_fill with a finite value over other additive terms is not an "
                    "additive term exactly (fill with float('-inf'))")
    return value, terms[::-1]


def _sum_of(module: Module, terms: list[_Term], dtype: Any, before: Node,
            built: list[Node]) -> Value | None | str:
    """The one additive operand of ``attention``: None, the single term, or the terms added
    by new nodes (before ``before``), typed by broadcasting their shapes. A term of another
    (bool or integer) dtype is cast to the scores' ``dtype`` first, as the add promoted it; a
    ``(mask, c)`` term becomes ``where(mask, c, 0)``. The new nodes are appended to ``built``."""
    if not terms:
        return None
    shapes = [(t[0] if isinstance(t, tuple) else t).tensor_type.shape for t in terms]
    shape: tuple[Any, ...] | None = shapes[0]
    for other in shapes[1:]:
        shape = _broadcast(shape, other)
        if shape is None:
            return "the additive terms of the scores do not broadcast to one known shape"
    def new(op: str, args: tuple, shape: tuple[Any, ...]) -> Value:
        built.append(module.graph.create_node(op, args, {}, [TensorType(dtype, shape)],
                                              names="attention_bias", before=before))
        return built[-1].outputs[0]

    cast = [build_fill_term(module, *t, dtype, before, built) if isinstance(t, tuple) else
            t if t.tensor_type.dtype == dtype else new("aten.to.dtype", (t, dtype), t.tensor_type.shape)
            for t in terms]
    total = cast[0]
    for term in cast[1:]:
        total = new("aten.add.Tensor", (total, term), shape)
    return total


def _broadcast(a: tuple[Any, ...] | None, b: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The broadcast of shapes ``a`` and ``b`` (ints or symbolic dims), or None when it depends
    on run-time values."""
    if a is None:
        return None
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1 or x == y:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return tuple(out[::-1])


def _softcapped(value: Value) -> tuple[Value, float] | None:
    """``(x, c)`` when ``value`` is ``c * tanh(x / c)`` (or ``tanh(x * (1/c)) * c``) with each
    intermediate read once: Gemma 2's attention logit soft-capping."""
    outer = scalar_operand(value, MUL)
    if outer is None or outer[1] <= 0:
        return None
    tanh = producer(outer[0], ("aten.tanh.default", "tanh"))
    if tanh is None or not only_feeds(outer[0], value.producer):
        return None
    inner = scalar_operand(tanh.args[0], DIV)
    cap = inner[1] if inner is not None else None
    if inner is None:
        inner = scalar_operand(tanh.args[0], MUL)
        cap = 1.0 / inner[1] if inner is not None and inner[1] else None
    if inner is None or cap is None or not math.isclose(cap, outer[1], rel_tol=1e-6) or \
            not only_feeds(tanh.args[0], tanh):
        return None
    return inner[0], outer[1]


@dataclass
class _Product:
    """The scores' product ``scale * q @ kt`` (``kt`` the transposed key) as the model computes
    it: ``matmul`` of [batch, heads, seq, head_dim] operands, or ``bmm``/``baddbmm`` of heads
    flattened into the batch whose result is viewed back to [batch, heads, q, k]."""

    node: Node
    q: Value
    kt: Value
    scale: float
    between: list[Node]
    """The nodes from the product to the scores (scalings, the view back), in order."""
    heads: int | None = None
    """The head count of heads flattened into the batch; None for 4-D operands."""
    bias: Value | None = None
    """``baddbmm``'s input, added ``beta`` times to the product (None for a product alone)."""
    beta: float = 1.0


def _scaled(value: Value) -> tuple[Value, float] | None:
    """``(x, c)`` when ``value`` is ``x * c`` or ``x / c`` for a nonzero constant ``c``."""
    found = scalar_operand(value, MUL) or scalar_operand(value, DIV)
    if found is None or found[1] == 0:
        return None
    return found[0], found[1] if value.producer.op in MUL else 1.0 / found[1]


def _qk_product(value: Value, ctx: RuleContext) -> _Product | None:
    """The product of ``value`` when it is ``matmul(q, k^T)`` times/over a constant, or
    ``[c *] view(bmm(q, k^T) [* c] | baddbmm(bias, q, k^T))`` whose view moves the heads out
    of the batch ([batch*heads, q, k] -> [batch, heads, q, k], proven on an index tensor)."""
    between: list[Node] = []
    scale = 1.0
    found = _scaled(value)
    if found is not None:
        between.insert(0, value.producer)
        value, scale = found
    qk = producer(value, ("aten.matmul.default",))
    if qk is not None:
        if not all(is_tensor(x) for x in qk.args[:2]) or qk.args[0].tensor_type.rank != 4:
            return None
        kt = qk.args[1].producer
        if kt is None or not is_swap_last_two(kt, 4) or not is_tensor(kt.args[0]):
            return None
        return _Product(qk, qk.args[0], qk.args[1], scale, between)
    t = value.type
    heads = t.shape[1] if isinstance(t, TensorType) and t.rank == 4 else None
    if not isinstance(heads, int):
        return None
    moves, flat = [], value  # Heads flattened into the batch: the view back to 4-D.
    while flat.producer is not None and flat.producer.op in MOVEMENT_OPS and len(moves) < MAX_CHAIN \
            and is_tensor(flat.producer.args[0]):
        moves.insert(0, flat.producer)
        flat = flat.producer.args[0]
    if not moves or flat.tensor_type.rank != 3:
        return None
    if not moves_as(moves, flat, ctx.env, lambda x: x.unflatten(0, (-1, heads))):
        return None
    between[:0] = moves
    found = _scaled(flat)
    if found is not None:
        between.insert(0, flat.producer)
        flat, scale = found[0], scale * found[1]
    qk = producer(flat, ("aten.bmm.default", "aten.baddbmm.default"))
    if qk is None:
        return None
    a = bind_args(qk.op, qk.args, qk.kwargs)
    q, kt = (a["batch1"], a["batch2"]) if qk.op == "aten.baddbmm.default" else (a["self"], a["mat2"])
    alpha, beta = number(a.get("alpha", 1)), number(a.get("beta", 1))
    bias = a["self"] if qk.op == "aten.baddbmm.default" and beta != 0 else None
    if alpha is None or beta is None or not (is_tensor(q) and is_tensor(kt)) or \
            (bias is not None and not is_tensor(bias)):
        return None
    if kt.producer is None or not is_swap_last_two(kt.producer, 3) or not is_tensor(kt.producer.args[0]):
        return None
    return _Product(qk, q, kt, scale * alpha, between, heads, bias, beta)


_SOFTMAX = ("aten.softmax.int", "aten._softmax.default", "aten._safe_softmax.default")
_PRODUCTS = ("aten.matmul.default", "aten.bmm.default", "aten.einsum.default")


_PASS_THROUGH = ("aten.to.dtype", "aten.type_as.default", "aten._to_copy.default", "aten.dropout.default",
                 "aten.slice.Tensor", "aten.narrow.default", "aten.select.int")
"""Besides movement ops, what probabilities may pass on their way to the values (a slice drops
attention-sink columns, as GPT-OSS does)."""


def weights_values(node: Node) -> bool:
    """Whether ``node`` is a softmax whose result (through views, casts and slices) is the left
    operand of a matrix product: probabilities weighting values, i.e. an attention."""
    if node.op not in _SOFTMAX:
        return False
    frontier, seen = list(node.outputs), 0
    while frontier and seen < 4 * MAX_CHAIN:
        value = frontier.pop()
        seen += 1
        for user in value.users():
            if user.op in _PRODUCTS:
                return True
            if user.op in MOVEMENT_OPS or user.op in _PASS_THROUGH:
                frontier += user.outputs
    return False
