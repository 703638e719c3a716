"""Raising: rewrite ATen patterns into optc's high-level transformer ops.

Each rule is pattern + check + rewrite (as in onnxscript's rewriter). A check that fails returns
a reason, so "why was this attention not raised?" has an answer:
``raise_high_level_ops(module).misses`` lists them. A rule whose root node does not look like
its pattern at all (most ``aten.mul`` nodes are not GELUs) stays silent.

Rules run in two phases. Composite patterns first, on the plain ATen graph:

- ``attention`` from the eager form ``matmul(q, k^T) -> mul/div scale -> add mask -> softmax
  -> matmul(., v)``; the additive float mask is kept (SDPA adds a float mask to the scores);
  batched-matmul ``einsum``s are matmuls and a ``masked_fill`` of the scores is an additive
  term where exact (:mod:`optc.frontends.raising_forms`); an output projection applied to
  heads merged into [seq*batch, d] rows and moved back (``nn.MultiheadAttention``) becomes a
  ``linear`` on the attention's result;
- ``linear`` from Conv1D-style ``view -> addmm(bias, x, W[in, out]) -> view`` (a new
  parameter holds ``W^T``), from ``addmm``/``mm`` on a transposed weight and from
  ``matmul(x, w.t()) (+ bias)``;
- ``gelu(approximate="tanh")`` from ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))``;
- ``rms_norm`` from ``(offset + w) * (x * rsqrt(mean(x^2, -1) + eps))``;
- ``rotary`` from ``x*cos + rotate_half(x)*sin`` on a head split (partial rotary: on the first
  features of each head, the rest concatenated back);
- fused projections viewed as ``[B, S, parts, heads, head_dim]`` and unbound (ModernBERT's
  Wqkv) -> one linear per part.
- DeBERTa's disentangled attention (heads flattened into the batch, c2p/p2c position terms)
  -> ``attention`` with a ``disentangled_bias`` mask (in :mod:`optc.frontends.raising_deberta`).
- before all of them, fused per-head q/k/v projections (GPT-NeoX, Falcon) -> one linear per
  part, and GPT-J's interleaved rotary; after all of them, each parallel attention+FFN layer's
  sum ``(attn + ffn) + x`` -> ``(x + attn) + ffn`` (in :mod:`optc.frontends.raising_parallel`).

A softmax whose probabilities still weight values (matmul/bmm, through views) after every rule
ran, and that no rule gave a reason for, is reported as a miss too: an attention form no rule
knows is never skipped silently (structural passes refuse on misses).

Before them, casts to the type a tensor already has and zero-width concatenation operands are
removed. Then one-node rules: ``scaled_dot_product_attention`` -> ``attention``,
``aten.linear``, ``layer_norm``, ``embedding`` and activations. Attention rules accept key and
value with fewer heads than the query, directly (``enable_gqa``) or repeated (``repeat_kv``,
proven by evaluation), as grouped-query attention, and a mask with one plane per head (an
additive bias such as T5's relative positions). Last, projections whose outputs are split,
chunked or sliced into parts (GPT-2's c_attn, Phi-3's qkv_proj and gate_up_proj) become one
``linear`` per part.

Structure is found from the graph alone: an attention rule proves, by evaluating the
surrounding view/transpose/reshape chain on an index tensor, that its operands are a
[batch, seq, heads*head_dim] tensor split into heads and that its result is merged back.
Module and parameter names are never used. Rewrites only redirect uses; dead leftovers
(and parameters no longer read) are removed by DCE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optc.frontends.layout import (
    MOVEMENT_OPS,
    concrete_env,
    merge_heads_projection,
    merge_heads_target,
    repeat_kv_source,
    same_shape,
    split_heads_source,
)
from optc.frontends.raising_deberta import raise_disentangled_attention
from optc.frontends.raising_forms import (
    FILLS,
    build_fill_term,
    einsums_as_matmuls,
    fill_term,
    nan_where_no_key,
)
from optc.frontends.raising_parallel import FUSED_RULES, reassociate_parallel_sums
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.targets import bind_args, is_impure
from optc.ir.types import TensorType

__all__ = ["raise_high_level_ops", "RaiseReport", "MOVEMENT_OPS"]


_VIEWS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
_MUL = ("aten.mul.Tensor", "aten.mul.Scalar")
_DIV = ("aten.div.Tensor", "aten.div.Scalar")
_ADD = ("aten.add.Tensor", "aten.add.Scalar")
_MAX_CHAIN = 6
_SKIP = ""
"""A rule's answer when its root is not an instance of the pattern at all (not reported)."""


@dataclass
class RaiseReport:
    """What raising did: ops created per kind, and reasons for patterns left alone."""

    raised: dict[str, int] = field(default_factory=dict)
    """Number of high-level ops created, by op name."""
    misses: list[str] = field(default_factory=list)
    """One line per candidate pattern that was not raised, with the reason."""

    def count(self, op: str) -> None:
        self.raised[op] = self.raised.get(op, 0) + 1


@dataclass
class _Context:
    """State shared by the rules during one raising run."""

    envs: list[dict[str, int]]
    """Concrete sizes for the module's symbolic dims (two independent assignments)."""
    transposed: dict[str, Parameter] = field(default_factory=dict)
    """Parameter name -> the parameter holding its transpose (shared weights transpose once)."""

    @property
    def env(self) -> dict[str, int]:
        return self.envs[0]


def _is_tensor(v: Any) -> bool:
    return isinstance(v, Value) and isinstance(v.type, TensorType)


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _producer(value: Any, ops: tuple[str, ...]) -> Node | None:
    """The node defining ``value`` if its op is one of ``ops``."""
    if isinstance(value, Value) and value.producer is not None and value.producer.op in ops:
        return value.producer
    return None


