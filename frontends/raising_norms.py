"""Raising rules for norms written out in ATen.

RMSNorm: ``(offset + w) * (x * rsqrt(mean(x^2, -1, keepdim) + eps))`` in either operand order,
the inverse root also as ``pow(., -0.5)``, ``x^2`` also as ``x * x``, the weight optional (a
weightless RMSNorm is the normalization alone) -> ``rms_norm``.

Per-head query/key normalization (Qwen3, OLMoE, Persimmon, Cohere, ...): a norm over the
last dim of a head split of a projection, ``norm(view(q_proj(x), [B, S, H, D]))``, becomes the
norm with ``head_dim=D`` on the projection itself followed by the same split,
``view(norm(q_proj(x), head_dim=D), [B, S, H, D])`` (RMSNorm when it is raised; a LayerNorm
from ``aten.layer_norm`` before the rotary and attention rules run).

Why: the attention and rotary rules find their operands by proving that a chain of movement
ops splits a ``[batch, seq, heads*head_dim]`` tensor into heads; a norm inside that chain
hides the split. Regrouped, the norm sits between the projection and the split, where the
analysis sees it as a head-local op (as ``rotary``), and removing heads only slices the
projection in front of it (the norm's weight is the same for every head).

A head split multiplied by a number (a query scaled between its norm and its rotary) is moved
before the split the same way.

Exact by construction: the rule proves, by evaluating the movement chain on an index tensor
at two assignments of the symbolic sizes, that every row the norm normalizes (the last dim of
its input) is one aligned block of ``head_dim`` consecutive features of the source's last dim,
and that the chain moves every element exactly once. Movement ops only: a slice could drop
features the regrouped norm would then normalize."""

from __future__ import annotations

from typing import Any

import torch

from optc.frontends.layout import MOVEMENT_OPS, eval_chain, index_tensor
from optc.frontends.raising_common import (
    ADD,
    MAX_CHAIN,
    SKIP,
    RuleContext,
    is_tensor,
    number,
    operand_pairs,
    producer,
    replace_uses_with_op,
    scalar_operand,
    strip_casts,
)
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.targets import bind_args

__all__ = ["raise_rms_norm", "regroup_head_norm", "raise_head_layer_norm", "raise_scaled_head_split"]


def _rms_weight(value: Any) -> tuple[Parameter, float] | None:
    value = strip_casts(value)
    if isinstance(value, Parameter):
        return value, 0.0
    found = scalar_operand(value, ADD)
    if found is not None and isinstance(strip_casts(found[0]), Parameter):
        return strip_casts(found[0]), found[1]
    return None


def _inverse_rms(value: Any) -> tuple[Value, Any] | str | None:
    """``(x, eps)`` when ``value`` is ``x * rsqrt(mean(x^2, -1, keepdim) + eps)`` (the root
    square's inverse also as ``pow(., -0.5)``; ``x^2`` also as ``x * x``); a reason when only
    the reduction is wrong; None when it is not that form."""
    for x, r in operand_pairs(producer(value, ("aten.mul.Tensor",))):
        rsqrt = producer(r, ("aten.rsqrt.default",))
        if rsqrt is None:
            power = producer(r, ("aten.pow.Tensor_Scalar",))
            rsqrt = power if power is not None and number(power.arg(1)) == -0.5 else None
        eps = scalar_operand(rsqrt.args[0], ADD) if rsqrt is not None else None
        mean = producer(eps[0], ("aten.mean.dim",)) if eps is not None else None
        if mean is None or not is_tensor(x):
            continue
        sq = producer(mean.args[0], ("aten.pow.Tensor_Scalar",))
        if sq is None or sq.args[0] is not x or number(sq.arg(1)) != 2.0:
            sq = producer(mean.args[0], ("aten.mul.Tensor",))
            if sq is None or not (sq.arg(0) is x and sq.arg(1) is x):
                continue
        rank = x.tensor_type.rank
        if list(mean.arg(1, [])) not in ([-1], [rank - 1]) or not mean.arg(2, False):
            return "the mean square is not over the last dim with keepdim"
        return x, eps[1]
    return None


