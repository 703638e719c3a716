"""``embedding``: rows of a table selected by integer ids."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, tensor_operand
from optc.ir.types import TensorType, Type

__all__ = ["EMBEDDING"]


def embedding(ids: torch.Tensor, table: torch.Tensor, *, padding_idx: int | None = None) -> torch.Tensor:
    return F.embedding(ids, table)


def _infer(node: Node) -> list[Type]:
    ids, table = tensor_operand(node, 0), tensor_operand(node, 1)
    assert ids is not None and table is not None
    return [TensorType(table.dtype, ids.shape + (table.shape[1],))]


def _check(node: Node) -> list[str]:
    table = tensor_operand(node, 1)
    assert table is not None
    return [] if table.rank == 2 else [f"embedding table must be 2-D, got {table}"]


_SCRIPT = '''
def k_embedding(ids: Tensor, table: Tensor, padding_idx: Optional[int]) -> Tensor:
    return torch.nn.functional.embedding(ids, table)
'''

EMBEDDING = register_op(OpDef(
    name="embedding",
    doc="rows of table selected by integer ids",
    operands=(Operand("ids", dtypes="int"), Operand("table", dtypes="any")),
    attrs={"padding_idx": Attr(int, None, "row whose gradient is zero in training")},
    infer=_infer,
    check=_check,
    kernel=embedding,
    script=_SCRIPT,
))
