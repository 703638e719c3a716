"""High-level transformer ops, one file each; see :mod:`optc.ir.ops.base` for what an op
definition holds. Importing this package registers every built-in op."""

from optc.ir.ops import (  # noqa: F401 - registers
    activations,
    attention,
    disentangled,
    embedding,
    fake_quant,
    linear,
    norm,
    rotary,
)
from optc.ir.ops.activations import ACTIVATIONS
from optc.ir.ops.base import (
    REQUIRED,
    Attr,
    OnnxLowering,
    OpDef,
    Operand,
    all_ops,
    get_op,
    register_op,
)

__all__ = [
    "ACTIVATIONS",
    "REQUIRED",
    "Attr",
    "OnnxLowering",
    "OpDef",
    "Operand",
    "all_ops",
    "get_op",
    "register_op",
]