def _scalar_operand(value: Any, ops: tuple[str, ...]) -> tuple[Value, float] | None:
    """``(x, c)`` when ``value`` is ``op(x, c)`` (or ``op(c, x)`` for mul/add) with a number c."""
    node = _producer(value, ops)
    if node is None or _number(node.attr("alpha", 1)) != 1.0:
        return None
    x, c = node.arg(0), node.arg(1)
    if _is_tensor(x) and _number(c) is not None:
        return x, float(c)
    if node.op not in _DIV and _is_tensor(c) and _number(x) is not None:
        return c, float(x)
    return None


def _only_feeds(value: Value, user: Node) -> bool:
    """Whether ``value`` is read by ``user`` alone (and is not a graph output)."""
    graph = user.graph
    return value.users() == [user] and not (graph is not None and graph.is_output(value))


def _is_swap_last_two(node: Node, rank: int) -> bool:
    """Whether a transpose/permute node swaps the last two dims of a rank-``rank`` tensor."""
    if node.op == "aten.t.default":
        return rank == 2
    if node.op == "aten.transpose.int":
        dims = sorted(d % rank for d in node.args[1:3] if isinstance(d, int))
        return dims == [rank - 2, rank - 1]
    if node.op == "aten.permute.default":
        return list(node.arg(1, [])) == list(range(rank - 2)) + [rank - 1, rank - 2]
    return False


def _replace(module: Module, anchor: Node, old: Value, op: str, args: tuple,
             kwargs: dict[str, Any], type_: TensorType) -> Node:
    """Create ``op`` after ``anchor`` and redirect every use of ``old`` to its output."""
    new = module.graph.create_node(op, args, kwargs, [type_], names=op, after=anchor)
    new.loc = anchor.loc
    module.graph.replace_all_uses(old, new.outputs[0])
    return new


# -- attention --------------------------------------------------------------------------------
def _build_attention(module: Module, anchor: Node, q4: Value, k4: Value, v4: Value, mask: Any,
                     scale: float | None, causal: bool, out4: Value, ctx: _Context) -> str | None:
    """Check that q/k/v are head splits (k/v possibly of fewer, repeated kv heads) and ``out4``
    is merged back; then rewrite."""
    qt, kt, vt = q4.tensor_type, k4.tensor_type, v4.tensor_type
    if not (qt.rank == kt.rank == vt.rank == 4):
        return "query/key/value are not 4-D [batch, heads, seq, head_dim]"
    heads, dim = qt.shape[1], qt.shape[3]
    if not (isinstance(heads, int) and isinstance(dim, int)):
        return "the head count or head size is symbolic"
    if kt.shape[1] != vt.shape[1] or kt.shape[3] != dim or vt.shape[3] != dim:
        return "query, key and value differ in head count or head size"
    if not isinstance(kt.shape[1], int) or heads % kt.shape[1]:
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
    sources: list[Value] = [src]
    kv_counts = set()
    for v in (k4, v4):
        n = v.tensor_type.shape[1]
        src = split_heads_source(v, n, dim, ctx.env)
        if isinstance(src, str) and n == heads:
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
    projected = _merged_through_projection(out4, heads, dim, ctx) if isinstance(target, str) else None
    if isinstance(target, str) and projected is None:
        return target
    kwargs: dict[str, Any] = {"num_heads": heads, "head_dim": dim, "scale": scale, "causal": causal}
    kv = kv_counts.pop()
    if kv != heads:
        kwargs["num_kv_heads"] = kv
    if projected is None:
        _replace(module, anchor, target, "attention", (*sources, mask), kwargs, target.tensor_type)
        return None
    # rows merged, projected and moved back (nn.MultiheadAttention): the projection of the
    # merged heads, [B, S, heads*dim] -> [B, S, out]
    (proj, result), qt = projected, sources[0].tensor_type
    att = module.graph.create_node("attention", (*sources, mask), kwargs,
                                   [TensorType(qt.dtype, qt.shape[:-1] + (heads * dim,))],
                                   names="attention", after=anchor)
    att.loc = anchor.loc
    _replace(module, att, result, "linear", (att.outputs[0], *proj.args[1:3]), {},
             TensorType(qt.dtype, qt.shape[:-1] + (result.tensor_type.shape[-1],))).loc = proj.loc
    dead = result.producer  # the old merge, projection and moves back (each read by the next)
    while dead is not None and dead.outputs[0] is not out4 and not dead.outputs[0].users():
        previous = dead.args[0].producer
        module.graph.remove(dead)
        dead = previous
    return None


def _merged_through_projection(out4: Value, heads: int, dim: int,
                               ctx: _Context) -> tuple[Node, Value] | None:
    """``merge_heads_projection`` at both sizes, with a parameter weight (and bias)."""
    found = [merge_heads_projection(out4, heads, dim, env) for env in ctx.envs]
    if found[0] is None or found[0] != found[1]:
        return None
    proj = found[0][0]
    weight, bias = proj.args[1], proj.arg(2)
    if not isinstance(weight, Parameter) or not (bias is None or isinstance(bias, Parameter)):
        return None
    return found[0]


def _raise_sdpa(module: Module, node: Node, ctx: _Context) -> str | None:
    a = bind_args(node.op, node.args, node.kwargs)
    if a.get("dropout_p") not in (0, 0.0, None):
        return "dropout_p is not 0 (capture the model in eval mode)"
    q4, k4, v4, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    if not all(_is_tensor(v) for v in (q4, k4, v4)):
        return "query/key/value are not tensors"
    scale = a.get("scale")
    return _build_attention(module, node, q4, k4, v4, mask, None if scale is None else float(scale),
                            bool(a.get("is_causal")), node.outputs[0], ctx)


