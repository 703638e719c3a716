"""Raising for parallel attention+FFN layers (GPT-J, GPT-NeoX, Falcon, Phi-1/2).

A parallel layer computes ``x + attn(ln(x)) + ffn(ln(x))`` (one shared norm: GPT-J, Phi,
Falcon-7B) or ``x + attn(ln1(x)) + ffn(ln2(x))`` (GPT-NeoX ``use_parallel_residual``, Falcon's
``new_decoder_architecture``). These rewrites make such layers look to the structure analysis
and the structural passes like two blocks on one residual stream:

- :func:`reassociate_parallel_sums`: the layer's sum ``(attn + ffn) + x`` (any operand order)
  becomes ``(x + attn) + ffn``. Each branch then has a residual add of its own whose other
  operand is what remains without it, so removing a branch (a dropped block, a head-less
  attention without bias, a gate in the search) is the same edit as for a sequential block, and
  dropping both removes the layer. The FFN still reads ``x`` (not ``x + attn``), which is how
  the analysis knows that the layer is parallel. Exact up to float rounding (the three terms are
  added in another order).
- :data:`FUSED_RULES` (run before raising.py's rules): a fused q/k/v projection whose output is viewed per head and split
  (GPT-NeoX's ``query_key_value`` viewed as ``[B, S, heads, 3*head_dim]`` and chunked; Falcon's
  ``[B, S, heads + 2, head_dim]`` with one shared key/value head, or grouped
  ``[B, S, kv, heads/kv + 2, head_dim]``) becomes one ``linear`` per part, whose rows are the
  columns that part gathers, viewed back to the part's layout. The gather is proven by
  evaluating the view/split chain on an index tensor, never read off names or constants. A
  part that repeats its heads (Falcon-40B broadcasts each kv head to its query heads) reads
  its distinct heads once and repeats them. A projection of moved rows (``nn.MultiheadAttention``
  projects [seq, batch, d]) reads the rows before they moved: a projection acts on each row,
  and the interpreter runs it on index tensors as a row map; after the rotary and attention rules ran, an
  attention whose key and value are such repeats reads the kv heads directly
  (``num_kv_heads``: grouped-query attention, prunable per kv group).
- :data:`FUSED_RULES` also raises GPT-J's ``rotate_every_two`` rotary (on ``[B, S, heads,
  head_dim]``, before the heads move ahead of the sequence, optionally on the first features of
  each head) to ``rotary(interleaved=True)`` (in :mod:`optc.frontends.raising_interleaved`).

Matched on the graph alone; module and parameter names are never used. Misses are reported
with a reason like raising.py's (a fused projection whose parts do not partition its outputs).
"""

from __future__ import annotations

from typing import Any

import torch

from optc.frontends.layout import (
    MOVEMENT_OPS,
    eval_chain,
    eval_dim,
    index_tensor,
)
from optc.frontends.raising_interleaved import raise_interleaved_rotary
from optc.ir.core import Module, Node, Parameter, Value, map_values
from optc.ir.targets import resolve
from optc.ir.types import TensorType

__all__ = ["FUSED_RULES", "reassociate_parallel_sums"]

_NORMS = ("layer_norm", "rms_norm")
_ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
_ADDS = ("aten.add.Tensor", "aten.add_.Tensor")
_CASTS = ("aten.to.dtype", "aten._to_copy.default", "aten.type_as.default")


def _producer(value: Any, *ops: str) -> Node | None:
    node = value.producer if isinstance(value, Value) else None
    return node if node is not None and node.op in ops else None


def _uncast(value: Any) -> Any:
    while isinstance(value, Value) and _producer(value, *_CASTS) is not None and \
            isinstance(value.producer.args[0], Value) and value.producer.args[0].type == value.type:
        value = value.producer.args[0]
    return value


def _plain_add(node: Node | None) -> bool:
    """``a + b`` of two tensors; an in-place ``a.add_(b)`` counts when nothing else reads ``a``
    (Falcon's ``mlp_output += attention_output``)."""
    if node is None or node.op not in _ADDS or node.attr("alpha", 1) != 1 or len(node.args) < 2 \
            or not all(isinstance(a, Value) for a in node.args[:2]):
        return False
    return node.op == "aten.add.Tensor" or (node.args[0].users() == [node] and
                                            not node.graph.is_output(node.args[0]))


