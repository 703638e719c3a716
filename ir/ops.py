"""High-level transformer ops: their operands, attributes, type inference and checks.

ATen ops (``aten.*``) stay as torch.export captured them. The ops below are raised from ATen
patterns by :mod:`optc.frontends.raising` so that passes edit attributes and weights instead of
reshape constants. Each op lists tensor operands positionally and attributes as keywords.
Backends implement them (see :mod:`optc.backends.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optc.ir.core import Node, Value
from optc.ir.types import Dim, TensorType, Type

__all__ = ["OpDef", "OPS", "get_op", "ACTIVATIONS"]


@dataclass(frozen=True)
class OpDef:
    """Definition of a high-level op."""

    name: str
    """The op name as written in the IR."""
    doc: str
    """One line: what the op computes."""
    operands: tuple[str, ...]
    """Positional tensor operands; a trailing ``?`` marks an optional one (may be ``none``)."""
    attrs: dict[str, tuple[type | tuple[type, ...], Any]] = field(default_factory=dict)
    """Attribute name -> (accepted types, default); default ``...`` means required."""
    infer: Callable[[Node], list[Type]] | None = None
    """Output types from operand types and attributes."""
    check: Callable[[Node], list[str]] | None = None
    """Extra invariants; returns problem descriptions."""

    def validate(self, node: Node) -> list[str]:
        """Problems with ``node`` as an instance of this op (empty when valid)."""
        problems: list[str] = []
        required = [o for o in self.operands if not o.endswith("?")]
        if not len(required) <= len(node.args) <= len(self.operands):
            problems.append(
                f"{self.name} takes operands ({', '.join(self.operands)}), got {len(node.args)}"
            )
            return problems
        for name, arg in zip(self.operands, node.args, strict=False):
            if arg is None and name.endswith("?"):
                continue
            if not isinstance(arg, Value) or not isinstance(arg.type, TensorType):
                problems.append(f"{self.name} operand '{name.rstrip('?')}' must be a tensor value")
        for key, value in node.kwargs.items():
            if key not in self.attrs:
                problems.append(
                    f"{self.name} has no attribute '{key}' (valid: {', '.join(self.attrs) or 'none'})"
                )
                continue
            types, _ = self.attrs[key]
            if value is not None and not isinstance(value, types):
                problems.append(f"{self.name} attribute '{key}' has a bad value {value!r}")
        for key, (_, default) in self.attrs.items():
            if default is ... and node.kwargs.get(key) is None:
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


def _t(node: Node, i: int) -> TensorType | None:
    arg = node.arg(i)
    return arg.type if isinstance(arg, Value) and isinstance(arg.type, TensorType) else None


def _same_dim(a: Dim, b: Dim) -> bool:
    return a == b or not (isinstance(a, int) and isinstance(b, int))


# -- linear ----------------------------------------------------------------------------------
def _linear_infer(node: Node) -> list[Type]:
    x, w = _t(node, 0), _t(node, 1)
    assert x is not None and w is not None
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))]


def _linear_check(node: Node) -> list[str]:
    x, w, b = _t(node, 0), _t(node, 1), _t(node, 2)
    assert x is not None and w is not None
    problems = []
    if w.rank != 2:
        problems.append(f"linear weight must be 2-D [out, in], got {w}")
    elif x.rank < 1 or not _same_dim(x.shape[-1], w.shape[1]):
        problems.append(
            f"linear input {x} does not match weight {w}: the input's last dim must equal "
            "weight.shape[1]; slice both sides together"
        )
    if b is not None and w.rank == 2 and b.shape != (w.shape[0],):
        problems.append(f"linear bias {b} must be [{w.shape[0]}] to match weight {w}")
    return problems


# -- attention -------------------------------------------------------------------------------
def _attention_infer(node: Node) -> list[Type]:
    q, v = _t(node, 0), _t(node, 2)
    assert q is not None and v is not None
    return [TensorType(q.dtype, q.shape[:-1] + (v.shape[-1],))]


def _attention_check(node: Node) -> list[str]:
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    problems = []
    if heads < 1 or dim < 1:
        return [f"attention needs num_heads >= 1 and head_dim >= 1, got {heads} and {dim}"]
    width = heads * dim
    for i, name in enumerate(("query", "key", "value")):
        t = _t(node, i)
        assert t is not None
        if t.rank != 3 or t.shape[-1] != width:
            problems.append(
                f"attention {name} is {t} but num_heads*head_dim = {heads}*{dim} = {width}: "
                "operands are [batch, seq, num_heads*head_dim]"
            )
    kind = node.attr("kind", "softmax")
    if kind not in ("softmax", "topk"):
        problems.append(f"attention kind must be 'softmax' or 'topk', got {kind!r}")
    if kind == "topk" and not (isinstance(node.attr("topk"), int) and node.attr("topk") >= 1):
        problems.append("attention kind=topk needs an integer attribute topk >= 1")
    return problems


# -- others ----------------------------------------------------------------------------------
def _same_as_input(node: Node) -> list[Type]:
    t = _t(node, 0)
    assert t is not None
    return [t]


def _layer_norm_check(node: Node) -> list[str]:
    x = _t(node, 0)
    assert x is not None
    shape = tuple(node.attr("normalized_shape"))
    problems = []
    if tuple(x.shape[len(x.shape) - len(shape) :]) != shape:
        problems.append(f"layer_norm normalized_shape {list(shape)} does not end input {x}")
    for i, name in ((1, "weight"), (2, "bias")):
        t = _t(node, i)
        if t is not None and t.shape != shape:
            problems.append(f"layer_norm {name} {t} must have shape {list(shape)}")
    return problems


def _embedding_infer(node: Node) -> list[Type]:
    ids, table = _t(node, 0), _t(node, 1)
    assert ids is not None and table is not None
    return [TensorType(table.dtype, ids.shape + (table.shape[1],))]


def _embedding_check(node: Node) -> list[str]:
    table = _t(node, 1)
    assert table is not None
    return [] if table.rank == 2 else [f"embedding table must be 2-D, got {table}"]


ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
"""Elementwise activations raised from ATen (``gelu`` has attribute ``approximate``)."""

_OPS = [
    OpDef(
        "linear",
        "y = x @ weight.T + bias; weight is [out, in]",
        ("x", "weight", "bias?"),
        {},
        _linear_infer,
        _linear_check,
    ),
    OpDef(
        "attention",
        "multi-head scaled dot-product attention over [batch, seq, heads*head_dim] operands",
        ("query", "key", "value", "mask?"),
        {
            "num_heads": (int, ...),
            "head_dim": (int, ...),
            "scale": (float, None),
            "causal": (bool, False),
            "kind": (str, "softmax"),
            "topk": (int, None),
        },
        _attention_infer,
        _attention_check,
    ),
    OpDef(
        "layer_norm",
        "layer normalization over the trailing normalized_shape dims",
        ("x", "weight?", "bias?"),
        {"normalized_shape": ((list, tuple), ...), "eps": (float, 1e-5)},
        _same_as_input,
        _layer_norm_check,
    ),
    OpDef(
        "embedding",
        "rows of table selected by integer ids",
        ("ids", "table"),
        {"padding_idx": (int, None)},
        _embedding_infer,
        _embedding_check,
    ),
    OpDef("gelu", "GELU activation", ("x",), {"approximate": (str, "none")}, _same_as_input),
    OpDef("relu", "ReLU activation", ("x",), {}, _same_as_input),
    OpDef("silu", "SiLU (swish) activation", ("x",), {}, _same_as_input),
    OpDef("tanh", "tanh activation", ("x",), {}, _same_as_input),
]

OPS: dict[str, OpDef] = {op.name: op for op in _OPS}
"""The high-level ops by name."""


def get_op(name: str) -> OpDef | None:
    """The definition of a high-level op, or None for ATen and Python ops."""
    return OPS.get(name)