def raise_rms_norm(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: ``(offset + w) * (x * rsqrt(mean(x^2, -1, keepdim) + eps))`` (either order), or
    the normalization alone when no weight multiplies it (a weightless RMSNorm)."""
    out = node.outputs[0]
    for w_v, y_v in operand_pairs(node):
        weighted = _rms_weight(w_v)
        if weighted is None or not is_tensor(y_v):
            continue
        found = _inverse_rms(strip_casts(y_v))
        if found is None:
            continue
        if isinstance(found, str):
            return found
        (x, eps), (weight, offset) = found, weighted
        if tuple(weight.data.shape) != (x.tensor_type.shape[-1],):
            return f"the weight @{weight.name} is not a vector of the normalized dim"
        if out.type != x.type:
            return "the normalized result changes dtype or shape"
        return _new_rms_norm(module, node, x, weight, {"eps": float(eps), "offset": float(offset)}, ctx)
    found = _inverse_rms(out)
    if found is None or isinstance(found, str):
        return found or SKIP
    users = out.users()
    if len(users) == 1 and users[0].op == "aten.mul.Tensor" and \
            any(_rms_weight(w) is not None for w, y in operand_pairs(users[0]) if y is out):
        return SKIP  # the weighted form, matched at that multiplication
    x, eps = found
    if out.type != x.type:
        return "the normalized result changes dtype or shape"
    return _new_rms_norm(module, node, x, None, {"eps": float(eps)}, ctx)


def _new_rms_norm(module: Module, node: Node, x: Value, weight: Parameter | None,
                  kwargs: dict[str, Any], ctx: RuleContext) -> None:
    new = replace_uses_with_op(module, node, node.outputs[0], "rms_norm", (x, weight), kwargs,
                               node.outputs[0].tensor_type)
    regroup_head_norm(module, new, ctx)  # a per-head q/k norm moves before the split
    return None



# -- per-head norms ------------------------------------------------------------------------
def _blocks_of(chain: list[Node], source: Value, target: Value, dim: int,
               envs: list[dict[str, int]]) -> bool:
    """Whether ``chain`` moves ``source``'s elements onto ``target`` so that each last-dim row
    of ``target`` is an aligned block of ``dim`` consecutive features of ``source``'s last dim,
    every element used once (at every assignment in ``envs``)."""
    for env in envs:
        x = index_tensor(source, env)
        if x is None or x.dim() < 2:
            return False
        got = eval_chain(chain, source, x, env)
        if got is None or got.numel() != x.numel() or got.shape[-1] != dim:
            return False
        first = got[..., :1]
        if bool((first % dim != 0).any()) or not torch.equal(got, first + torch.arange(dim)):
            return False
        if not torch.equal(got.flatten().sort().values, x.flatten()):
            return False
    return True


def _head_source(x: Value, dim: int, ctx: RuleContext) -> tuple[Value, list[Node]] | None:
    """The furthest value up ``x``'s movement chain whose last dim holds whole heads of
    ``dim`` features that the chain splits into ``x``'s rows, with the chain (source first)."""
    chain: list[Node] = []
    current, found = x, None
    for _ in range(MAX_CHAIN):
        node = current.producer
        if node is None or node.op not in MOVEMENT_OPS or not is_tensor(node.args[0]):
            break
        chain.insert(0, node)
        current = node.args[0]
        last = current.tensor_type.shape[-1] if current.tensor_type.rank else None
        if isinstance(last, int) and last > dim and last % dim == 0 and \
                _blocks_of(chain, current, x, dim, ctx.envs):
            found = (current, list(chain))
    return found


def _regroup(module: Module, norm: Node, x: Value, args: tuple, kwargs: dict[str, Any],
             dim: int, ctx: RuleContext) -> bool:
    """Rewrite ``norm`` (of a head split ``x``) as the same norm with ``head_dim`` on the split's
    source followed by the split replayed; False when ``x`` is no such split."""
    op = "rms_norm" if norm.op == "rms_norm" else "layer_norm"
    return _moved_before_split(module, norm, x, dim, ctx, lambda source: (
        op, (source, *args), {**kwargs, "head_dim": dim}))


def _moved_before_split(module: Module, node: Node, x: Value, dim: int, ctx: RuleContext,
                        build: Any) -> bool:
    """Replace ``node`` (which reads the head split ``x``) by ``build(source)`` = (op, args,
    kwargs) on the split's source, followed by the split replayed; False when ``x`` is no split
    into rows of ``dim`` features."""
    if not is_tensor(x) or x.tensor_type.rank < 3 or x.tensor_type.shape[-1] != dim:
        return False
    found = _head_source(x, dim, ctx)
    if found is None:
        return False
    source, chain = found
    out = node.outputs[0]
    op, args, kwargs = build(source)
    grouped = module.graph.create_node(op, args, kwargs, [source.type],
                                       names=op.split(".")[1] if op.startswith("aten.") else op,
                                       after=node)
    grouped.loc = node.loc
    value, anchor = grouped.outputs[0], grouped
    for step in chain:
        moved = module.graph.create_node(step.op, (value, *step.args[1:]), dict(step.kwargs),
                                         [step.outputs[0].type], names=step.outputs[0].name,
                                         after=anchor)
        moved.loc = step.loc
        value, anchor = moved.outputs[0], moved
    module.graph.replace_all_uses(out, value)
    return True


def regroup_head_norm(module: Module, norm: Node, ctx: RuleContext) -> bool:
    """An ``rms_norm``/``layer_norm`` node over one head's features of a head split -> the norm
    with ``head_dim`` on the split's source; True when rewritten (``norm`` is then dead)."""
    if norm.attr("head_dim") is not None:
        return False
    x = norm.args[0]
    if norm.op == "rms_norm":
        dim = x.tensor_type.shape[-1] if is_tensor(x) else None
        return isinstance(dim, int) and _regroup(module, norm, x, tuple(norm.args[1:]),
                                                 dict(norm.kwargs), dim, ctx)
    if norm.op == "layer_norm":
        shape = list(norm.attr("normalized_shape"))
        return len(shape) == 1 and _regroup(module, norm, x, tuple(norm.args[1:]),
                                            dict(norm.kwargs), shape[0], ctx)
    return False


def raise_head_layer_norm(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root ``aten.layer_norm`` over the last dim of a head split -> ``layer_norm(head_dim=D)``
    on the split's source. It runs with the composite rules, before the rotary and attention
    rules look for the split; any other layer norm is left to the one-node rule."""
    a = bind_args(node.op, node.args, node.kwargs)
    shape = list(a["normalized_shape"])
    if len(shape) != 1 or not isinstance(shape[0], int):
        return SKIP
    kwargs = {"normalized_shape": shape, "eps": float(a.get("eps", 1e-5))}
    ok = _regroup(module, node, a["input"], (a.get("weight"), a.get("bias")), kwargs, shape[0], ctx)
    return None if ok else SKIP


def raise_scaled_head_split(module: Module, node: Node, ctx: RuleContext) -> str | None:
    """Root: a head split multiplied or divided by a number (a query scaled between its norm and
    its rotary) -> the same scaling on the split's source, before the split, where the rotary
    and attention rules see through it (an elementwise op with a number commutes with moving
    elements, so this is exact)."""
    found = scalar_operand(node.outputs[0], (node.op,))
    if found is None or found[0].producer is None or found[0].producer.op not in MOVEMENT_OPS:
        return SKIP
    x, dim = found[0], found[0].tensor_type.shape[-1]
    if not isinstance(dim, int) or x.type != node.outputs[0].type:
        return SKIP
    args = tuple(node.args)
    ok = _moved_before_split(module, node, x, dim, ctx, lambda source: (
        node.op, tuple(source if a is x else a for a in args), dict(node.kwargs)))
    return None if ok else SKIP
