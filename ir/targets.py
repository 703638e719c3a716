"""Resolution of IR op names to the callables that implement ATen and Python ops.

ATen ops are written ``namespace.name.overload`` (``aten.add.Tensor``) and resolve to
``torch.ops.namespace.name.overload``. torch.export also records a few Python functions on
symbolic ints (``operator.mul``, ``torch.sym_max``); they are written ``py.module.name`` and
only the functions listed in :data:`PY_FUNCTIONS` are accepted, so loading IR text never
imports arbitrary code.
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from optc.errors import IRError

__all__ = ["PY_FUNCTIONS", "resolve", "op_name_of", "is_impure"]

PY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{
        f"py.operator.{n}": getattr(operator, n)
        for n in (
            "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
            "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "getitem",
        )
    },
    **{
        f"py.torch.{n}": getattr(torch, n)
        for n in ("sym_max", "sym_min", "sym_float", "sym_int", "sym_not", "sym_ite", "sym_sqrt")
        if hasattr(torch, n)
    },
    **{f"py.math.{n}": getattr(math, n) for n in ("ceil", "floor", "sqrt", "trunc")},
}
"""The Python functions an IR may call, by IR op name."""

_PY_NAMES = {fn: name for name, fn in PY_FUNCTIONS.items()}

_IMPURE_PREFIXES = ("aten._assert", "aten.sym_constrain_range", "aten._print", "aten.print")


def op_name_of(target: Any) -> str | None:
    """The IR op name of a torch.fx call target, or None if the IR cannot represent it."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # e.g. "aten.add.Tensor"
    return _PY_NAMES.get(target)


@functools.cache
def resolve(op: str) -> Callable[..., Any]:
    """The callable for an ATen or Python op name; :class:`IRError` if there is none."""
    if op in PY_FUNCTIONS:
        return PY_FUNCTIONS[op]
    parts = op.split(".")
    if len(parts) != 3 or op.startswith("py."):
        raise IRError(
            f"unknown op '{op}': write ATen ops as namespace.name.overload (aten.add.Tensor); "
            "`optc ops` lists the high-level ops"
        )
    ns, name, overload = parts
    try:
        packet = getattr(getattr(torch.ops, ns), name)
        return getattr(packet, overload)
    except (AttributeError, RuntimeError):
        raise IRError(f"unknown op '{op}': torch.ops.{ns}.{name}.{overload} does not exist") from None


def unknown_op_message(op: str, known: list[str]) -> str:
    """``unknown op 'linaer'; did you mean 'linear'?`` with the list command as a hint."""
    close = difflib.get_close_matches(op, known, n=1)
    guess = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown op '{op}'{guess} (`optc ops` lists the high-level ops)"


def is_impure(op: str) -> bool:
    """Whether a node with this op has effects beyond its outputs (DCE keeps it)."""
    if op.startswith(_IMPURE_PREFIXES):
        return True
    if op.startswith("aten."):
        name = op.split(".")[1]
        return name.endswith("_") and not name.startswith("_")  # in-place: add_, copy_
    return False


def bind_args(op: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments of an ATen call by schema name, with schema defaults filled in."""
    target = resolve(op)
    schema = getattr(target, "_schema", None)
    if schema is None:
        raise IRError(f"op '{op}' has no schema to bind arguments to")
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound
