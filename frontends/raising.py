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
- ``gelu`` from ``x*0.5*(1+erf(x/sqrt(2)))`` written out (ESM), the 0.5 on either factor;
- ``rms_norm`` from ``(offset + w) * (x * rsqrt(mean(x^2, -1) + eps))``, the inverse root also
  as ``pow(., -0.5)``, the weight optional;
- a norm over each head of a head split (per-head q/k norms) -> the norm with ``head_dim`` on
  the projection, before the split (both in :mod:`optc.frontends.raising_norms`);
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

The rules live by target: attention in :mod:`optc.frontends.raising_attention`, rotary in
:mod:`optc.frontends.raising_rotary`, what they share in :mod:`optc.frontends.raising_common`;
norms in :mod:`optc.frontends.raising_norms`; this module holds the linear, GELU and one-node
rules and the driver.

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

from optc.frontends.layout import MOVEMENT_OPS, concrete_env, same_shape
from optc.frontends.raising_attention import raise_eager_attention, raise_sdpa, weights_values
from optc.frontends.raising_common import (
    ADD,
    DIV,
    MUL,
    SKIP,
    VIEWS,
    RuleContext,
    is_swap_last_two,
    is_tensor,
    number,
    only_feeds,
    producer,
    replace_uses_with_op,
    scalar_operand,
)
from optc.frontends.raising_deberta import raise_disentangled_attention
from optc.frontends.raising_forms import einsums_as_matmuls
from optc.frontends.raising_norms import (
    raise_head_layer_norm,
    raise_rms_norm,
    raise_scaled_head_split,
)
from optc.frontends.raising_parallel import FUSED_RULES, reassociate_parallel_sums
from optc.frontends.raising_rotary import raise_rotary
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.targets import bind_args, is_impure
from optc.ir.types import TensorType

__all__ = ["raise_high_level_ops", "RaiseReport", "MOVEMENT_OPS"]


@dataclass
class RaiseReport:
    """What raising did: ops created per kind, and reasons for patterns left alone."""

    raised: dict[str, int] = field(default_factory=dict)
    """Number of high-level ops created, by op name."""
    misses: list[str] = field(default_factory=list)
    """One line per candidate pattern that was not raised, with the reason."""

    def count(self, op: str) -> None:
        self.raised[op] = self.raised.get(op, 0) + 1



# -- linear from matrix products --------------------------------------------------------------
def _linear_weight(w: Value) -> Callable[[Module, RuleContext], Value] | None:
    """How to get the [out, in] weight of ``x @ w``: ``t(w')`` gives ``w'``, a parameter gets a
    new transposed parameter (made when called, so a failed check leaves no trace); None
    when ``w`` is computed."""
    node = w.producer
    if node is not None and is_swap_last_two(node, 2) and is_tensor(node.args[0]):
        return lambda module, ctx: node.args[0]
    if isinstance(w, Parameter):
        def transposed(module: Module, ctx: RuleContext) -> Value:
            new = ctx.transposed.get(w.name)
            if new is None:
                new = module.add_param(module.unique_param_name(w.name), w.data.t().contiguous())
                ctx.transposed[w.name] = new
            return new
        return transposed
    return None