def _raise_eager_attention(module: Module, node: Node, ctx: _Context) -> str | None:
    """Root: the softmax of ``[mask +] scale * matmul(q, k^T)`` that feeds ``matmul(., v)``."""
    a = bind_args(node.op, node.args, node.kwargs)
    scores = a["self"]
    if not _is_tensor(scores) or scores.tensor_type.rank != 4 or a["dim"] not in (-1, 3):
        return _SKIP
    if (a.get("dtype") is not None and a["dtype"] != scores.tensor_type.dtype) or a.get("half_to_float"):
        return _SKIP
    # Down: softmax -> (same-dtype cast) -> matmul(probs, v).
    probs, pv = node.outputs[0], None
    for _ in range(2):
        users = probs.users()
        if len(users) != 1:
            break
        user = users[0]
        if user.op == "aten.matmul.default" and user.arg(0) is probs:
            pv = user
            break
        if user.op in ("aten.to.dtype", "aten.type_as.default") and user.output.type == probs.type:
            probs = user.output
            continue
        break
    if pv is None or not _is_tensor(pv.arg(1)):
        return _SKIP  # a softmax that does not weight values is not attention
    if any(len(v.users()) != 1 or module.graph.is_output(v) for v in (node.outputs[0], probs)):
        return "the attention probabilities are used elsewhere (e.g. returned as attentions)"
    # Up: [+ B1 + B2 ...] <- [mul/div scale] <- matmul(q, transpose(k)); the B terms (padding or
    # causal masks, relative-position biases, ...) are kept as the model computes them.
    chain = _additive_chain(scores)
    if isinstance(chain, str):
        return chain
    scaled, terms = chain
    if not _only_feeds(scores, node):
        return ("the masked scores are used outside the attention pattern" if terms else
                "the scores are used outside the attention pattern")
    dtype = scores.tensor_type.dtype
    if scaled.tensor_type.dtype != dtype:
        return "the scores change dtype when the additive terms are added"
    for term in terms:  # a bool or integer term is promoted by the add: cast it the same way
        if not isinstance(term, tuple) and term.tensor_type.dtype != dtype and term.tensor_type.dtype.is_floating_point:
            return f"the additive mask %{term.name} is not of the scores' dtype"
    found = _qk_product(scaled)
    if found is None:
        return f"%{scaled.name} is not matmul(query, key^T), optionally scaled by a constant"
    qk, scale = found
    if qk.output is not scaled and not _only_feeds(qk.output, scaled.producer):
        return "the raw scores matmul(query, key^T) are used outside the attention pattern"
    q4, kt = qk.args[:2]
    k4 = kt.producer.args[0]
    if not _only_feeds(kt, qk):
        return "the transposed key is used outside the attention pattern"
    built: list[Node] = []
    mask = _sum_of(module, terms, dtype, node, built)
    if isinstance(mask, str):
        return mask
    if any(isinstance(t, tuple) and t[1] == -math.inf for t in terms):
        # the model's softmax of a row whose keys are all -inf is NaN; the attention op's is 0
        mask = nan_where_no_key(module, mask, node, built)  # raising_forms.py
    reason = _build_attention(module, pv, q4, k4, pv.args[1], mask, scale, False, pv.outputs[0], ctx)
    if reason:  # not raised: drop the casts and sums built for it
        for created in reversed(built):
            module.graph.remove(created)
    return reason


def _leads_to_qk(value: Any, depth: int = _MAX_CHAIN) -> bool:
    """Whether ``value`` is ``matmul(q, k^T)`` (scaled), possibly plus further terms (added,
    or written into it by ``masked_fill``)."""
    if not _is_tensor(value) or depth == 0:
        return False
    if _qk_product(value) is not None:
        return True
    fill = _producer(value, FILLS)
    if fill is not None:
        return _leads_to_qk(fill.args[0], depth - 1)
    add = _producer(value, ("aten.add.Tensor",))
    return add is not None and any(_leads_to_qk(x, depth - 1) for x in add.args[:2])


_Term = Value | tuple[Value, float]
"""An additive term on the scores: a tensor, or ``(mask, c)`` for ``where(mask, c, 0)`` (a
``masked_fill`` of the scores, see :mod:`optc.frontends.raising_forms`)."""


def _additive_chain(scores: Value) -> tuple[Value, list[_Term]] | str:
    """``(scaled, [B1, B2, ...])`` when ``scores = scaled + B1 + B2 ...`` in any association of
    ``aten.add`` (alpha 1) with ``scaled`` leading to the product ``matmul(q, k^T)``; the terms
    in order from the product up. A ``masked_fill(s, m, c)`` on the way is the term ``(m, c)``
    when that is exact, else the reason. Without adds: ``(scores, [])``."""
    terms: list[_Term] = []
    value = scores
    for _ in range(_MAX_CHAIN):
        if _qk_product(value) is not None:
            break
        fill = _producer(value, FILLS)
        if fill is not None and _leads_to_qk(fill.args[0]):
            found = fill_term(fill)
            if isinstance(found, str):
                return found
            if not _only_feeds(fill.args[0], fill):
                return "the scores before the masked_fill are used outside the attention pattern"
            terms.append(found)
            value = fill.args[0]
            continue
        add = _producer(value, ("aten.add.Tensor",))
        if add is None or _number(add.attr("alpha", 1)) != 1.0 or \
                not all(_is_tensor(x) for x in add.args[:2]):
            break
        first, second = add.args[:2]
        if _leads_to_qk(first):
            inner, term = first, second
        elif _leads_to_qk(second):
            inner, term = second, first
        else:
            break
        if not _only_feeds(inner, add):
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