# -- parallel sums -----------------------------------------------------------------------------
def _attention_reads(branch: Value) -> Value | None:
    """What an attention branch (``linear(attention(q, k, v))``) reads: its query projection's
    input."""
    out = _producer(branch, "linear")
    att = _producer(out.args[0], "attention") if out is not None else None
    if att is None:
        return None
    query = att.args[0]
    rot = _producer(query, "rotary")
    lin = _producer(rot.args[0] if rot is not None else query, "linear")
    return lin.args[0] if lin is not None else None


def _ffn_reads(branch: Value) -> Value | None:
    """What an FFN branch (``down(act(up(x)))`` or ``down(act(gate(x)) * up(x))``) reads."""
    down = _producer(branch, "linear")
    mid = down.args[0] if down is not None else None
    product = _producer(mid, "aten.mul.Tensor")
    candidates = product.args[:2] if product is not None else (mid,)
    for value in candidates:
        act = _producer(value, *_ACTIVATIONS)
        up = _producer(act.args[0], "linear") if act is not None else None
        if up is not None:
            return up.args[0]
    return None


def _reads_through_norm(x: Value | None, stream: Value) -> bool:
    """Whether ``x`` is ``stream`` or a norm of it (casts aside)."""
    x = _uncast(x)
    norm = _producer(x, *_NORMS)
    source = norm.args[0] if norm is not None else x
    return _uncast(source) is _uncast(stream)


def _parallel_terms(root: Node) -> tuple[Value, Value, Value] | None:
    """``(stream, attention branch, ffn branch)`` when ``root`` adds a stream to the sum of an
    attention branch and an FFN branch that both read that stream."""
    if not _plain_add(root):
        return None
    graph = root.graph
    for inner_v, stream in (root.args[:2], root.args[1::-1]):
        inner = _producer(inner_v, *_ADDS)
        if not _plain_add(inner) or inner_v.users() != [root] or graph.is_output(inner_v):
            continue
        for att, ffn in (inner.args[:2], inner.args[1::-1]):
            if not all(v.type == root.outputs[0].type for v in (att, ffn, stream)):
                continue
            if _reads_through_norm(_attention_reads(att), stream) and \
                    _reads_through_norm(_ffn_reads(ffn), stream):
                return stream, att, ffn
    return None


def _repeated_heads(value: Any) -> tuple[Node, int, int] | None:
    """``(linear, kv, repeat)`` when ``value`` is a linear's ``[B, S, kv*D]`` output with each
    head repeated ``repeat`` times in a row (what :func:`_repeat_heads` builds)."""
    flat = _producer(value, "aten.flatten.using_ints")
    expand = _producer(flat.args[0], "aten.expand.default") if flat is not None else None
    unsq = _producer(expand.args[0], "aten.unsqueeze.default") if expand is not None else None
    unflat = _producer(unsq.args[0], "aten.unflatten.int") if unsq is not None else None
    lin = _producer(unflat.args[0], "linear") if unflat is not None else None
    if lin is None or flat.arg(1) != -3 or flat.arg(2) != -1 or unsq.arg(1) != -2 or unflat.arg(1) != -1:
        return None
    shape = expand.outputs[0].tensor_type.shape
    return lin, int(shape[-3]), int(shape[-2])


def _fold_repeated_kv(module: Module) -> None:
    """An attention whose key and value repeat each of their ``kv`` heads for a group of query
    heads (before the rotary embedding, as Falcon-40B does) reads the ``kv`` heads directly,
    with ``num_kv_heads=kv``: grouped-query attention, exact (rotary is per head). The repeats
    are left for DCE."""
    for node in list(module.graph):
        if node.op != "attention" or node.attr("num_kv_heads") is not None:
            continue
        found = []
        for operand in node.args[1:3]:
            rot = _producer(operand, "rotary")
            rep = _repeated_heads(rot.args[0] if rot is not None else operand)
            if rep is None:
                break
            found.append((rot, rep))
        if len(found) != 2 or found[0][1][1:] != found[1][1][1:]:
            continue
        kv, repeat = found[0][1][1:]
        if kv * repeat != node.attr("num_heads") or found[1][0] is not None:
            continue
        (rot, (lin_k, _, _)), (_, (lin_v, _, _)) = found
        key = lin_k.outputs[0]
        if rot is not None:
            new = module.graph.create_node("rotary", (key, *rot.args[1:]), dict(rot.kwargs),
                                           [key.type], names="rotary", after=rot)
            new.loc, key = rot.loc, new.outputs[0]
        node.args = (node.args[0], key, lin_v.outputs[0], *node.args[3:])
        node.set_attr("num_kv_heads", kv)


