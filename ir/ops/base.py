"""Op definitions: everything about a high-level op, in one place.

An :class:`OpDef` holds an op's signature (operands with their dtype constraints, typed
attributes), type inference and checks, cost model (FLOPs, bytes moved) and its lowering for
each backend:

- eager: ``kernel``, a Python function on tensors (the reference semantics);
- TorchScript: ``script``, the source of a scriptable function ``k_<name>`` taking the
  operands, then the kernel attributes in declaration order;
- ONNX: ``onnx``, optional; without it the eager kernel is traced by torch.onnx. With it, the
  op rewrites its nodes into exportable custom ops and supplies their translations.

The printer, parser, verifier, analyses and every backend read these definitions; adding an op
is one file that calls :func:`register_op` (see ``ops/linear.py`` for a small example).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from optc.errors import IRError
from optc.ir.core import Module, Node, Value
from optc.ir.plugins import load_plugins
from optc.ir.types import Dim, TensorType, Type, dtype_name

__all__ = [
    "Operand",
    "Attr",
    "OnnxLowering",
    "OpDef",
    "REQUIRED",
    "register_op",
    "get_op",
    "all_ops",
    "ops_with",
    "sample_module",
    "tensor_operand",
    "same_dim",
    "numel",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an attribute that every node must set."""

_DTYPE_CLASSES: dict[str, Callable[[torch.dtype], bool]] = {
    "float": lambda d: d.is_floating_point,
    "int": lambda d: not d.is_floating_point and not d.is_complex and d != torch.bool,
    "bool": lambda d: d == torch.bool,
    "mask": lambda d: d == torch.bool or d.is_floating_point,
    "any": lambda d: True,
}


@dataclass(frozen=True)
class Operand:
    """A positional tensor operand."""

    name: str
    """Its name in messages and docs."""
    dtypes: str = "float"
    """Dtype class it accepts: ``float``, ``int``, ``bool``, ``mask`` (bool or float), ``any``."""
    optional: bool = False
    """Whether the operand may be ``none``."""
    same_dtype_as: str | None = None
    """Another operand whose dtype this one must equal (a float mask follows the query)."""


@dataclass(frozen=True)
class Attr:
    """A typed attribute of an op."""

    types: type | tuple[type, ...]
    """Accepted Python types of the value (``None`` is accepted when the default is None)."""
    default: Any = REQUIRED
    """Value when absent; :data:`REQUIRED` when every node must set it."""
    doc: str = ""
    """One line: what it means."""
    kernel: bool = True
    """Whether the kernels take it; False for metadata (stable ids) that does not change what
    the op computes."""


@dataclass(frozen=True)
class OnnxLowering:
    """How the ONNX backend lowers an op that the exporter cannot express well by itself."""

    rewrite: Callable[[Module, Node, dict[str, Any]], None]
    """Replace ``node`` in a copy of the module by exportable ops (custom ops translated
    below); the dict is a cache shared by all rewrites of one export."""
    translations: Callable[[], dict[Any, Any]]
    """torch.onnx ``custom_translation_table`` entries (built on first use)."""


