"""``disentangled_bias``: DeBERTa's content-to-position and position-to-content score terms.

DeBERTa(-v2/v3) adds to each head's content scores ``q_i . k_j`` two terms read from a table of
projected relative-position embeddings (``2*span`` rows):

- c2p (content -> position): ``q_i . pos_key[clamp(r_ij + span, 0, 2*span-1)]``;
- p2c (position -> content): ``k_j . pos_query[clamp(-r_ji + span, 0, 2*span-1)]``;

where ``r`` is the [q_len, k_len] (possibly log-bucketed) relative position ``i - j``. Both are
multiplied by ``scale`` (``1/sqrt(head_dim * (1 + number of terms))``). The op's result is the
[batch, heads, q_len, k_len] additive bias that the ``attention`` op takes as its mask operand;
where the optional boolean ``mask`` is False the result is the dtype's lowest value (the
``masked_fill`` DeBERTa applies to its scores: a query row with no key then attends uniformly,
as in Hugging Face).

Operands: ``query``/``key`` are the layer's [batch, seq, heads*head_dim] projections (the same
values the attention reads); ``pos_key``/``pos_query`` are the relative embeddings projected by
the layer's key/query projections (DeBERTa-v3's ``share_att_key``) or by their own,
[1|, 2*span, heads*head_dim]; either may be absent (that term is not computed).
``relative_pos`` is an integer [1, ..., q_len, k_len] tensor. Self-attention only: p2c reads
``r`` transposed, so query and key have the same length.

Heads are independent: removing heads slices ``query``, ``key``, ``pos_key`` and ``pos_query``
by the same rows and lowers ``num_heads``. The ONNX exporter traces the eager kernel (MatMul,
GatherElements).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optc.ir.core import Node
from optc.ir.ops.base import (
    Attr,
    OpDef,
    Operand,
    numel,
    register_op,
    sample_module,
    tensor_operand,
)
from optc.ir.types import TensorType, Type

__all__ = ["DISENTANGLED_BIAS", "disentangled_bias"]


def _heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim]."""
    return x.view(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)