def reassociate_parallel_sums(module: Module) -> int:
    """Rewrite every parallel layer's ``(attn + ffn) + x`` as ``(x + attn) + ffn`` (see the
    module docstring); returns how many layers were rewritten. Running it twice is a no-op.
    First, attention reading kv heads repeated by a fused split reads them as grouped-query
    attention (:func:`_fold_repeated_kv`)."""
    _fold_repeated_kv(module)
    count = 0
    for node in list(module.graph):
        if node.graph is None:
            continue
        terms = _parallel_terms(node)
        if terms is None:
            continue
        stream, att, ffn = terms
        t = node.outputs[0].type
        first = module.graph.create_node("aten.add.Tensor", (stream, att), {}, [t], names="add",
                                         after=node)
        second = module.graph.create_node("aten.add.Tensor", (first.outputs[0], ffn), {}, [t],
                                          names="add", after=first)
        first.loc = second.loc = node.loc
        module.graph.replace_all_uses(node.outputs[0], second.outputs[0])
        inner = next(a.producer for a in node.args[:2] if a is not stream)
        if not module.graph.is_output(node.outputs[0]):
            module.graph.remove(node)  # an in-place add_ would otherwise stay (impure)
            if not inner.outputs[0].users():
                module.graph.remove(inner)
        count += 1
    return count


# -- fused per-head projections ------------------------------------------------------------------
_PART_OPS = frozenset({"aten.chunk.default", "aten.split.Tensor", "aten.split_with_sizes.default",
                       "aten.unbind.int", "aten.slice.Tensor", "aten.select.int",
                       "aten.index.Tensor"})
"""Ops that take one part of a fused projection's per-head view."""
_MAX_CHAIN = 6


def _movement_chain(value: Value) -> tuple[list[Node], Value]:
    """The single-use chain of movement ops from ``value`` and the value it ends at."""
    chain: list[Node] = []
    graph = value.producer.graph if value.producer is not None else None
    while len(chain) < _MAX_CHAIN:
        users = value.users()
        if len(users) != 1 or users[0].op not in MOVEMENT_OPS or users[0].args[0] is not value or \
                (graph is not None and graph.is_output(value)):
            break
        chain.append(users[0])
        value = users[0].outputs[0]
    return chain, value


def _fused_linear(node: Node) -> tuple[Value, Parameter, Parameter | None, Value] | None:
    """``(x, W[out, in], bias, result)`` of ``aten.linear(x, W, b)`` or ``matmul(x, t(W))``
    (plus ``b`` when its only use adds a bias vector: Falcon's ``input @ W.T + b``)."""
    if node.op == "aten.linear.default":
        weight, bias = node.args[1], node.arg(2)
        if isinstance(weight, Parameter) and (bias is None or isinstance(bias, Parameter)):
            return node.args[0], weight, bias, node.outputs[0]
        return None
    t = _producer(node.arg(1), "aten.t.default", "aten.numpy_T.default", "aten.transpose.int")
    weight = t.args[0] if t is not None else None
    if node.op != "aten.matmul.default" or not isinstance(weight, Parameter) or \
            weight.data.dim() != 2 or (t.op == "aten.transpose.int" and
                                       sorted(d % 2 for d in t.args[1:3]) != [0, 1]):
        return None
    out, users = node.outputs[0], node.outputs[0].users()
    add = users[0] if len(users) == 1 and _plain_add(users[0]) and \
        users[0].op == "aten.add.Tensor" else None
    bias = None if add is None else next((a for a in add.args[:2] if a is not out), None)
    if isinstance(bias, Parameter) and tuple(bias.data.shape) == (weight.data.shape[0],) and \
            not node.graph.is_output(out):
        return node.args[0], weight, bias, add.outputs[0]
    return node.args[0], weight, None, out


_Part = tuple[Node, int, list[Node], Value]
"""A part of a fused view: the op taking it, which of its outputs, the movement ops after it
up to the part's head-split value, and that value."""


