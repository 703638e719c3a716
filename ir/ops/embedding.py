"""``embedding``: rows of a table selected by integer ids (fp32, or int8 with per-row scales:
see :mod:`optc.ir.ops.quantized_embedding`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, sample_module, tensor_operand
from optc.ir.ops.quantized_embedding import (
    INT8_EMBEDDING_SCRIPT,
    int8_embedding,
    int8_embedding_problems,
)
from optc.ir.types import TensorType, Type

__all__ = ["EMBEDDING"]


def embedding(ids: torch.Tensor, table: torch.Tensor, scale: torch.Tensor | None = None, *,
              padding_idx: int | None = None) -> torch.Tensor:
    if scale is not None:
        return int8_embedding(ids, table, scale)
    return F.embedding(ids, table, padding_idx=padding_idx)  # the row's gradient stays 0


def _infer(node: Node) -> list[Type]:
    ids, table = tensor_operand(node, 0), tensor_operand(node, 1)
    scale = tensor_operand(node, 2)
    assert ids is not None and table is not None
    dtype = scale.dtype if scale is not None else table.dtype
    return [TensorType(dtype, ids.shape + (table.shape[1],))]


def _check(node: Node) -> list[str]:
    table = tensor_operand(node, 1)
    assert table is not None
    if table.rank != 2:
        return [f"embedding table must be 2-D, got {table}"]
    return int8_embedding_problems(table, tensor_operand(node, 2))


_SCRIPT = INT8_EMBEDDING_SCRIPT + '''
def k_embedding(ids: Tensor, table: Tensor, scale: Optional[Tensor],
                padding_idx: Optional[int]) -> Tensor:
    if scale is not None:
        return k_int8_embedding(ids, table, scale)
    return torch.nn.functional.embedding(ids, table, padding_idx)
'''

EMBEDDING = register_op(OpDef(
    name="embedding",
    doc="rows of table selected by integer ids; an i8 table is dequantized by per-row scales",
    operands=(Operand("ids", dtypes="int"), Operand("table", dtypes="any"),
              Operand("scale", optional=True)),
    attrs={"padding_idx": Attr(int, None, "row whose gradient is zero in training")},
    infer=_infer,
    check=_check,
    kernel=embedding,
    script=_SCRIPT,
    traits=frozenset({"embedding"}),
    samples=(sample_module("%ids : i64[2,5]", "%y : f32[2,5,8] = embedding(%ids, @t, padding_idx=0)",
                           "param @t : f32[6,8]"),
             sample_module("%ids : i64[2,5]", "%y : f32[2,5,8] = embedding(%ids, @t, @s)",
                           '''param @t : i8[6,8] {quantization=quantization(scheme="symmetric", axis=0)}
                           param @s : f32[6]''')),
))
