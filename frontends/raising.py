"""Raising: rewrite ATen patterns into optc's high-level transformer ops.

Each rule is pattern + check + rewrite (as in onnxscript's rewriter). A check that fails returns
a reason, so "why was this attention not raised?" has an answer:
``raise_high_level_ops(module).misses`` lists them.

Structure is found from the graph alone: the attention rule starts at a
``scaled_dot_product_attention`` call and proves, by evaluating the surrounding view/transpose/
reshape chain on an index tensor, that its operands are a [batch, seq, heads*head_dim] tensor
split into heads and that its result is merged back. Module and parameter names are never used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from optc.ir.core import Module, Node, Value, map_values
from optc.ir.targets import bind_args, resolve
from optc.ir.types import SymType, TensorType

__all__ = ["raise_high_level_ops", "RaiseReport", "MOVEMENT_OPS"]

MOVEMENT_OPS = frozenset({
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.transpose.int",
    "aten.permute.default",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.unsqueeze.default",
    "aten.squeeze.dim",
    "aten.flatten.using_ints",
    "aten.unflatten.int",
})
"""Ops that only move or copy elements; chains of them are checked by evaluation."""

_MAX_CHAIN = 6


@dataclass
class RaiseReport:
    """What raising did: ops created per kind, and reasons for patterns left alone."""

    raised: dict[str, int] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)

    def count(self, op: str) -> None:
        self.raised[op] = self.raised.get(op, 0) + 1


# -- concrete evaluation of movement chains -----------------------------------------------------
def _concrete_env(module: Module) -> dict[str, int]:
    sizes = [3, 7, 5, 11, 13, 17, 19, 23]
    return {name: sizes[i % len(sizes)] + 24 * (i // len(sizes)) for i, name in enumerate(module.dims)}


def _eval_dim(dim: int | str, env: dict[str, int]) -> int | None:
    if isinstance(dim, int):
        return dim
    try:
        expr = sympy.sympify(dim, locals={k: sympy.Symbol(k, integer=True) for k in env})
        value = expr.subs({sympy.Symbol(k, integer=True): v for k, v in env.items()})
        return int(value)
    except (sympy.SympifyError, TypeError, ValueError):
        return None


def _eval_chain(chain: list[Node], start: Value, x: torch.Tensor, env: dict[str, int]) -> torch.Tensor | None:
    """Run a chain of movement ops on ``x`` standing for ``start``; None if not evaluable."""
    values: dict[int, Any] = {id(start): x}

    def lookup(v: Value) -> Any:
        if id(v) in values:
            return values[id(v)]
        if isinstance(v.type, SymType) and v.type.kind == "int" and v.type.expr is not None:
            dim = _eval_dim(v.type.expr, env)
            if dim is not None:
                return dim
        raise LookupError(v.name)

    for node in chain:
        try:
            args = map_values(node.args, lookup)
            kwargs = map_values(node.kwargs, lookup)
            values[id(node.outputs[0])] = resolve(node.op)(*args, **kwargs)
        except (LookupError, RuntimeError):
            return None
    return values[id(chain[-1].outputs[0])] if chain else x


def _index_tensor(value: Value, env: dict[str, int]) -> torch.Tensor | None:
    shape = [_eval_dim(d, env) for d in value.tensor_type.shape]
    if any(s is None for s in shape):
        return None
    return torch.arange(int(torch.Size(shape).numel()), dtype=torch.int64).reshape(shape)


def _split_heads_source(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] value that ``value`` ([B, heads, S, dim]) is a head split of."""
    chain: list[Node] = []
    current = value
    for _ in range(_MAX_CHAIN):
        node = current.producer
        if node is None or node.op not in MOVEMENT_OPS:
            break
        chain.insert(0, node)
        current = node.args[0]
        if not isinstance(current, Value):
            break
        t = current.type
        if isinstance(t, TensorType) and t.rank == 3 and t.shape[-1] == heads * dim:
            x = _index_tensor(current, env)
            if x is None:
                continue
            got = _eval_chain(chain, current, x, env)
            want = x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)
            if got is not None and got.shape == want.shape and torch.equal(got, want):
                return current
    return f"%{value.name} is not a [batch, seq, {heads}*{dim}] tensor split into heads"