_PART_CHAIN = MOVEMENT_OPS | _PART_OPS | {"aten.expand.default", "aten.broadcast_to.default"}
"""Ops between a part op and the part's head-split value (Falcon-40B broadcasts its kv heads)."""


def _parts(start: Value) -> list[_Part] | None:
    """The parts the fused view ``start`` is split into; each ends at the first rank-4 value
    (``[B, H, S, D]`` or ``[B, S, H, D]``) after the part op."""
    parts: list[_Part] = []
    for user in start.users():
        if user.op not in _PART_OPS or user.args[0] is not start:
            return None
        for i, out in enumerate(user.outputs):
            if not out.users():
                continue
            rest, value = [], out
            while value.tensor_type.rank != 4 and len(rest) < _MAX_CHAIN:
                users = value.users()
                if len(users) != 1 or users[0].op not in _PART_CHAIN or users[0].args[0] is not value:
                    return None
                rest.append(users[0])
                value = users[0].outputs[0]
            if value.tensor_type.rank != 4:
                return None
            parts.append((user, i, rest, value))
    return parts


def _lookup(values: dict[int, Any], env: dict[str, int]) -> Any:
    def lookup(v: Value) -> Any:
        if id(v) in values:
            return values[id(v)]
        if isinstance(v, Parameter):
            return v.data
        dim = eval_dim(v.type.expr, env) if getattr(v.type, "expr", None) is not None else None
        if dim is None:
            raise LookupError(v.name)
        return dim
    return lookup


def _eval_part(prefix: list[Node], y: Value, part: _Part, x: torch.Tensor,
               env: dict[str, int]) -> torch.Tensor | None:
    """The part's head-split value when ``y`` is ``x`` (None if not evaluable)."""
    user, i, rest, _ = part
    start = prefix[-1].outputs[0]
    whole = eval_chain(prefix, y, x, env)
    if whole is None:
        return None
    lookup = _lookup({id(start): whole}, env)
    try:
        got = resolve(user.op)(*map_values(user.args, lookup), **map_values(user.kwargs, lookup))
    except (LookupError, RuntimeError, TypeError, IndexError):
        return None
    values = {id(user.outputs[i]): got[i] if len(user.outputs) > 1 else got}
    lookup = _lookup(values, env)
    for node in rest:
        try:
            values[id(node.outputs[0])] = resolve(node.op)(*map_values(node.args, lookup),
                                                          **map_values(node.kwargs, lookup))
        except (LookupError, RuntimeError, TypeError, IndexError):
            return None
    return values[id(part[3])]


def _gather_columns(prefix: list[Node], y: Value, part: _Part, envs: list[dict[str, int]],
                    out_width: int | None = None) -> tuple[list[int], bool, bool] | None:
    """``(columns, heads_first, swapped)`` when the part is ``y[..., columns]`` viewed as heads
    (``[B, H, S, D]`` if heads_first, else ``[B, S, H, D]``), checked at every env; swapped:
    ``y`` is ``[S, B, ...]`` (``nn.MultiheadAttention`` without batch_first), so the part
    reads its rows moved to ``[B, S, ...]``. With
    ``out_width``, ``y`` is the projection's input and ``prefix`` starts with the movement ops
    and the projection (of ``out_width`` outputs) after it: the part is then the projection of
    ``y``'s rows, which may have been moved before it (``nn.MultiheadAttention`` projects
    [S, B, D])."""
    found: tuple[list[int], bool, bool] | None = None
    for env in envs:
        x = index_tensor(y, env)
        got = _eval_part(prefix, y, part, x, env) if x is not None and x.dim() == 3 else None
        if got is not None and out_width is not None:  # the projection's output index space
            x = torch.arange(x.shape[0] * x.shape[1] * out_width).reshape(*x.shape[:2], out_width)
        if got is None or got.dim() != 4:
            return None
        batch, seq, width = x.shape
        match = None
        for heads_first, swapped in ((True, False), (False, False), (True, True), (False, True)):
            g = got.transpose(1, 2) if heads_first else got
            g = g.transpose(0, 1) if swapped else g  # [S, B] rows of y read as [B, S]
            if tuple(g.shape[:2]) != (batch, seq):
                continue
            cols = (g[0, 0].reshape(-1) - x[0, 0, 0]).tolist()
            if all(0 <= c < width for c in cols) and \
                    torch.equal(g, x[..., torch.tensor(cols)].reshape(g.shape)):
                match = (cols, heads_first, swapped)
                break
        if match is None or (found is not None and found != match):
            return None
        found = match
    return found