def _qk_product(value: Value) -> tuple[Node, float] | None:
    """``(matmul(q, k^T) node, scale)`` when ``value`` is that product times/over a constant."""
    scale = 1.0
    found = _scalar_operand(value, _MUL) or _scalar_operand(value, _DIV)
    if found is not None:
        inner, c = found
        if c == 0:
            return None
        scale = c if value.producer.op in _MUL else 1.0 / c
        value = inner
    qk = _producer(value, ("aten.matmul.default",))
    if qk is None or not all(_is_tensor(x) for x in qk.args[:2]) or qk.args[0].tensor_type.rank != 4:
        return None
    kt = qk.args[1].producer
    if kt is None or not _is_swap_last_two(kt, 4) or not _is_tensor(kt.args[0]):
        return None
    return qk, scale


# -- linear from matrix products --------------------------------------------------------------
def _linear_weight(w: Value) -> Callable[[Module, _Context], Value] | None:
    """How to get the [out, in] weight of ``x @ w``: ``t(w')`` gives ``w'``, a parameter gets a
    new transposed parameter (made when called, so a failed check leaves no trace); None
    when ``w`` is computed."""
    node = w.producer
    if node is not None and _is_swap_last_two(node, 2) and _is_tensor(node.args[0]):
        return lambda module, ctx: node.args[0]
    if isinstance(w, Parameter):
        def transposed(module: Module, ctx: _Context) -> Value:
            new = ctx.transposed.get(w.name)
            if new is None:
                new = module.add_param(module.unique_param_name(w.name), w.data.t().contiguous())
                ctx.transposed[w.name] = new
            return new
        return transposed
    return None


def _raise_matmul_linear(module: Module, node: Node, ctx: _Context) -> str | None:
    """``addmm(b, x, W)``/``mm(x, W)`` (optionally wrapped in flatten/unflatten views) and
    ``matmul(x, t(w)) [+ b]`` -> ``linear(x, W^T, b)``."""
    a = bind_args(node.op, node.args, node.kwargs)
    bias: Any = None
    if node.op == "aten.addmm.default":
        bias, x, w = a["self"], a["mat1"], a["mat2"]
        if _number(a["beta"]) != 1.0 or _number(a["alpha"]) != 1.0:
            return "addmm scales its operands (beta or alpha is not 1)"
    elif node.op == "aten.mm.default":
        x, w = a["self"], a["mat2"]
    else:
        x, w = a["self"], a["other"]
    if not (_is_tensor(x) and _is_tensor(w)) or w.tensor_type.rank != 2 or x.tensor_type.rank < 2:
        return _SKIP
    weight = _linear_weight(w)
    if weight is None:
        if node.op == "aten.matmul.default":
            return _SKIP  # a product of two activations
        return f"the weight %{w.name} is computed, not a parameter or the transpose of one"
    out_features = w.tensor_type.shape[1]
    result = node.outputs[0]
    replaced, anchor = result, node
    users = result.users()
    if node.op == "aten.matmul.default" and len(users) == 1 and users[0].op == "aten.add.Tensor" \
            and not module.graph.is_output(result):
        add = users[0]
        other = add.arg(1) if add.arg(0) is result else add.arg(0)
        if _number(add.attr("alpha", 1)) == 1.0 and _is_tensor(other) and \
                other.tensor_type.shape == (out_features,) and other is not result:
            bias, replaced, anchor = other, add.output, add
    if bias is not None and (not _is_tensor(bias) or bias.tensor_type.shape != (out_features,)):
        return f"the bias %{getattr(bias, 'name', bias)} is not a [{out_features}] vector"
    flat = _producer(x, _VIEWS)
    if node.op != "aten.matmul.default" and flat is not None and len(users) == 1 \
            and users[0].op in _VIEWS and _only_feeds(result, users[0]):
        src, unflat = flat.args[0], users[0].output
        st = src.tensor_type if _is_tensor(src) else None
        if st is not None and st.rank >= 2 and st.shape[-1] == x.tensor_type.shape[-1] and \
                same_shape(unflat.tensor_type.shape, st.shape[:-1] + (out_features,), ctx.envs):
            x, replaced, anchor = src, unflat, users[0]
    xt = x.tensor_type
    type_ = TensorType(xt.dtype, xt.shape[:-1] + (out_features,))
    if not same_shape(type_.shape, replaced.tensor_type.shape, ctx.envs):
        return f"the product's shape {replaced.type} is not a linear map of {xt}"
    _replace(module, anchor, replaced, "linear", (x, weight(module, ctx), bias), {}, type_)
    return None


# -- gelu, tanh approximation ---------------------------------------------------------------------
_GELU_TANH = {"half": 0.5, "one": 1.0, "sqrt_2_over_pi": math.sqrt(2.0 / math.pi), "cubic": 0.044715}


def _cube_of(value: Value) -> Value | None:
    """``x`` when ``value`` is ``pow(x, 3)``, ``x*x*x`` or ``x*(x*x)``."""
    node = _producer(value, ("aten.pow.Tensor_Scalar",))
    if node is not None and _number(node.arg(1)) == 3.0:
        return node.args[0]
    node = _producer(value, ("aten.mul.Tensor",))
    if node is None:
        return None
    for a, b in (node.args[:2], node.args[1::-1]):
        sq = _producer(b, ("aten.mul.Tensor",))
        if sq is not None and sq.arg(0) is a and sq.arg(1) is a:
            return a
    return None


