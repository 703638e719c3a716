"""Types of IR values: tensors with (possibly symbolic) shapes, and symbolic scalars.

A dimension is either an ``int`` or a symbolic expression kept as a string in sympy syntax
(``"batch"``, ``"seq"``, ``"seq - 1"``). Symbol names are the module's dynamic dims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = [
    "Dim",
    "TensorType",
    "SymType",
    "Type",
    "dtype_name",
    "dtype_from_name",
    "format_dim",
]

Dim = int | str

_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
    torch.complex64: "c64",
    torch.complex128: "c128",
    torch.qint8: "qi8",
    torch.quint8: "qu8",
    torch.qint32: "qi32",
}
_DTYPE_BY_NAME = {v: k for k, v in _DTYPES.items()}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype as printed in the IR (``f32``, ``i64``, ...)."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no IR name") from None


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    try:
        return _DTYPE_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown dtype {name!r}; expected one of {', '.join(sorted(_DTYPE_BY_NAME))}"
        ) from None


def is_dtype_name(name: str) -> bool:
    return name in _DTYPE_BY_NAME


def format_dim(dim: Dim) -> str:
    """A dim as printed: ints and plain symbols bare, expressions quoted."""
    if isinstance(dim, int):
        return str(dim)
    if _IDENT.match(dim):
        return dim
    return '"' + dim.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class TensorType:
    """A tensor of ``dtype`` whose shape may contain symbolic dims."""

    dtype: torch.dtype
    """Element type."""
    shape: tuple[Dim, ...]
    """One entry per dimension: an int, or a symbolic expression string."""

    @staticmethod
    def of(tensor: torch.Tensor) -> TensorType:
        """The type of a concrete tensor."""
        return TensorType(tensor.dtype, tuple(int(s) for s in tensor.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{dtype_name(self.dtype)}[{','.join(format_dim(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SymType:
    """A symbolic scalar (``int``, ``float`` or ``bool``) computed from shapes at run time."""

    kind: str
    """``"int"``, ``"float"`` or ``"bool"``."""
    expr: str | None = None
    """The value as an expression of the module's dims, when known."""

    def __str__(self) -> str:
        inner = "" if self.expr is None else format_dim(self.expr)
        return f"sym_{self.kind}({inner})"


Type = TensorType | SymType