def _table(pos: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[1|, rows, heads*head_dim] -> [heads, rows, head_dim]."""
    return pos.reshape(-1, num_heads, head_dim).transpose(0, 1)


def disentangled_bias(
    query: torch.Tensor,
    key: torch.Tensor,
    relative_pos: torch.Tensor,
    pos_key: torch.Tensor | None = None,
    pos_query: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    num_heads: int,
    head_dim: int,
    span: int,
    scale: float,
) -> torch.Tensor:
    """The [batch, heads, q_len, k_len] c2p + p2c score bias (see the module docstring)."""
    batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
    rel = relative_pos.reshape(relative_pos.shape[-2], relative_pos.shape[-1]).long()
    out = query.new_zeros(batch, num_heads, q_len, k_len)
    if pos_key is not None:
        scores = torch.matmul(_heads(query, num_heads, head_dim),
                              _table(pos_key, num_heads, head_dim).transpose(-1, -2))
        index = (rel + span).clamp(0, 2 * span - 1).expand(batch, num_heads, q_len, k_len)
        out = out + scores.gather(-1, index) * scale
    if pos_query is not None:
        scores = torch.matmul(_heads(key, num_heads, head_dim),
                              _table(pos_query, num_heads, head_dim).transpose(-1, -2))
        index = (span - rel).clamp(0, 2 * span - 1).expand(batch, num_heads, k_len, k_len)
        out = out + scores.gather(-1, index).transpose(-1, -2) * scale
    if mask is not None:
        out = out.masked_fill(~mask, torch.finfo(out.dtype).min)
    return out


_SCRIPT = '''
def k_disentangled_bias(query: Tensor, key: Tensor, relative_pos: Tensor, pos_key: Optional[Tensor],
                        pos_query: Optional[Tensor], mask: Optional[Tensor], num_heads: int,
                        head_dim: int, span: int, scale: float) -> Tensor:
    batch = query.size(0)
    q_len = query.size(1)
    k_len = key.size(1)
    rel = relative_pos.reshape(relative_pos.size(-2), relative_pos.size(-1)).long()
    out = query.new_zeros([batch, num_heads, q_len, k_len])
    if pos_key is not None:
        q = query.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
        table = pos_key.reshape(-1, num_heads, head_dim).transpose(0, 1)
        scores = torch.matmul(q, table.transpose(-1, -2))
        index = (rel + span).clamp(0, 2 * span - 1).expand(batch, num_heads, q_len, k_len)
        out = out + scores.gather(-1, index) * scale
    if pos_query is not None:
        k = key.view(batch, k_len, num_heads, head_dim).transpose(1, 2)
        table = pos_query.reshape(-1, num_heads, head_dim).transpose(0, 1)
        scores = torch.matmul(k, table.transpose(-1, -2))
        index = (span - rel).clamp(0, 2 * span - 1).expand(batch, num_heads, k_len, k_len)
        out = out + scores.gather(-1, index).transpose(-1, -2) * scale
    if mask is not None:
        neg = -3.4028234663852886e38 if out.dtype == torch.float32 else -65504.0
        out = out.masked_fill(~mask, neg)
    return out
'''


def _infer(node: Node) -> list[Type]:
    q, k = tensor_operand(node, 0), tensor_operand(node, 1)
    assert q is not None and k is not None
    return [TensorType(q.dtype, (q.shape[0], int(node.attr("num_heads")), q.shape[1], k.shape[1]))]


def _check(node: Node) -> list[str]:
    heads, dim, span = node.attr("num_heads"), node.attr("head_dim"), node.attr("span")
    if heads < 1 or dim < 1 or span < 1:
        return [f"disentangled_bias needs num_heads, head_dim and span >= 1, got {heads}, {dim}, "
                f"{span}"]
    width = heads * dim
    problems = []
    for i, name in ((0, "query"), (1, "key")):
        t = tensor_operand(node, i)
        assert t is not None
        if t.rank != 3 or t.shape[-1] != width:
            problems.append(f"disentangled_bias {name} is {t} but must be [batch, seq, "
                            f"num_heads*head_dim = {heads}*{dim}]: slice it with the heads")
    rel = tensor_operand(node, 2)
    assert rel is not None
    if rel.rank < 2 or any(d != 1 for d in rel.shape[:-2]):
        problems.append(f"disentangled_bias relative_pos is {rel} but must be [1, ..., q_len, k_len]")
    tables = [(i, name, tensor_operand(node, i)) for i, name in ((3, "pos_key"), (4, "pos_query"))]
    if all(t is None for _, _, t in tables):
        problems.append("disentangled_bias needs pos_key (c2p), pos_query (p2c) or both")
    for _, name, t in tables:
        if t is None:
            continue
        rows = t.shape[-2] if t.rank >= 2 else None
        if t.rank not in (2, 3) or (t.rank == 3 and t.shape[0] != 1) or t.shape[-1] != width:
            problems.append(f"disentangled_bias {name} is {t} but must be [1|, 2*span, "
                            f"num_heads*head_dim = {width}]: slice it with the heads")
        elif isinstance(rows, int) and rows < 2 * span:
            problems.append(f"disentangled_bias {name} has {rows} rows, fewer than 2*span = "
                            f"{2 * span}")
    return problems


def _flops(node: Node, dims: Mapping[str, int]) -> int:
    """Each term is a [seq, head_dim] x [head_dim, 2*span] product per batch row and head."""
    q = tensor_operand(node, 0)
    assert q is not None
    total = 0
    for i in (3, 4):
        t = tensor_operand(node, i)
        if t is not None:
            rows = numel(t, dims, t.rank - 1)
            total += 2 * numel(q, dims) * rows
    return total


DISENTANGLED_BIAS = register_op(OpDef(
    name="disentangled_bias",
    doc="DeBERTa's c2p + p2c relative-position score bias, [batch, heads, q_len, k_len]",
    operands=(
        Operand("query"),
        Operand("key", same_dtype_as="query"),
        Operand("relative_pos", dtypes="int"),
        Operand("pos_key", optional=True, same_dtype_as="query"),
        Operand("pos_query", optional=True, same_dtype_as="query"),
        Operand("mask", dtypes="bool", optional=True),
    ),
    attrs={
        "num_heads": Attr(int, doc="number of heads"),
        "head_dim": Attr(int, doc="size of each head"),
        "span": Attr(int, doc="attention span: relative positions are clamped to "
                              "[-span, span-1] rows of the tables"),
        "scale": Attr(float, doc="factor on both terms (1/sqrt(head_dim * (1 + terms)))"),
    },
    infer=_infer,
    check=_check,
    kernel=disentangled_bias,
    script=_SCRIPT,
    traits=frozenset({"attention-bias"}),
    flops=_flops,
    samples=(sample_module(
        "%q : f32[2,5,8], %k : f32[2,5,8], %rel : i64[1,5,5], %mask : bool[2,1,5,5]",
        "%y : f32[2,2,5,5] = disentangled_bias(%q, %k, %rel, @pk, @pq, %mask, num_heads=2, "
        "head_dim=4, span=3, scale=0.5)",
        "param @pk : f32[6,8]\nparam @pq : f32[6,8]"),),
))
