"""``linear``: ``y = x @ weight.T + bias``.

The smallest complete op definition: signature, type inference and checks, cost, and its
lowerings (eager kernel and TorchScript source; ONNX traces the eager kernel into a MatMul+Add
that ONNX Runtime fuses).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from optc.errors import IRError
from optc.ir.core import Node
from optc.ir.ids import parse_ids
from optc.ir.ops.base import Attr, OpDef, Operand, numel, register_op, same_dim, tensor_operand
from optc.ir.types import TensorType, Type

__all__ = ["LINEAR", "UNIT_ATTRS", "check_unit_ids"]

UNIT_ATTRS = {
    "layer": Attr(int, None, "stable id of the transformer layer (its index at capture)", kernel=False),
    "unit_ids": Attr(str, None, "stable ids of the output features that remain, as ranges "
                                "('0-99,120-1535'); absent: all of them", kernel=False),
}
"""Metadata attributes that give FFN neurons and layers a stable identity."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _infer(node: Node) -> list[Type]:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None and w is not None
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))]


def _check(node: Node) -> list[str]:
    x, w, b = tensor_operand(node, 0), tensor_operand(node, 1), tensor_operand(node, 2)
    assert x is not None and w is not None
    problems = []
    if w.rank != 2:
        problems.append(f"linear weight must be 2-D [out, in], got {w}")
    elif x.rank < 1 or not same_dim(x.shape[-1], w.shape[1]):
        problems.append(
            f"linear input {x} does not match weight {w}: the input's last dim must equal "
            "weight.shape[1]; slice both sides together"
        )
    if b is not None and w.rank == 2 and b.shape != (w.shape[0],):
        problems.append(f"linear bias {b} must be [{w.shape[0]}] to match weight {w}")
    problems += check_unit_ids(node, "unit_ids", int(w.shape[0]), "output features")
    return problems


def check_unit_ids(node: Node, key: str, count: int, what: str) -> list[str]:
    """Problems with a stable-id attribute: it must name exactly ``count`` units."""
    text = node.attr(key)
    if text is None:
        return []
    try:
        ids = parse_ids(text)
    except IRError as exc:
        return [str(exc)]
    if len(ids) != count:
        return [f"{node.op} {key}={text!r} names {len(ids)} units but there are {count} {what}: "
                "keep the ids in step with the weights when slicing"]
    return []


def _flops(node: Node, dims: Mapping[str, int]) -> int:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None and w is not None
    return 2 * numel(x, dims, -1) * int(w.shape[0]) * int(w.shape[1])


_SCRIPT = '''
def k_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return torch.nn.functional.linear(x, weight, bias)
'''

LINEAR = register_op(OpDef(
    name="linear",
    doc="y = x @ weight.T + bias; weight is [out, in]",
    operands=(
        Operand("x"),
        Operand("weight", same_dtype_as="x"),
        Operand("bias", optional=True, same_dtype_as="x"),
    ),
    attrs=dict(UNIT_ATTRS),
    infer=_infer,
    check=_check,
    kernel=linear,
    script=_SCRIPT,
    flops=_flops,
))
