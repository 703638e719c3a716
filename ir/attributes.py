"""Typed attributes: structured facts attached to parameters (and usable as op attributes).

An attribute is a frozen dataclass registered under a ``kind``; it prints as a constructor
call, ``sparsity(pattern="n:m", density=0.5, n=2, m=4)``, which the parser reads back, and
its :meth:`Attribute.check` tells the verifier whether a tensor honours it (a weight that
breaks its declared sparsity pattern is an error naming the parameter).

Parameters hold them in ``Parameter.attrs`` and print them after their type:

    param @encoder.layer.0.attention.self.query.weight : f32[384,384] {sparsity=sparsity(pattern="unstructured", density=0.1)}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from optc.errors import IRError

__all__ = ["Attribute", "Sparsity", "Quantization", "register_attribute", "attribute_kind",
           "make_attribute"]

_KINDS: dict[str, type[Attribute]] = {}


@dataclass(frozen=True)
class Attribute:
    """Base class of typed attributes; subclasses set ``kind`` and their fields."""

    kind: ClassVar[str] = ""

    def check(self, tensor: torch.Tensor) -> list[str]:
        """Problems with ``tensor`` carrying this attribute (empty when it conforms)."""
        return []

    def fields(self) -> dict[str, Any]:
        """Field values in declaration order, leaving out those at their default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                out[f.name] = value
        return out


def register_attribute(cls: type[Attribute]) -> type[Attribute]:
    """Class decorator: make ``cls`` printable and parseable under ``cls.kind``."""
    if not cls.kind.isidentifier() or cls.kind in _KINDS and _KINDS[cls.kind] is not cls:
        raise IRError(f"attribute kind {cls.kind!r} is not a new identifier")
    _KINDS[cls.kind] = cls
    return cls


def attribute_kind(name: str) -> type[Attribute] | None:
    """The attribute class printed as ``name(...)``, or None."""
    return _KINDS.get(name)


def make_attribute(kind: str, values: dict[str, Any]) -> Attribute:
    """Build an attribute from parsed field values; :class:`IRError` names what is wrong."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise IRError(f"unknown attribute {kind!r}; known: {', '.join(sorted(_KINDS))}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise IRError(f"{kind} has no field {unknown[0]!r} (fields: {', '.join(sorted(names))})")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise IRError(f"bad {kind} attribute: {exc}") from None


_PATTERNS = ("unstructured", "n:m", "block")


@register_attribute
@dataclass(frozen=True)
class Sparsity(Attribute):
    """A weight pruned to zeros in a pattern; ``density`` is the fraction of nonzeros allowed.

    ``n:m``: at most ``n`` nonzeros in each group of ``m`` consecutive input features (along
    the last dim). ``block``: zeros come in whole ``block=(rows, cols)`` tiles.
    """

    kind: ClassVar[str] = "sparsity"
    pattern: str
    """``unstructured``, ``n:m`` or ``block``."""
    density: float
    """Fraction of entries that may be nonzero (0..1)."""
    n: int | None = None
    """Nonzeros kept per group (``n:m``)."""
    m: int | None = None
    """Group size (``n:m``)."""
    block: tuple[int, int] | None = None
    """Tile shape (``block``)."""

    def __post_init__(self) -> None:
        if self.pattern not in _PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(_PATTERNS)}, got {self.pattern!r}")
        if not 0.0 <= self.density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {self.density}")
        if self.pattern == "n:m" and not (self.n and self.m and 0 < self.n <= self.m):
            raise ValueError("pattern n:m needs 0 < n <= m")
        if self.pattern == "block" and not (self.block and len(self.block) == 2 and min(self.block) >= 1):
            raise ValueError("pattern block needs block=(rows, cols) with both >= 1")

    def check(self, tensor: torch.Tensor) -> list[str]:
        if tensor.is_meta:
            return []
        nonzero = tensor != 0
        found = float(nonzero.float().mean()) if tensor.numel() else 0.0
        problems = []
        if found > self.density + 1e-6:
            problems.append(f"has density {found:.4f} but declares at most {self.density:.4f}")
        if self.pattern == "n:m":
            cols = tensor.shape[-1]
            if cols % self.m:
                problems.append(f"last dim {cols} is not a multiple of m={self.m}")
            else:
                groups = nonzero.reshape(-1, self.m).sum(-1)
                if int(groups.max()) > self.n:
                    problems.append(f"has a group of {self.m} with {int(groups.max())} nonzeros "
                                    f"(pattern {self.n}:{self.m} allows {self.n})")
        elif self.pattern == "block":
            r, c = self.block
            if tensor.dim() != 2 or tensor.shape[0] % r or tensor.shape[1] % c:
                problems.append(f"shape {list(tensor.shape)} is not tiled by blocks {r}x{c}")
            else:
                tiles = nonzero.reshape(tensor.shape[0] // r, r, tensor.shape[1] // c, c)
                alive = int(tiles.any(3).any(1).sum())
                allowed = self.density * tiles.shape[0] * tiles.shape[2]
                if alive > allowed + 1e-6:
                    problems.append(f"keeps {alive} blocks of {r}x{c} with nonzeros, more than "
                                    f"density {self.density:.4f} allows ({int(allowed)})")
        return problems


@register_attribute
@dataclass(frozen=True)
class Quantization(Attribute):
    """An integer tensor standing for real values ``scale * (q - zero_point)``."""

    kind: ClassVar[str] = "quantization"
    scheme: str
    """``symmetric`` (zero point 0) or ``affine``."""
    bits: int = 8
    """Bits per value."""
    axis: int | None = None
    """Channel axis of per-channel scales; None: one scale for the tensor."""

    def __post_init__(self) -> None:
        if self.scheme not in ("symmetric", "affine"):
            raise ValueError(f"scheme must be symmetric or affine, got {self.scheme!r}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be in 2..16, got {self.bits}")

    def check(self, tensor: torch.Tensor) -> list[str]:
        if tensor.dtype.is_floating_point:
            return [f"is {tensor.dtype} but declares {self.bits}-bit quantization: store the "
                    "integer values (int8/uint8)"]
        if self.scheme == "symmetric" and not tensor.is_meta and tensor.numel() and tensor.dtype.is_signed:
            qmax = 2 ** (self.bits - 1) - 1
            found = int(tensor.abs().max()) if tensor.dtype != torch.int8 else int(
                tensor.to(torch.int16).abs().max())
            if found > qmax:
                return [f"holds {found}, outside the {self.bits}-bit symmetric range "
                        f"[-{qmax}, {qmax}]"]
        return []
