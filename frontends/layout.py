"""Proving tensor layouts by evaluation.

Whether a chain of view/reshape/transpose/permute ops splits a [batch, seq, heads*head_dim]
tensor into heads (or merges them back) depends on reshape constants and symbolic sizes. Rather
than reasoning about each op, the chain is run on an index tensor (``arange``) at concrete sizes
of the module's symbolic dims and compared with the canonical layout: equal indices mean the
chain moves every element exactly where the canonical split/merge would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch

from optc.ir.core import Module, Node, Value, map_values
from optc.ir.targets import resolve
from optc.ir.types import Dim, SymType, TensorType

__all__ = ["MOVEMENT_OPS", "LINEAR_OPS", "linear_rows", "merge_heads_projection", "concrete_env", "eval_dim", "same_shape", "eval_chain", "index_tensor",
           "split_heads_source", "unflatten_heads_source", "merge_heads_target", "moves_as",
           "repeat_kv_source"]

_MAX_CHAIN = 6

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


_SPLIT_OPS = MOVEMENT_OPS | {"aten.slice.Tensor"}
"""Ops a head split may pass through (a slice must be a no-op, which the evaluation proves)."""


def concrete_env(module: Module, offset: int = 0) -> dict[str, int]:
    sizes = [3, 7, 5, 11, 13, 17, 19, 23]
    return {
        name: sizes[(i + offset) % len(sizes)] + 24 * (i // len(sizes)) + 29 * offset
        for i, name in enumerate(module.dims)
    }


def eval_dim(dim: int | str, env: dict[str, int]) -> int | None:
    if isinstance(dim, int):
        return dim
    try:
        expr = sympy.sympify(dim, locals={k: sympy.Symbol(k, integer=True) for k in env})
        value = expr.subs({sympy.Symbol(k, integer=True): v for k, v in env.items()})
        return int(value)
    except (sympy.SympifyError, TypeError, ValueError):
        return None


def same_shape(a: tuple[Dim, ...], b: tuple[Dim, ...], envs: list[dict[str, int]]) -> bool:
    """Whether two shapes are equal for every size of the symbolic dims (checked at two)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        for env in envs:
            ex, ey = eval_dim(x, env), eval_dim(y, env)
            if ex is None or ex != ey:
                return False
    return True


def eval_chain(chain: list[Node], start: Value, x: torch.Tensor, env: dict[str, int]) -> torch.Tensor | None:
    """Run a chain of movement ops on ``x`` standing for ``start``; None if not evaluable."""
    values: dict[int, Any] = {id(start): x}

    def lookup(v: Value) -> Any:
        if id(v) in values:
            return values[id(v)]
        if isinstance(v.type, SymType) and v.type.kind == "int" and v.type.expr is not None:
            dim = eval_dim(v.type.expr, env)
            if dim is not None:
                return dim
        raise LookupError(v.name)

    for node in chain:
        if node.op in LINEAR_OPS:
            values[id(node.outputs[0])] = linear_rows(node, values.get(id(node.args[0])))
            if values[id(node.outputs[0])] is None:
                return None
            continue
        try:
            args = map_values(node.args, lookup)
            kwargs = map_values(node.kwargs, lookup)
            values[id(node.outputs[0])] = resolve(node.op)(*args, **kwargs)
        except (LookupError, RuntimeError):
            return None
    return values[id(chain[-1].outputs[0])] if chain else x


LINEAR_OPS = ("aten.linear.default", "linear")
"""Projections a chain may pass through: they map each row (the last dim) on its own."""


def linear_rows(node: Node, x: torch.Tensor | None) -> torch.Tensor | None:
    """A projection ``node`` on an index tensor ``x`` whose rows are whole rows of the index
    space (``x[..., :] = r*n + arange(n)`` for row ``r``, ``n`` the input features): row ``r``
    becomes ``r*m + arange(m)``, the same row of the index space of the projection's output
    (``m`` features). None when a row of ``x`` is not a whole row (the chain moved features
    across rows, which no projection commutes with)."""
    if x is None or x.dim() == 0:
        return None
    n, m = x.shape[-1], node.outputs[0].tensor_type.shape[-1]
    if not isinstance(m, int):
        return None
    first = x[..., :1]
    if bool((first % n != 0).any()) or not torch.equal(x, first + torch.arange(n)):
        return None
    return first // n * m + torch.arange(m)


def index_tensor(value: Value, env: dict[str, int]) -> torch.Tensor | None:
    shape = [eval_dim(d, env) for d in value.tensor_type.shape]
    if any(s is None for s in shape):
        return None
    return torch.arange(int(torch.Size(shape).numel()), dtype=torch.int64).reshape(shape)


def _chain_source(value: Value, ops: frozenset[str] | set[str], env: dict[str, int],
                  expect: Callable[[TensorType], Callable[[torch.Tensor], torch.Tensor] | None],
                  ) -> Value | None:
    """Walk ``value``'s producers through ``ops`` and return the first source ``x`` for which
    ``expect(x's type)`` gives a function ``want`` and the chain, evaluated on an index tensor
    of ``x``'s shape, equals ``want(index tensor)``: a layout proven on values, not on names."""
    chain: list[Node] = []
    current = value
    for _ in range(_MAX_CHAIN):
        node = current.producer
        if node is None or node.op not in ops:
            break
        chain.insert(0, node)
        current = node.args[0]
        if not isinstance(current, Value):
            break
        t = current.type
        want = expect(t) if isinstance(t, TensorType) else None
        if want is None:
            continue
        x = index_tensor(current, env)
        if x is None:
            continue
        got = eval_chain(chain, current, x, env)
        expected = want(x)
        if got is not None and got.shape == expected.shape and torch.equal(got, expected):
            return current
    return None