def _raise_gelu_tanh(module: Module, node: Node, ctx: _Context) -> str | None:
    """Root: ``mul(0.5*x, 1 + tanh(c1 * (x + c2 * x^3)))`` (either operand order)."""
    if len(node.args) < 2 or not all(_is_tensor(v) for v in node.args[:2]):
        return _SKIP
    for half_v, poly_v in (node.args[:2], node.args[1::-1]):
        half, one_plus = _scalar_operand(half_v, _MUL), _scalar_operand(poly_v, _ADD)
        if half is None or one_plus is None:
            continue
        x, c_half = half
        tanh = _producer(one_plus[0], ("aten.tanh.default", "tanh"))
        inner = _scalar_operand(tanh.args[0], _MUL) if tanh is not None else None
        add = _producer(inner[0], ("aten.add.Tensor",)) if inner is not None else None
        if add is None or _number(add.attr("alpha", 1)) != 1.0 or x not in add.args[:2]:
            continue
        cubic = _scalar_operand(add.arg(1) if add.arg(0) is x else add.arg(0), _MUL)
        if cubic is None or _cube_of(cubic[0]) is not x:
            continue
        got = {"half": c_half, "one": one_plus[1], "sqrt_2_over_pi": inner[1], "cubic": cubic[1]}
        wrong = [f"{k}={v!r}" for k, v in got.items() if not math.isclose(v, _GELU_TANH[k], rel_tol=1e-6)]
        if wrong:
            return f"the constants {', '.join(wrong)} are not those of gelu's tanh approximation"
        _replace(module, node, node.outputs[0], "gelu", (x,), {"approximate": "tanh"}, x.tensor_type)
        return None
    return _SKIP


# -- rotary position embeddings --------------------------------------------------------------------
def _strip_casts(value: Any) -> Any:
    """``value`` without same-dtype, same-shape casts (``x.to(torch.float32)`` of an f32 x)."""
    while isinstance(value, Value) and value.producer is not None and value.producer.op in (
            "aten.to.dtype", "aten._to_copy.default", "aten.type_as.default", "aten.to.device"):
        src = value.producer.args[0]
        if not (_is_tensor(src) and src.type == value.type):
            break
        value = src
    return value


def _operand_pairs(node: Node | None) -> list[tuple[Any, Any]]:
    """The first two operands of ``node`` in both orders (none when there is no node)."""
    if node is None or len(node.args) < 2:
        return []
    return [tuple(node.args[:2]), tuple(node.args[1::-1])]