@dataclass(frozen=True, eq=False)
class OpDef:
    """Definition of a high-level op."""

    name: str
    """The op name as written in the IR."""
    doc: str
    """One line: what the op computes."""
    operands: tuple[Operand, ...]
    """Positional tensor operands, in order."""
    attrs: dict[str, Attr] = field(default_factory=dict)
    """Attributes by name, in the order the kernels take them."""
    infer: Callable[[Node], list[Type]] | None = None
    """Output types from operand types and attributes."""
    check: Callable[[Node], list[str]] | None = None
    """Extra invariants; returns problem descriptions (each says how to fix it)."""
    kernel: Callable[..., Any] | None = None
    """Eager lowering: ``kernel(*operands, **kernel_attrs)`` on tensors."""
    script: str = ""
    """TorchScript lowering: source of ``def k_<name>(operands..., kernel attrs...)``."""
    onnx: OnnxLowering | None = None
    """ONNX lowering; None: the exporter traces the eager kernel."""
    flops: Callable[[Node, Mapping[str, int]], int] | None = None
    """FLOPs of the node's matrix products (2 per multiply-add) with symbolic dims set from
    the mapping; elementwise ops leave it None (their cost is in the bytes they move)."""
    traits: frozenset[str] = frozenset()
    """What the op is, for code that treats ops by kind rather than by name (the structure
    analysis, the graph pictures): ``projection`` (a linear map with a weight), ``attention``,
    ``attention-bias`` (a score term added inside attention), ``norm`` (normalization over the
    last dims), ``activation`` (elementwise nonlinearity), ``ffn-activation`` (one that sits
    between an FFN's projections; ``tanh`` is an activation, not this, so a pooler is never
    taken for an FFN), ``embedding`` (a table lookup), ``position`` (position encoding applied
    to q/k), ``head-local`` (maps a ``[..., heads*head_dim]`` tensor head by head with nothing
    depending on the head count, so removing heads only narrows it; a norm is head-local when
    it has a ``head_dim``), ``quantization`` (quantize-dequantize). :func:`ops_with` lists the
    ops that have one."""
    samples: tuple[str, ...] = ()
    """Small modules in the textual IR that use the op, one per form worth checking (int8,
    each attribute that changes the lowering): the op conformance test runs every sample on
    eager, TorchScript and ONNX with random parameters and inputs and compares them
    (:func:`sample_module` writes one). Float parameters whose name ends in ``scale`` get
    small positive values, integer inputs values below 4."""

    # -- attributes -----------------------------------------------------------------------
    def attr(self, node: Node, key: str) -> Any:
        """The node's attribute ``key``, or its default."""
        spec = self.attrs[key]
        value = node.attr(key, None)
        if value is None and spec.default is not REQUIRED:
            return spec.default
        return value

    def kernel_attrs(self, node: Node) -> dict[str, Any]:
        """The attributes the kernels take, defaults filled in, in declaration order."""
        return {k: self.attr(node, k) for k, spec in self.attrs.items() if spec.kernel}

    def operand_args(self, node: Node) -> list[Any]:
        """The operands, with absent optional ones as None."""
        args = list(node.args)
        return args + [None] * (len(self.operands) - len(args))

    # -- cost -----------------------------------------------------------------------------
    def cost(self, node: Node, dims: Mapping[str, int]) -> dict[str, int]:
        """``{"flops": ..., "bytes": ...}``: arithmetic and memory traffic (operands read and
        results written, at their dtypes' sizes)."""
        flops = self.flops(node, dims) if self.flops is not None else 0
        moved = 0
        for v in [*node.inputs, *node.outputs]:
            if isinstance(v.type, TensorType):
                moved += numel(v.type, dims) * v.type.dtype.itemsize
        return {"flops": int(flops), "bytes": int(moved)}

    # -- verification ---------------------------------------------------------------------
    def validate(self, node: Node) -> list[str]:
        """Problems with ``node`` as an instance of this op (empty when valid)."""
        problems: list[str] = []
        required = [o for o in self.operands if not o.optional]
        names = ", ".join(o.name + ("?" if o.optional else "") for o in self.operands)
        if not len(required) <= len(node.args) <= len(self.operands):
            return [f"{self.name} takes operands ({names}), got {len(node.args)}"]
        dtypes: dict[str, torch.dtype] = {}
        for spec, arg in zip(self.operands, node.args, strict=False):
            if arg is None and spec.optional:
                continue
            if not isinstance(arg, Value) or not isinstance(arg.type, TensorType):
                problems.append(f"{self.name} operand '{spec.name}' must be a tensor value")
                continue
            dtype = arg.type.dtype
            dtypes[spec.name] = dtype
            if not _DTYPE_CLASSES[spec.dtypes](dtype):
                problems.append(
                    f"{self.name} operand '{spec.name}' ({arg!r}) is {dtype_name(dtype)} but must "
                    f"be {spec.dtypes}: convert it, or use an op that takes {dtype_name(dtype)}"
                )
        for spec in self.operands:
            other = spec.same_dtype_as
            if other and spec.name in dtypes and other in dtypes and dtypes[spec.name] != dtypes[other]:
                if spec.dtypes == "mask" and dtypes[spec.name] == torch.bool:
                    continue
                problems.append(
                    f"{self.name} operand '{spec.name}' is {dtype_name(dtypes[spec.name])} but "
                    f"'{other}' is {dtype_name(dtypes[other])}: they must have the same dtype "
                    "(cast one, or quantize with an op made for integer weights)"
                )
        for key, value in node.kwargs.items():
            spec = self.attrs.get(key)
            if spec is None:
                problems.append(
                    f"{self.name} has no attribute '{key}' (valid: {', '.join(self.attrs) or 'none'})"
                )
            elif value is not None and (
                not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in _tuple(spec.types))
            ):
                problems.append(f"{self.name} attribute '{key}' has a bad value {value!r}")
        for key, spec in self.attrs.items():
            if spec.default is REQUIRED and node.kwargs.get(key) is None:
                problems.append(f"{self.name} needs attribute '{key}'")
        if problems:
            return problems
        if self.check is not None:
            problems += self.check(node)
        if not problems and self.infer is not None:
            inferred = self.infer(node)
            declared = [v.type for v in node.outputs]
            if inferred != declared:
                shown = ", ".join(str(t) for t in inferred)
                problems.append(
                    f"declared output type {', '.join(str(t) for t in declared)} but operands "
                    f"give {shown}: update the output type after editing weights or attributes"
                )
        return problems


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