def _raise_matmul_linear(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """``addmm(b, x, W)``/``mm(x, W)`` (optionally wrapped in flatten/unflatten views) and
    ``matmul(x, t(w)) [+ b]`` -> ``linear(x, W^T, b)``."""
    a = bind_args(node.op, node.args, node.kwargs)
    bias: Any = None
    if node.op == "aten.addmm.default":
        bias, x, w = a["self"], a["mat1"], a["mat2"]
        if number(a["beta"]) != 1.0 or number(a["alpha"]) != 1.0:
            return "addmm scales its operands (beta or alpha is not 1)"
    elif node.op == "aten.mm.default":
        x, w = a["self"], a["mat2"]
    else:
        x, w = a["self"], a["other"]
    if not (is_tensor(x) and is_tensor(w)) or w.tensor_type.rank != 2 or x.tensor_type.rank < 2:
        return SKIP
    weight = _linear_weight(w)
    if weight is None:
        if node.op == "aten.matmul.default":
            return SKIP  # a product of two activations
        return f"the weight %{w.name} is computed, not a parameter or the transpose of one"
    out_features = w.tensor_type.shape[1]
    result = node.outputs[0]
    replaced, anchor = result, node
    users = result.users()
    if node.op == "aten.matmul.default" and len(users) == 1 and users[0].op == "aten.add.Tensor" \
            and not module.graph.is_output(result):
        add = users[0]
        other = add.arg(1) if add.arg(0) is result else add.arg(0)
        if number(add.attr("alpha", 1)) == 1.0 and is_tensor(other) and \
                other.tensor_type.shape == (out_features,) and other is not result:
            bias, replaced, anchor = other, add.output, add
    if bias is not None and (not is_tensor(bias) or bias.tensor_type.shape != (out_features,)):
        return f"the bias %{getattr(bias, 'name', bias)} is not a [{out_features}] vector"
    flat = producer(x, VIEWS)
    if node.op != "aten.matmul.default" and flat is not None and len(users) == 1 \
            and users[0].op in VIEWS and only_feeds(result, users[0]):
        src, unflat = flat.args[0], users[0].output
        st = src.tensor_type if is_tensor(src) else None
        if st is not None and st.rank >= 2 and st.shape[-1] == x.tensor_type.shape[-1] and \
                same_shape(unflat.tensor_type.shape, st.shape[:-1] + (out_features,), ctx.envs):
            x, replaced, anchor = src, unflat, users[0]
    xt = x.tensor_type
    type_ = TensorType(xt.dtype, xt.shape[:-1] + (out_features,))
    if not same_shape(type_.shape, replaced.tensor_type.shape, ctx.envs):
        return f"the product's shape {replaced.type} is not a linear map of {xt}"
    replace_uses_with_op(module, anchor, replaced, "linear", (x, weight(module, ctx), bias), {}, type_)
    return None


# -- gelu, tanh approximation ---------------------------------------------------------------------
_GELU_TANH = {"half": 0.5, "one": 1.0, "sqrt_2_over_pi": math.sqrt(2.0 / math.pi), "cubic": 0.044715}


def _cube_of(value: Value) -> Value | None:
    """``x`` when ``value`` is ``pow(x, 3)``, ``x*x*x`` or ``x*(x*x)``."""
    node = producer(value, ("aten.pow.Tensor_Scalar",))
    if node is not None and number(node.arg(1)) == 3.0:
        return node.args[0]
    node = producer(value, ("aten.mul.Tensor",))
    if node is None:
        return None
    for a, b in (node.args[:2], node.args[1::-1]):
        sq = producer(b, ("aten.mul.Tensor",))
        if sq is not None and sq.arg(0) is a and sq.arg(1) is a:
            return a
    return None


def _erf_of_scaled(value: Any) -> Value | None:
    """``x`` when ``value`` is ``1 + erf(x / sqrt(2))`` (or ``erf(x * 1/sqrt(2)) + 1``)."""
    one_plus = scalar_operand(value, ADD)
    if one_plus is None or one_plus[1] != 1.0:
        return None
    erf = producer(one_plus[0], ("aten.erf.default",))
    if erf is None:
        return None
    divided = scalar_operand(erf.args[0], DIV)
    if divided is not None and math.isclose(divided[1], math.sqrt(2.0), rel_tol=1e-6):
        return divided[0]
    scaled = scalar_operand(erf.args[0], MUL)
    if scaled is not None and math.isclose(scaled[1], math.sqrt(0.5), rel_tol=1e-6):
        return scaled[0]
    return None


def _raise_gelu_erf(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: ``(0.5*x) * (1 + erf(x/sqrt(2)))`` or ``(x * (1 + erf(x/sqrt(2)))) * 0.5`` (either
    operand order) -> ``gelu`` (exact form)."""
    if len(node.args) < 2:
        return SKIP
    outer = scalar_operand(node.outputs[0], MUL)
    if outer is not None and outer[1] == 0.5:  # (x * (1 + erf)) * 0.5
        inner = producer(outer[0], MUL)
        pairs = [] if inner is None else [(a, b, True) for a, b in
                                         (inner.args[:2], inner.args[1::-1])]
    else:
        pairs = [(a, b, False) for a, b in (node.args[:2], node.args[1::-1])]
    for a, b, half_outside in pairs:
        if not (is_tensor(a) and is_tensor(b)):
            continue
        if half_outside:
            x = a
        else:
            half = scalar_operand(a, MUL)
            if half is None or half[1] != 0.5:
                continue
            x = half[0]
        if _erf_of_scaled(b) is not x:
            continue
        replace_uses_with_op(module, node, node.outputs[0], "gelu", (x,), {"approximate": "none"},
                             x.tensor_type)
        return None
    return SKIP


def _raise_gelu_tanh(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: ``mul(0.5*x, 1 + tanh(c1 * (x + c2 * x^3)))`` (either operand order)."""
    if len(node.args) < 2 or not all(is_tensor(v) for v in node.args[:2]):
        return SKIP
    for half_v, poly_v in (node.args[:2], node.args[1::-1]):
        half, one_plus = scalar_operand(half_v, MUL), scalar_operand(poly_v, ADD)
        if half is None or one_plus is None:
            continue
        x, c_half = half
        tanh = producer(one_plus[0], ("aten.tanh.default", "tanh"))
        inner = scalar_operand(tanh.args[0], MUL) if tanh is not None else None
        add = producer(inner[0], ("aten.add.Tensor",)) if inner is not None else None
        if add is None or number(add.attr("alpha", 1)) != 1.0 or x not in add.args[:2]:
            continue
        cubic = scalar_operand(add.arg(1) if add.arg(0) is x else add.arg(0), MUL)
        if cubic is None or _cube_of(cubic[0]) is not x:
            continue
        got = {"half": c_half, "one": one_plus[1], "sqrt_2_over_pi": inner[1], "cubic": cubic[1]}
        wrong = [f"{k}={v!r}" for k, v in got.items() if not math.isclose(v, _GELU_TANH[k], rel_tol=1e-6)]
        if wrong:
            return f"the constants {', '.join(wrong)} are not those of gelu's tanh approximation"
        replace_uses_with_op(module, node, node.outputs[0], "gelu", (x,), {"approximate": "tanh"}, x.tensor_type)
        return None
    return SKIP


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
        if is_tensor(src) and src.type == node.outputs[0].type and \
                node.kwargs.get("memory_format") is None:
            module.graph.replace_all_uses(node.outputs[0], src)
            if not node.outputs[0].users() and not module.graph.is_output(node.outputs[0]):
                module.graph.remove(node)


def _unbind_projection(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """``unbind(view(linear(x, W, b), [B, S, n, H, D]), 2)`` (ModernBERT's fused Wqkv) -> one
    linear per part (rows of W) viewed as [B, S, H, D]. Exact."""
    a = bind_args(node.op, node.args, node.kwargs)
    view = producer(a["self"], VIEWS)
    lin = producer(view.args[0], ("aten.linear.default",)) if view is not None else None
    if lin is None:
        return SKIP
    vt, lt = view.outputs[0].tensor_type, lin.outputs[0].tensor_type
    dim = a.get("dim", 0)
    if vt.rank != 5 or lt.rank != 3 or not isinstance(dim, int) or dim % 5 != 2:
        return SKIP
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
    def rule(module: Module, node: Node, ctx: RuleContext) -> str | None:
        a = bind_args(node.op, node.args, node.kwargs)
        built = build(a)
        if isinstance(built, str):
            return built
        args, kwargs = built
        new = replace_uses_with_op(module, node, node.outputs[0], op, args, kwargs, node.outputs[0].type)
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


_Rule = tuple[str, Callable[[Module, Node, RuleContext], str | None]]

_COMPOSITE_RULES: dict[str, _Rule | tuple[_Rule, ...]] = {
    "aten.softmax.int": (("attention", raise_eager_attention),
                         ("attention", raise_disentangled_attention)),
    "aten._softmax.default": (("attention", raise_eager_attention),
                              ("attention", raise_disentangled_attention)),
    "aten.addmm.default": ("linear", _raise_matmul_linear),
    "aten.mm.default": ("linear", _raise_matmul_linear),
    "aten.matmul.default": ("linear", _raise_matmul_linear),
    "aten.mul.Tensor": (("gelu", _raise_gelu_tanh), ("gelu", _raise_gelu_erf),
                        ("rms_norm", raise_rms_norm), ("head-local", raise_scaled_head_split)),
    "aten.div.Tensor": ("head-local", raise_scaled_head_split),
    "aten.add.Tensor": ("rotary", raise_rotary),
    "aten.layer_norm.default": ("layer_norm", raise_head_layer_norm),
    "aten.unbind.int": ("linear", _unbind_projection),
}
"""Multi-node patterns, by root op; they run first, while the graph is plain ATen."""

_RULES: dict[str, _Rule] = {
    "aten.scaled_dot_product_attention.default": ("attention", raise_sdpa),
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


def _split_projection(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """``split(linear(x, W, b), size, -1)`` -> one ``linear`` per part with row-sliced W, b.

    GPT-2 computes q, k and v with one packed projection; separate projections are what
    head pruning slices. Exact: each part's rows are the same dot products.
    """
    a = bind_args(node.op, node.args, node.kwargs)
    src = a["self"]
    lin = src.producer if isinstance(src, Value) else None
    if lin is None or lin.op != "linear":
        return SKIP
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


def _sliced_projection(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """``linear(x, W, b)`` read only by slices that partition its output features (Phi-3's
    fused ``qkv_proj``) -> one ``linear`` per slice with row-sliced W, b. Exact."""
    out = node.outputs[0]
    users = out.users()
    if not users or module.graph.is_output(out) or any(u.op != "aten.slice.Tensor" for u in users):
        return SKIP
    weight, bias = node.args[1], node.arg(2)
    if not (isinstance(weight, Parameter) and (bias is None or isinstance(bias, Parameter))):
        return SKIP
    rank, total = out.tensor_type.rank, weight.data.shape[0]
    ranges = []
    for u in users:
        dim, start, end, step = u.arg(1, 0), u.arg(2, 0), u.arg(3), u.arg(4, 1)
        if u.args[0] is not out or not isinstance(dim, int) or dim % rank != rank - 1 or step != 1:
            return SKIP
        start = 0 if start is None else start
        end = total if end is None else min(end, total)
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start < end:
            return SKIP
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
        kept = [v for v in node.arg(0) if not (is_tensor(v) and v.tensor_type.shape[dim] == 0)]
        if len(kept) == 1 and is_tensor(kept[0]) and kept[0].type == out.type:
            module.graph.replace_all_uses(out, kept[0])


def raise_high_level_ops(module: Module) -> RaiseReport:
    """Rewrite every matching ATen pattern in place; dead leftovers remain for DCE.

    A rewrite only redirects the uses of the pattern's result, so it never changes numbers
    beyond float rounding (kernels compute the same function). Raising twice is a no-op.
    """
    report = RaiseReport()
    ctx = RuleContext([concrete_env(module), concrete_env(module, offset=1)])
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
            reasons = []  # a rule's reason is a miss only when no later rule of the root fires
            for op, fn in (rule if isinstance(rule[0], tuple) else (rule,)):
                reason = fn(module, node, ctx)
                if reason is None:
                    report.count(op)
                    if node.graph is not None and not any(
                        o.users() or module.graph.is_output(o) for o in node.outputs
                    ):
                        module.graph.remove(node)
                    reasons = []
                    break
                if reason:
                    reasons.append(f"{node!r} not raised to {op}: {reason}")
            if reasons:
                explained.add(node)
                report.misses += reasons
    live = _live_nodes(module)
    for node in module.graph:  # a softmax weighting values that every rule skipped silently
        if node in live and node not in explained and weights_values(node):
            report.misses.append(
                f"{node!r} not raised to attention: its probabilities weight values (an attention "
                "pattern) but no attention rule recognizes this form")
    for _ in range(reassociate_parallel_sums(module)):  # raising_parallel.py
        report.count("parallel")
    return report


