"""High-level transformer ops, one file each; see :mod:`optc.ir.ops.base` for what an op
definition holds. Importing this package imports every module in it, which registers every
built-in op: an op is one new file here, no list to edit (ops from outside optc are plugins,
:mod:`optc.ir.plugins`)."""

import importlib as _importlib
import pkgutil as _pkgutil

for _info in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_info.name}")

from optc.ir.ops.activations import ACTIVATIONS
from optc.ir.ops.base import (
    REQUIRED,
    Attr,
    OnnxLowering,
    OpDef,
    Operand,
    all_ops,
    get_op,
    ops_with,
    register_op,
    sample_module,
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
    "ops_with",
    "register_op",
    "sample_module",
]