_OPS: dict[str, OpDef] = {}
_BY_TRAIT: dict[str, tuple[str, ...]] = {}  # ops_with's answers; cleared by register_op


def register_op(opdef: OpDef) -> OpDef:
    """Add an op to the registry (its name must be new and not look like an ATen op)."""
    if "." in opdef.name or not opdef.name.isidentifier():
        raise IRError(f"op name {opdef.name!r} must be an identifier without dots")
    if opdef.name in _OPS and _OPS[opdef.name] is not opdef:
        raise IRError(f"op {opdef.name!r} is already defined")
    if opdef.kernel is None:
        raise IRError(f"op {opdef.name!r} needs an eager kernel (the reference semantics)")
    _OPS[opdef.name] = opdef
    _BY_TRAIT.clear()
    return opdef


def get_op(name: str) -> OpDef | None:
    """The definition of a high-level op, or None for ATen and Python ops. A name optc does
    not know loads the plugins first (:mod:`optc.ir.plugins`)."""
    opdef = _OPS.get(name)
    if opdef is None and "." not in name and load_plugins():
        opdef = _OPS.get(name)
    return opdef


def ops_with(trait: str) -> tuple[str, ...]:
    """The names of the registered ops that have ``trait`` (see :attr:`OpDef.traits`). Called
    per node by the structure analysis, so it loads no plugins: an op in a graph was looked up
    (and its plugin loaded) when the graph was built or parsed."""
    found = _BY_TRAIT.get(trait)
    if found is None:
        found = _BY_TRAIT[trait] = tuple(n for n, op in _OPS.items() if trait in op.traits)
    return found


def all_ops() -> dict[str, OpDef]:
    """Every registered high-level op (plugins' included), by name."""
    load_plugins()
    return dict(_OPS)


# -- helpers for op files --------------------------------------------------------------------
def sample_module(inputs: str, body: str, params: str = "", outputs: str = "out=%y") -> str:
    """A sample for :attr:`OpDef.samples`: ``inputs`` is the graph signature (``%x :
    f32[2,3,8]``), ``body`` its node lines, ``params`` the parameter declarations (one per
    line), ``outputs`` the returned values."""
    lines = ["module @sample {"]
    lines += [f"  {line.strip()}" for line in params.strip().splitlines() if line.strip()]
    lines.append(f"  graph({inputs}) {{")
    lines += [f"    {line.strip()}" for line in body.strip().splitlines() if line.strip()]
    lines += [f"    return ({outputs})", "  }", "}"]
    return "\n".join(lines) + "\n"


def tensor_operand(node: Node, i: int) -> TensorType | None:
    """The type of operand ``i`` when it is a tensor value, else None."""
    arg = node.arg(i)
    return arg.type if isinstance(arg, Value) and isinstance(arg.type, TensorType) else None


def same_dim(a: Dim, b: Dim) -> bool:
    """Whether two dims may be equal (symbolic dims are not compared)."""
    return a == b or not (isinstance(a, int) and isinstance(b, int))


def _dim_value(d: Dim, dims: Mapping[str, int]) -> int:
    if isinstance(d, int):
        return d
    if d in dims:
        return int(dims[d])
    try:
        return int(sympy.sympify(d).subs({sympy.Symbol(k): v for k, v in dims.items()}))
    except (TypeError, ValueError, sympy.SympifyError):
        return 1


def numel(t: TensorType, dims: Mapping[str, int], upto: int | None = None) -> int:
    """Elements of a tensor type (of its first ``upto`` dims) with symbolic dims set."""
    total = 1
    for d in t.shape[:upto]:
        total *= _dim_value(d, dims)
    return total