def _head_groups(cols: list[int], value: Value, heads_first: bool) -> tuple[list[int], int]:
    """``(columns, repeat)``: a part whose heads repeat each of its distinct heads ``repeat``
    times in a row (Falcon-40B broadcasts every kv head to its query heads) reads only the
    distinct heads' columns."""
    t = value.tensor_type
    heads, dim = (t.shape[1] if heads_first else t.shape[2]), t.shape[3]
    blocks = [tuple(cols[h * dim:(h + 1) * dim]) for h in range(heads)]
    distinct = list(dict.fromkeys(blocks))
    repeat = heads // len(distinct)
    if len(distinct) < heads and heads % len(distinct) == 0 and \
            all(blocks[h] == distinct[h // repeat] for h in range(heads)):
        return [c for block in distinct for c in block], repeat
    return cols, 1


def _repeat_heads(module: Module, lin: Node, kv: int, repeat: int, dim: int) -> Node:
    """``[B, S, kv*D]`` -> ``[B, S, kv*repeat*D]`` with each head repeated ``repeat`` times in a
    row (raise_grouped_kv folds it into the attention's ``num_kv_heads`` later)."""
    t = lin.outputs[0].tensor_type
    lead = t.shape[:-1]
    shapes = [lead + (kv, dim), lead + (kv, 1, dim), lead + (kv, repeat, dim), lead + (kv * repeat * dim,)]
    steps = [("aten.unflatten.int", (-1, [kv, dim])), ("aten.unsqueeze.default", (-2,)),
             ("aten.expand.default", ([-1] * len(lead) + [-1, repeat, -1],)),
             ("aten.flatten.using_ints", (-3, -1))]
    anchor = lin
    for (op, args), shape in zip(steps, shapes, strict=True):
        anchor = module.graph.create_node(op, (anchor.outputs[0], *args), {},
                                          [TensorType(t.dtype, shape)], names="kv_repeat", after=anchor)
        anchor.loc = lin.loc
    return anchor


def _numpy_t_as_t(module: Module, node: Node) -> None:
    """``matmul(x, numpy_T(W))`` (Falcon's ``input @ self.weight.T``) reads ``t(W)`` instead,
    the transpose the linear rules know (the same op on a 2-D weight)."""
    nt = _producer(node.arg(1), "aten.numpy_T.default") if node.op == "aten.matmul.default" else None
    if nt is None or not isinstance(nt.args[0], Parameter) or nt.args[0].data.dim() != 2:
        return
    t = module.graph.create_node("aten.t.default", (nt.args[0],), {}, [nt.outputs[0].type],
                                 names="t", after=nt)
    t.loc = nt.loc
    node.args = (node.args[0], t.outputs[0], *node.args[2:])


def _row_sources(node: Node, x: Value) -> list[tuple[Value, list[Node]]]:
    """What the projection ``node`` of ``x`` may read instead: ``x``, then each rank-3 value
    that ``x`` moves (through movement ops only), with those ops in order; a projection acts
    on rows, so it commutes with ops that only move rows (which the caller proves)."""
    found: list[tuple[Value, list[Node]]] = [(x, [])]
    if node.op != "aten.linear.default":
        return found
    moves: list[Node] = []
    current = x
    while len(moves) < _MAX_CHAIN and current.producer is not None and \
            current.producer.op in MOVEMENT_OPS and isinstance(current.producer.args[0], Value):
        moves.insert(0, current.producer)
        current = current.producer.args[0]
        t = current.type
        if isinstance(t, TensorType) and t.rank == 3 and t.shape[-1] == x.tensor_type.shape[-1]:
            found.append((current, list(moves)))
    return found


def _split_fused_heads(module: Module, node: Node, ctx: Any) -> str | None:
    """Root: a fused projection viewed per head and split into parts (see the module
    docstring) -> one ``linear`` per part, viewed back as heads. Exact."""
    _numpy_t_as_t(module, node)
    found = _fused_linear(node)
    if found is None:
        return ""
    x, weight, bias, y = found
    if not isinstance(y.type, TensorType) or y.tensor_type.rank != 3 or module.graph.is_output(y):
        return ""
    prefix, start = _movement_chain(y)
    if not prefix or start.tensor_type.rank < 4:
        return ""
    parts = _parts(start)
    if parts is None or len(parts) != 3:
        return ""  # not query, key and value (e.g. a rotary embedding's halves of each head)
    first: list[tuple[list[int], bool, bool] | None] = []
    for source, moves in _row_sources(node, x):  # x itself first, then what it moves
        if source is x:  # the projection's output y, as it is
            found = [_gather_columns(prefix, y, part, ctx.envs) for part in parts]
        else:  # the rows of source, moved and projected
            found = [_gather_columns(moves + [node] + prefix, source, part, ctx.envs,
                                     y.tensor_type.shape[-1]) for part in parts]
        first = first or found
        if None not in found:
            x = source
            break
    else:
        value = next(part[3] for part, g in zip(parts, first, strict=True) if g is None)
        return (f"part %{value.name} of the fused projection {node!r} is not a per-head "
                "gather of its output features")
    gathers: list[tuple[list[int], bool, bool]] = found  # type: ignore[assignment]
    groups = [_head_groups(cols, part[3], heads_first)
              for part, (cols, heads_first, _) in zip(parts, gathers, strict=True)]
    if sorted(c for cols, _ in groups for c in cols) != list(range(weight.data.shape[0])):
        return f"the parts of the fused projection {node!r} do not partition its output features"
    anchor, rows = node, x
    if any(swapped for *_, swapped in gathers):
        if not all(swapped for *_, swapped in gathers):
            return f"the parts of the fused projection {node!r} read its rows in different orders"
        # [S, B, d] rows (nn.MultiheadAttention without batch_first): the parts project the
        # rows moved to [B, S, d], the layout the attention op reads (moved back after it)
        xs = x.tensor_type.shape
        anchor = module.graph.create_node("aten.transpose.int", (x, 0, 1), {},
                                          [TensorType(x.tensor_type.dtype, (xs[1], xs[0], *xs[2:]))],
                                          names="batch_first", after=node)
        anchor.loc, rows = node.loc, anchor.outputs[0]
    yt = TensorType(y.tensor_type.dtype, rows.tensor_type.shape[:-1] + (y.tensor_type.shape[-1],))
    for i, (part, (_, heads_first, _), (cols, repeat)) in enumerate(zip(parts, gathers, groups, strict=True)):
        value = part[3]
        index = torch.tensor(cols)
        w = module.add_param(module.unique_param_name(f"{weight.name}.part{i}"),
                             weight.data.index_select(0, index).contiguous())
        b = None if bias is None else module.add_param(
            module.unique_param_name(f"{bias.name}.part{i}"), bias.data.index_select(0, index).contiguous())
        vt = value.tensor_type
        heads, dim = (vt.shape[1] if heads_first else vt.shape[2]), vt.shape[3]
        lin = module.graph.create_node("aten.linear.default", (rows, w, b), {},
                                       [TensorType(yt.dtype, yt.shape[:-1] + (len(cols),))],
                                       names="linear", after=anchor)
        lin.loc, anchor = node.loc, lin
        if repeat > 1:  # kv heads repeated for their query heads: [B, S, kv*D] -> [B, S, H*D]
            anchor = _repeat_heads(module, lin, heads // repeat, repeat, dim)
        split = module.graph.create_node(
            "aten.unflatten.int", (anchor.outputs[0], -1, [heads, dim]), {},
            [TensorType(yt.dtype, yt.shape[:-1] + (heads, dim))], names="heads", after=anchor)
        anchor = split
        if heads_first:
            anchor = module.graph.create_node("aten.transpose.int", (split.outputs[0], 1, 2), {},
                                              [value.type], names="heads", after=split)
        lin.loc = split.loc = anchor.loc = node.loc
        module.graph.replace_all_uses(value, anchor.outputs[0])
    return None


FUSED_RULES = {
    "aten.linear.default": ("linear", _split_fused_heads),
    "aten.matmul.default": ("linear", _split_fused_heads),
    "aten.add.Tensor": ("rotary", raise_interleaved_rotary),
}
"""Rules that run before raising.py's composite rules (the split parts are then ordinary head
splits for the attention and rotary rules)."""