def _rotate_half_of(value: Any, rank: int) -> tuple[Value, int] | None:
    """``(x, half)`` when ``value`` is ``cat([-x[..., half:], x[..., :half]], -1)``."""
    cat = _producer(value, ("aten.cat.default",))
    if cat is None or cat.arg(1, 0) not in (-1, rank - 1):
        return None
    parts = cat.arg(0)
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        return None
    neg = _producer(parts[0], ("aten.neg.default",))
    halves = _chunked_halves(neg.args[0], parts[1], rank) if neg is not None else None
    if halves is not None:
        return halves
    hi = _producer(neg.args[0], ("aten.slice.Tensor",)) if neg is not None else None
    lo = _producer(parts[1], ("aten.slice.Tensor",))
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
    node = _producer(hi, ("aten.chunk.default", "aten.split.Tensor"))
    if node is None or lo not in node.outputs or len(node.outputs) != 2 or \
            node.outputs.index(lo) != 0 or node.outputs.index(hi) != 1 or \
            node.arg(2, 0) not in (-1, rank - 1) or not _is_tensor(node.args[0]):
        return None
    x = node.args[0]
    width = x.tensor_type.shape[-1]
    if not isinstance(width, int) or width % 2 or \
            node.args[1] != (2 if node.op == "aten.chunk.default" else width // 2):
        return None
    return x, width // 2


def _table(value: Any) -> Value | None:
    """The [batch|1, seq, dim] cos/sin table that ``value`` ([., 1, seq, dim]) unsqueezes."""
    node = _producer(value, ("aten.unsqueeze.default",))
    if node is None or node.arg(1) != 1 or not _is_tensor(node.args[0]):
        return None
    table = node.args[0]
    return table if table.tensor_type.rank == 3 else None


def _partial_rotary(add: Node, x4: Value) -> tuple[Value, Value] | None:
    """``(whole, result)`` when the rotated ``x4`` is ``whole[..., :r]`` and the add's only use
    is ``cat([add, whole[..., r:]], -1)`` (partial rotary: the other features pass through)."""
    first = _producer(x4, ("aten.slice.Tensor",))
    if first is None or first.arg(1) not in (-1, 3) or first.arg(2, 0) not in (0, None) or \
            first.arg(4, 1) != 1 or not _is_tensor(first.args[0]):
        return None
    whole, r = first.args[0], first.arg(3)
    users = add.outputs[0].users()
    cat = users[0] if len(users) == 1 and users[0].op == "aten.cat.default" else None
    parts = cat.arg(0) if cat is not None else None
    if cat is None or cat.arg(1, 0) not in (-1, 3) or not isinstance(parts, (list, tuple)) or \
            len(parts) != 2 or parts[0] is not add.outputs[0]:
        return None
    rest = _producer(parts[1], ("aten.slice.Tensor",))
    if rest is None or rest.args[0] is not whole or rest.arg(1) not in (-1, 3) or \
            rest.arg(2) != r or rest.arg(4, 1) != 1:
        return None
    return whole, cat.outputs[0]


def _raise_rotary(module: Module, node: Node, ctx: _Context) -> str | None:
    """Root: ``x*cos + rotate_half(x)*sin`` on a [batch, heads, seq, head_dim] head split."""
    if node.op != "aten.add.Tensor" or _number(node.attr("alpha", 1)) != 1.0:
        return _SKIP
    for a, b in _operand_pairs(node):
        if not (_is_tensor(a) and _is_tensor(b)) or a.tensor_type.rank != 4:
            continue
        for x4, cos4 in _operand_pairs(_producer(a, ("aten.mul.Tensor",))):
            for turned, sin4 in _operand_pairs(_producer(b, ("aten.mul.Tensor",))):
                found = _rotate_half_of(turned, 4)
                if found is None or found[0] is not x4 or not _is_tensor(x4):
                    continue
                cos, sin = _table(cos4), _table(sin4)
                if cos is None or sin is None:
                    return "the cos/sin tables are not [batch|1, seq, head_dim] unsqueezed over heads"
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
                if isinstance(src, str):
                    return src
                xt = src.tensor_type
                rot = module.graph.create_node("rotary", (src, cos, sin), {"head_dim": dim}, [xt],
                                               names="rotary", after=replaced.producer)
                unflat = module.graph.create_node(
                    "aten.unflatten.int", (rot.outputs[0], -1, [heads, dim]), {},
                    [TensorType(xt.dtype, xt.shape[:-1] + (heads, dim))], names="rotary_heads",
                    after=rot)
                split = module.graph.create_node(
                    "aten.transpose.int", (unflat.outputs[0], 1, 2), {}, [replaced.type],
                    names="rotary_heads", after=unflat)
                rot.loc = unflat.loc = split.loc = node.loc
                module.graph.replace_all_uses(replaced, split.outputs[0])
                return None
    return _SKIP


# -- RMSNorm ---------------------------------------------------------------------------------------
def _rms_weight(value: Any) -> tuple[Parameter, float] | None:
    value = _strip_casts(value)
    if isinstance(value, Parameter):
        return value, 0.0
    found = _scalar_operand(value, _ADD)
    if found is not None and isinstance(_strip_casts(found[0]), Parameter):
        return _strip_casts(found[0]), found[1]
    return None


def _raise_rms_norm(module: Module, node: Node, ctx: _Context) -> str | None:
    """Root: ``(offset + w) * (x * rsqrt(mean(x^2, -1, keepdim) + eps))`` (either order)."""
    for w_v, y_v in _operand_pairs(node):
        weighted = _rms_weight(w_v)
        if weighted is None or not _is_tensor(y_v):
            continue
        y = _strip_casts(y_v)
        for x, r in _operand_pairs(_producer(y, ("aten.mul.Tensor",))):
            rsqrt = _producer(r, ("aten.rsqrt.default",))
            eps = _scalar_operand(rsqrt.args[0], _ADD) if rsqrt is not None else None
            mean = _producer(eps[0], ("aten.mean.dim",)) if eps is not None else None
            if mean is None or not _is_tensor(x):
                continue
            sq = _producer(mean.args[0], ("aten.pow.Tensor_Scalar",))
            if sq is None or sq.args[0] is not x or _number(sq.arg(1)) != 2.0:
                sq = _producer(mean.args[0], ("aten.mul.Tensor",))
                if sq is None or not (sq.arg(0) is x and sq.arg(1) is x):
                    continue
            rank = x.tensor_type.rank
            if list(mean.arg(1, [])) not in ([-1], [rank - 1]) or not mean.arg(2, False):
                return "the mean square is not over the last dim with keepdim"
            weight, offset = weighted
            if tuple(weight.data.shape) != (x.tensor_type.shape[-1],):
                return f"the weight @{weight.name} is not a vector of the normalized dim"
            out = node.outputs[0]
            if out.type != x.type:
                return "the normalized result changes dtype or shape"
            _replace(module, node, out, "rms_norm", (x, weight),
                     {"eps": float(eps[1]), "offset": float(offset)}, out.tensor_type)
            return None
    return _SKIP


# -- casts and fused projections ------------------------------------------------------------
_NOOP_CASTS = ("aten.to.dtype", "aten.to.device", "aten.to.dtype_layout", "aten._to_copy.default",
               "aten.type_as.default")


def _drop_noop_casts(module: Module) -> None:
    """Bypass casts to the type a tensor already has (``x.float()`` of an f32 ``x``, on the one
    device the capture ran on), so patterns see through them."""
    for node in module.graph:
        if node.op not in _NOOP_CASTS or len(node.outputs) != 1:
            continue
        src = node.arg(0)
        if _is_tensor(src) and src.type == node.outputs[0].type and \
                node.kwargs.get("memory_format") is None:
            module.graph.replace_all_uses(node.outputs[0], src)
            if not node.outputs[0].users() and not module.graph.is_output(node.outputs[0]):
                module.graph.remove(node)


def _unbind_projection(module: Module, node: Node, ctx: _Context) -> str | None:
    """``unbind(view(linear(x, W, b), [B, S, n, H, D]), 2)`` (ModernBERT's fused Wqkv) -> one
    linear per part (rows of W) viewed as [B, S, H, D]. Exact."""
    a = bind_args(node.op, node.args, node.kwargs)
    view = _producer(a["self"], _VIEWS)
    lin = _producer(view.args[0], ("aten.linear.default",)) if view is not None else None
    if lin is None:
        return _SKIP
    vt, lt = view.outputs[0].tensor_type, lin.outputs[0].tensor_type
    dim = a.get("dim", 0)
    if vt.rank != 5 or lt.rank != 3 or not isinstance(dim, int) or dim % 5 != 2:
        return _SKIP
    parts, heads, size = vt.shape[2], vt.shape[3], vt.shape[4]
    weight, bias = lin.args[1], lin.arg(2)
    if not (isinstance(parts, int) and isinstance(heads, int) and isinstance(size, int)) or \
            not isinstance(weight, Parameter) or not (bias is None or isinstance(bias, Parameter)):
        return "the fused projection's parts are symbolic or its weight is computed"
    if weight.data.shape[0] != parts * heads * size or len(node.outputs) != parts or \
            not same_shape(vt.shape[:2], lt.shape[:2], ctx.envs):
        return "the view does not split the projection's outputs into parts"
    width = heads * size
    anchor = node
    for i, out in enumerate(node.outputs):
        w = module.add_param(module.unique_param_name(f"{weight.name}.part{i}"),
                             weight.data[i * width:(i + 1) * width].contiguous())
        b = None if bias is None else module.add_param(
            module.unique_param_name(f"{bias.name}.part{i}"), bias.data[i * width:(i + 1) * width].contiguous())
        part = module.graph.create_node("aten.linear.default", (lin.args[0], w, b), {},
                                        [TensorType(lt.dtype, lt.shape[:-1] + (width,))],
                                        names="linear", after=anchor)
        heads_view = module.graph.create_node("aten.unflatten.int", (part.outputs[0], -1, [heads, size]),
                                              {}, [out.type], names="heads", after=part)
        part.loc = heads_view.loc = node.loc
        anchor = heads_view
        module.graph.replace_all_uses(out, heads_view.outputs[0])
    return None


# -- one-node rules ---------------------------------------------------------------------------
def _simple(op: str, build: Callable[[dict[str, Any]], Any]) -> Callable[..., str | None]:
    def rule(module: Module, node: Node, ctx: _Context) -> str | None:
        a = bind_args(node.op, node.args, node.kwargs)
        built = build(a)
        if isinstance(built, str):
            return built
        args, kwargs = built
        new = _replace(module, node, node.outputs[0], op, args, kwargs, node.outputs[0].type)
        old_name = node.outputs[0].name
        module.graph.remove(node)
        module.graph.rename(new.outputs[0], old_name)
        return None

    return rule


def _layer_norm(a: dict[str, Any]) -> Any:
    return (a["input"], a["weight"], a["bias"]), {
        "normalized_shape": list(a["normalized_shape"]),
        "eps": float(a["eps"]),
    }


def _embedding(a: dict[str, Any]) -> Any:
    pad = a.get("padding_idx")
    return (a["indices"], a["weight"]), {"padding_idx": None if pad is None or pad < 0 else int(pad)}


_Rule = tuple[str, Callable[[Module, Node, _Context], str | None]]

_COMPOSITE_RULES: dict[str, _Rule | tuple[_Rule, ...]] = {
    "aten.softmax.int": (("attention", _raise_eager_attention),
                         ("attention", raise_disentangled_attention)),
    "aten._softmax.default": (("attention", _raise_eager_attention),
                              ("attention", raise_disentangled_attention)),
    "aten.addmm.default": ("linear", _raise_matmul_linear),
    "aten.mm.default": ("linear", _raise_matmul_linear),
    "aten.matmul.default": ("linear", _raise_matmul_linear),
    "aten.mul.Tensor": (("gelu", _raise_gelu_tanh), ("rms_norm", _raise_rms_norm)),
    "aten.add.Tensor": ("rotary", _raise_rotary),
    "aten.unbind.int": ("linear", _unbind_projection),
}
"""Multi-node patterns, by root op; they run first, while the graph is plain ATen."""

_RULES: dict[str, _Rule] = {
    "aten.scaled_dot_product_attention.default": ("attention", _raise_sdpa),
    "aten.linear.default": ("linear", _simple("linear", lambda a: ((a["input"], a["weight"], a["bias"]), {}))),
    "aten.layer_norm.default": ("layer_norm", _simple("layer_norm", _layer_norm)),
    "aten.embedding.default": ("embedding", _simple("embedding", _embedding)),
    "aten.gelu.default": (
        "gelu", _simple("gelu", lambda a: ((a["self"],), {"approximate": str(a["approximate"])}))
    ),
    "aten.relu.default": ("relu", _simple("relu", lambda a: ((a["self"],), {}))),
    "aten.silu.default": ("silu", _simple("silu", lambda a: ((a["self"],), {}))),
    "aten.tanh.default": ("tanh", _simple("tanh", lambda a: ((a["self"],), {}))),
}
"""One-node rules, by op."""


def _split_projection(module: Module, node: Node, ctx: _Context) -> str | None:
    """``split(linear(x, W, b), size, -1)`` -> one ``linear`` per part with row-sliced W, b.

    GPT-2 computes q, k and v with one packed projection; separate projections are what
    head pruning slices. Exact: each part's rows are the same dot products.
    """
    a = bind_args(node.op, node.args, node.kwargs)
    src = a["self"]
    lin = src.producer if isinstance(src, Value) else None
    if lin is None or lin.op != "linear":
        return _SKIP
    rank = src.tensor_type.rank
    dim = a["dim"] % rank if isinstance(a["dim"], int) else None
    if dim != rank - 1:
        return "the split is not along the projection's output features"
    if src.users() != [node] or module.graph.is_output(src):
        return "the packed projection has other users"
    weight, bias = lin.args[1], lin.arg(2)
    if not (isinstance(weight, Parameter) and (bias is None or isinstance(bias, Parameter))):
        return "the packed projection's weight is computed, not a parameter"
    total = weight.data.shape[0]
    sizes = a.get("split_size") if "split_size" in a else a.get("split_sizes")
    if node.op == "aten.chunk.default" and isinstance(a.get("chunks"), int) and a["chunks"] > 0:
        sizes = -(-total // a["chunks"])
    if isinstance(sizes, int):
        sizes = [min(sizes, total - i) for i in range(0, total, sizes)]
    if not isinstance(sizes, (list, tuple)) or len(sizes) != len(node.outputs) or sum(sizes) != total:
        return "the split sizes do not cover the projection"
    start, anchor = 0, node
    for i, (size, out) in enumerate(zip(sizes, node.outputs, strict=True)):
        w = module.add_param(module.unique_param_name(f"{weight.name}.part{i}"),
                             weight.data[start:start + size].contiguous())
        b = None if bias is None else module.add_param(
            module.unique_param_name(f"{bias.name}.part{i}"), bias.data[start:start + size].contiguous())
        part = module.graph.create_node("linear", (lin.args[0], w, b), {}, [out.type],
                                        names="linear", after=anchor)
        part.loc, anchor = lin.loc, part
        module.graph.replace_all_uses(out, part.outputs[0])
        start += size
    return None


def _sliced_projection(module: Module, node: Node, ctx: _Context) -> str | None:
    """``linear(x, W, b)`` read only by slices that partition its output features (Phi-3's
    fused ``qkv_proj``) -> one ``linear`` per slice with row-sliced W, b. Exact."""
    out = node.outputs[0]
    users = out.users()
    if not users or module.graph.is_output(out) or any(u.op != "aten.slice.Tensor" for u in users):
        return _SKIP
    weight, bias = node.args[1], node.arg(2)
    if not (isinstance(weight, Parameter) and (bias is None or isinstance(bias, Parameter))):
        return _SKIP
    rank, total = out.tensor_type.rank, weight.data.shape[0]
    ranges = []
    for u in users:
        dim, start, end, step = u.arg(1, 0), u.arg(2, 0), u.arg(3), u.arg(4, 1)
        if u.args[0] is not out or not isinstance(dim, int) or dim % rank != rank - 1 or step != 1:
            return _SKIP
        start = 0 if start is None else start
        end = total if end is None else min(end, total)
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start < end:
            return _SKIP
        ranges.append((start, end, u))
    ranges.sort(key=lambda r: r[:2])
    if [r[0] for r in ranges] != [0] + [r[1] for r in ranges[:-1]] or ranges[-1][1] != total:
        return "the slices of the fused projection do not partition its outputs"
    anchor = node
    for i, (start, end, u) in enumerate(ranges):
        w = module.add_param(module.unique_param_name(f"{weight.name}.part{i}"),
                             weight.data[start:end].contiguous())
        b = None if bias is None else module.add_param(
            module.unique_param_name(f"{bias.name}.part{i}"), bias.data[start:end].contiguous())
        part = module.graph.create_node("linear", (node.args[0], w, b), {}, [u.outputs[0].type],
                                        names="linear", after=anchor)
        part.loc, anchor = node.loc, part
        module.graph.replace_all_uses(u.outputs[0], part.outputs[0])
        module.graph.remove(u)
    return None


_PROJECTION_RULES: dict[str, _Rule] = {
    "aten.split.Tensor": ("linear", _split_projection),
    "aten.split_with_sizes.default": ("linear", _split_projection),
    "aten.chunk.default": ("linear", _split_projection),
    "linear": ("linear", _sliced_projection),
}
"""Rules that need raised ``linear`` ops; they run last."""


def _live_nodes(module: Module) -> set[Node]:
    """Nodes whose results reach an output or an impure node (others are left for DCE)."""
    graph = module.graph
    live: set[Node] = set()
    stack = [v.producer for v in graph.outputs.values() if v.producer is not None]
    stack += [n for n in graph if is_impure(n.op)]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack += [v.producer for v in node.inputs if v.producer is not None]
    return live


def _drop_empty_concat_operands(module: Module) -> None:
    """``cat([x, empty], d)`` -> ``x`` (Phi-3's rotary concatenates a zero-width pass-through)."""
    for node in module.graph:
        if node.op != "aten.cat.default" or not isinstance(node.arg(0), (list, tuple)):
            continue
        out = node.outputs[0]
        if not isinstance(out.type, TensorType) or not isinstance(node.arg(1, 0), int):
            continue
        dim = node.arg(1, 0) % out.tensor_type.rank
        kept = [v for v in node.arg(0) if not (_is_tensor(v) and v.tensor_type.shape[dim] == 0)]
        if len(kept) == 1 and _is_tensor(kept[0]) and kept[0].type == out.type:
            module.graph.replace_all_uses(out, kept[0])


def raise_high_level_ops(module: Module) -> RaiseReport:
    """Rewrite every matching ATen pattern in place; dead leftovers remain for DCE.

    A rewrite only redirects the uses of the pattern's result, so it never changes numbers
    beyond float rounding (kernels compute the same function). Raising twice is a no-op.
    """
    report = RaiseReport()
    ctx = _Context([concrete_env(module), concrete_env(module, offset=1)])
    _drop_empty_concat_operands(module)
    _drop_noop_casts(module)
    einsums_as_matmuls(module)  # raising_forms.py
    explained: set[Node] = set()
    for rules in (FUSED_RULES, _COMPOSITE_RULES, _RULES, _PROJECTION_RULES):
        live = _live_nodes(module)
        for node in module.graph:
            rule = rules.get(node.op)
            if rule is None or node.graph is None or node not in live:
                continue
            for op, fn in (rule if isinstance(rule[0], tuple) else (rule,)):
                reason = fn(module, node, ctx)
                if reason is None:
                    report.count(op)
                    if node.graph is not None and not any(
                        o.users() or module.graph.is_output(o) for o in node.outputs
                    ):
                        module.graph.remove(node)
                    break
                if reason:
                    explained.add(node)
                    report.misses.append(f"{node!r} not raised to {op}: {reason}")
    live = _live_nodes(module)
    for node in module.graph:  # a softmax weighting values that every rule skipped silently
        if node in live and node not in explained and _weights_values(node):
            report.misses.append(
                f"{node!r} not raised to attention: its probabilities weight values (an attention "
                "pattern) but no attention rule recognizes this form")
    for _ in range(reassociate_parallel_sums(module)):  # raising_parallel.py
        report.count("parallel")
    return report


_SOFTMAX = ("aten.softmax.int", "aten._softmax.default", "aten._safe_softmax.default")
_PRODUCTS = ("aten.matmul.default", "aten.bmm.default", "aten.einsum.default")


def _weights_values(node: Node) -> bool:
    """Whether ``node`` is a softmax whose result (through views and casts) is the left operand
    of a matrix product: probabilities weighting values, i.e. an attention."""
    if node.op not in _SOFTMAX:
        return False
    frontier, seen = list(node.outputs), 0
    while frontier and seen < 4 * _MAX_CHAIN:
        value = frontier.pop()
        seen += 1
        for user in value.users():
            if user.op in _PRODUCTS:
                return True
            if user.op in MOVEMENT_OPS or user.op in ("aten.to.dtype", "aten.type_as.default",
                                                      "aten._to_copy.default", "aten.dropout.default"):
                frontier += user.outputs
    return False