def _merge_heads_target(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] value that merges the heads of ``value`` ([B, heads, S, dim])."""
    chain: list[Node] = []
    current = value
    for _ in range(_MAX_CHAIN):
        users = current.users()
        graph = value.producer.graph if value.producer else None
        if len(users) != 1 or (graph is not None and graph.is_output(current)):
            break
        node = users[0]
        if node.op not in MOVEMENT_OPS or node.args[0] is not current:
            break
        chain.append(node)
        current = node.outputs[0]
        t = current.type
        if isinstance(t, TensorType) and t.rank == 3 and t.shape[-1] == heads * dim:
            x = _index_tensor(value, env)
            if x is None:
                break
            got = _eval_chain(chain, value, x, env)
            want = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], heads * dim)
            if got is not None and got.shape == want.shape and torch.equal(got, want):
                return current
    return f"the result %{value.name} is not merged back to [batch, seq, {heads}*{dim}]"


# -- rules ----------------------------------------------------------------------------------
def _raise_attention(module: Module, node: Node, env: dict[str, int]) -> str | None:
    a = bind_args(node.op, node.args, node.kwargs)
    if a.get("dropout_p") not in (0, 0.0, None):
        return "dropout_p is not 0 (capture the model in eval mode)"
    if a.get("enable_gqa"):
        return "grouped-query attention is not supported"
    q4, k4, v4, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
    if not all(isinstance(v, Value) and isinstance(v.type, TensorType) for v in (q4, k4, v4)):
        return "query/key/value are not tensors"
    qt, kt, vt = q4.type, k4.type, v4.type
    if not (qt.rank == kt.rank == vt.rank == 4):
        return "query/key/value are not 4-D [batch, heads, seq, head_dim]"
    heads, dim = qt.shape[1], qt.shape[3]
    if not (isinstance(heads, int) and isinstance(dim, int)):
        return "the head count or head size is symbolic"
    if kt.shape[1] != heads or vt.shape[1] != heads or kt.shape[3] != dim or vt.shape[3] != dim:
        return "query, key and value differ in head count or head size"
    if isinstance(mask, Value):
        mt = mask.type
        if not isinstance(mt, TensorType) or (mt.rank >= 3 and mt.shape[-3] != 1):
            return "the mask is not broadcast over heads (its head dim is not 1)"
    elif mask is not None:
        return "the mask is not a tensor"
    sources = []
    for v in (q4, k4, v4):
        src = _split_heads_source(v, heads, dim, env)
        if isinstance(src, str):
            return src
        sources.append(src)
    out = node.outputs[0]
    target = _merge_heads_target(out, heads, dim, env)
    if isinstance(target, str):
        return target
    scale = a.get("scale")
    new = module.graph.create_node(
        "attention",
        (sources[0], sources[1], sources[2], mask),
        {
            "num_heads": heads,
            "head_dim": dim,
            "scale": None if scale is None else float(scale),
            "causal": bool(a.get("is_causal")),
        },
        [target.type],
        names="attention",
        after=node,
    )
    new.loc = node.loc
    module.graph.replace_all_uses(target, new.outputs[0])
    return None


def _simple(op: str, build: Any) -> Any:
    def rule(module: Module, node: Node, env: dict[str, int]) -> str | None:
        a = bind_args(node.op, node.args, node.kwargs)
        built = build(a)
        if isinstance(built, str):
            return built
        args, kwargs = built
        new = module.graph.create_node(op, args, kwargs, [node.outputs[0].type], names=op, after=node)
        new.loc = node.loc
        module.graph.replace_all_uses(node.outputs[0], new.outputs[0])
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


_RULES = {
    "aten.scaled_dot_product_attention.default": ("attention", _raise_attention),
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


def raise_high_level_ops(module: Module) -> RaiseReport:
    """Rewrite every matching ATen pattern in place; dead leftovers remain for DCE."""
    report = RaiseReport()
    env = _concrete_env(module)
    for node in module.graph:
        rule = _RULES.get(node.op)
        if rule is None or node.graph is None:
            continue
        op, fn = rule
        reason = fn(module, node, env)
        if reason is None:
            report.count(op)
            if node.graph is not None and not any(
                o.users() or module.graph.is_output(o) for o in node.outputs
            ):
                module.graph.remove(node)
        else:
            report.misses.append(f"{node!r} not raised to {op}: {reason}")
    return report