def split_heads_source(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] value that ``value`` ([B, heads, S, dim], or [B*heads, S, dim] with
    the heads flattened into the batch, as ``bmm`` takes them) is a head split of."""
    flat = value.tensor_type.rank == 3

    def expect(t: TensorType) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if t.rank != 3 or t.shape[-1] != heads * dim:
            return None
        if flat:
            return lambda x: x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2).reshape(
                -1, x.shape[1], dim)
        return lambda x: x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2)

    source = _chain_source(value, _SPLIT_OPS, env, expect)
    if source is not None:
        return source
    return (f"%{value.name} is not a [batch, seq, {heads}*{dim}] tensor split into heads"
            + (" flattened into the batch" if flat else ""))


def unflatten_heads_source(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | None:
    """The [B, S, heads*dim] value that ``value`` ([B, S, heads, dim], heads not yet moved
    before the sequence, as GPT-J splits them) views per head."""
    def expect(t: TensorType) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if t.rank != 3 or t.shape[-1] != heads * dim:
            return None
        return lambda x: x.view(x.shape[0], x.shape[1], heads, dim)

    return _chain_source(value, _SPLIT_OPS, env, expect)


def merge_heads_target(value: Value, heads: int, dim: int, env: dict[str, int]) -> Value | str:
    """The [B, S, heads*dim] value that merges the heads of ``value`` ([B, heads, S, dim], or
    [B*heads, S, dim] with the heads flattened into the batch)."""
    chain: list[Node] = []
    current = value
    flat = value.tensor_type.rank == 3
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
            x = index_tensor(value, env)
            if x is None:
                break
            got = eval_chain(chain, value, x, env)
            x4 = x.unflatten(0, (-1, heads)) if flat else x
            want = x4.transpose(1, 2).reshape(x4.shape[0], x4.shape[2], heads * dim)
            if got is not None and got.shape == want.shape and torch.equal(got, want):
                return current
    return (f"the result %{value.name} is not merged back to [batch, seq, {heads}*{dim}]"
            + (" from heads flattened into the batch" if flat else ""))


def moves_as(chain: list[Node], start: Value, env: dict[str, int],
             want: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether the movement ops ``chain`` (each reading the previous one's result, the first
    ``start``) move every element of an index tensor of ``start`` where ``want`` does."""
    x = index_tensor(start, env)
    if x is None:
        return False
    got, expected = eval_chain(chain, start, x, env), want(x)
    return got is not None and got.shape == expected.shape and torch.equal(got, expected)


def merge_heads_projection(value: Value, heads: int, dim: int, env: dict[str, int]
                           ) -> tuple[Node, Value, bool] | None:
    """``(projection, result, seq_first)`` when ``value`` ([B, heads, S, dim]) reaches ``result``
    ([B, S, m], or [S, B, m] when seq_first) through movement ops, one projection and movement
    ops again (each read by the next alone), and ``result`` is the projection of the merged
    heads: rows moved before the projection and back after it (``nn.MultiheadAttention``
    merges into [S*B, heads*dim] rows, projects and views them back, as [S, B, m] without
    batch_first), proven on index tensors."""
    chain: list[Node] = []
    current, projection = value, None
    seq_first: tuple[Node, Value, bool] | None = None  # kept while the rows may still move back
    graph = value.producer.graph if value.producer else None
    for _ in range(2 * _MAX_CHAIN + 1):
        users = current.users()
        if len(users) != 1 or (graph is not None and graph.is_output(current)):
            return seq_first
        node = users[0]
        if node.args[0] is not current or not (
                node.op in MOVEMENT_OPS or (node.op in LINEAR_OPS and projection is None)):
            return seq_first
        chain.append(node)
        projection = node if node.op in LINEAR_OPS else projection
        current = node.outputs[0]
        t = current.type
        if projection is None or not isinstance(t, TensorType) or t.rank != 3:
            continue
        batch, seq = (eval_dim(d, env) for d in (value.tensor_type.shape[0], value.tensor_type.shape[2]))
        width = eval_dim(t.shape[-1], env)
        if None in (batch, seq, width):
            return None
        merged = torch.arange(batch * seq * heads * dim).reshape(batch, seq, heads, dim)
        got = eval_chain(chain, value, merged.transpose(1, 2), env)
        want = torch.arange(batch * seq * width).reshape(batch, seq, width)
        if got is not None and got.shape == want.shape and torch.equal(got, want):
            return projection, current, False
        want = want.transpose(0, 1)
        if got is not None and got.shape == want.shape and torch.equal(got, want):
            seq_first = projection, current, True
    return seq_first


_REPEAT_OPS = MOVEMENT_OPS | {"aten.expand.default", "aten.slice.Tensor",
                              "aten.repeat_interleave.self_int"}


def repeat_kv_source(value: Value, heads: int, dim: int, env: dict[str, int]) -> tuple[Value, int] | None:
    """``(x, kv)`` when ``value`` ([B, heads, S, dim]) repeats each of the ``kv`` heads of ``x``
    ([B, kv, S, dim]) ``heads/kv`` times in a row (``repeat_kv`` of grouped-query attention),
    proven by evaluating the chain on an index tensor."""
    def expect(t: TensorType) -> Callable[[torch.Tensor], torch.Tensor] | None:
        kv = t.shape[1] if t.rank == 4 else None
        if t.rank != 4 or t.shape[3] != dim or not isinstance(kv, int) or not kv < heads \
                or heads % kv:
            return None
        return lambda x: x.repeat_interleave(heads // kv, dim=1)

    source = _chain_source(value, _REPEAT_OPS, env, expect)
    return None if source is None else (source, source.tensor_type.shape[1])


# -- small graph queries --------------------------------------------------------------------------
