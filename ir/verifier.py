"""The verifier: checks every invariant of a module and explains how to fix what is broken.

Invariants:

- SSA: every value is defined once (graph input, parameter or node output) and before use.
- Use-lists: each value's recorded users match the arguments that read it.
- Parameters: every ``@name`` a node reads is the module's parameter of that name.
- Ops: ATen ops resolve to ``torch.ops``; Python ops are allow-listed; high-level ops have
  their operands and attributes, and their declared output types equal the inferred ones
  (so a weight sliced without updating the op is caught).
- Dtypes: operands of high-level ops have the dtypes their signatures ask for (an i8 weight
  under an f32 ``linear`` is an error); the declared dtypes of ATen results are what the op
  computes (checked by running it on meta tensors).
- Parameter attributes (sparsity, quantization) hold for the parameter's tensor.
- Types: symbolic dims are expressions of the module's declared dims.
- Outputs: at least one named output, each defined in the graph.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from typing import Any

import sympy
import torch

from optc.errors import IRError, VerificationError
from optc.ir.core import Module, Node, Value, flatten_values, map_values
from optc.ir.ops import all_ops, get_op
from optc.ir.targets import resolve, unknown_op_message
from optc.ir.types import SymType, TensorType

__all__ = ["verify", "collect_problems"]

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMPY_FUNCS = {"Min", "Max", "floor", "ceiling", "Mod", "FloorDiv", "CeilToInt", "FloorToInt",
                "TruncToInt", "PythonMod", "sqrt", "oo", "Abs", "Eq", "Ne", "And", "Or", "Not",
                "True", "False", "IntTrueDiv", "ToFloat", "OpaqueUnaryFn_sqrt", "Piecewise"}


def _where(node: Node) -> str:
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    return f"node '{outs + ' = ' if outs else ''}{node.op}'"


def _check_dims(module: Module, value: Value, problems: list[str]) -> None:
    t = value.type
    exprs = []
    if isinstance(t, TensorType):
        exprs = [d for d in t.shape if isinstance(d, str)]
    elif isinstance(t, SymType) and t.expr is not None:
        exprs = [t.expr]
    for expr in exprs:
        for sym in _SYMBOL.findall(expr):
            if sym not in module.dims and sym not in _SYMPY_FUNCS:
                problems.append(
                    f"%{value.name} has type {t} using undeclared dim '{sym}': declare it with "
                    f"`dim {sym} = [min, max]` or use a declared dim ({', '.join(module.dims) or 'none'})"
                )


def _sizes(module: Module) -> dict[str, int]:
    """A concrete size inside its range for each symbolic dim (distinct where possible)."""
    env = {}
    for i, (name, rng) in enumerate(module.dims.items()):
        size = max(rng.min, 3 + 2 * i)
        env[name] = size if rng.max is None else min(size, rng.max)
    return env


def _concrete(expr: str, env: dict[str, int]) -> Any:
    if expr in env:
        return env[expr]
    value = _sympify(expr).subs({sympy.Symbol(k): v for k, v in env.items()})
    if value.is_Integer:
        return int(value)
    if value.is_Number:
        return float(value)
    if value in (sympy.true, sympy.false):
        return bool(value)
    raise ValueError(f"{expr} is not constant")


@functools.lru_cache(maxsize=4096)
def _sympify(expr: str) -> Any:
    return sympy.sympify(expr)


class _Unknown(Exception):
    """An operand whose concrete value is not known statically."""


def _aten_dtypes(node: Node, env: dict[str, int], cache: dict[Any, Any]) -> list[str]:
    """Declared output dtypes of an ATen node vs what the op computes on meta tensors."""
    declared = [v.type.dtype for v in node.outputs if isinstance(v.type, TensorType)]
    if not declared:
        return []

    def meta(v: Value) -> Any:
        t = v.type
        if isinstance(t, TensorType):
            try:
                shape = [d if isinstance(d, int) else _concrete(d, env) for d in t.shape]
            except (ValueError, TypeError, sympy.SympifyError):
                raise _Unknown from None
            return torch.empty(shape, dtype=t.dtype, device="meta")
        if isinstance(t, SymType) and t.expr is not None:
            try:
                return _concrete(t.expr, env)
            except (ValueError, TypeError, sympy.SympifyError):
                raise _Unknown from None
        raise _Unknown

    try:
        args = map_values(node.args, meta)
        kwargs = map_values(node.kwargs, meta)
    except _Unknown:
        return []
    key = (node.op, repr(map_values((node.args, node.kwargs),
                                    lambda v: (str(v.type) if not isinstance(v.type, SymType) else v.type.expr))))
    if key not in cache:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = resolve(node.op)(*args, **kwargs)
        except Exception:  # noqa: BLE001 - ops meta tensors cannot run say nothing about dtypes
            result = None
        flat = result if isinstance(result, (tuple, list)) else [result]
        cache[key] = [r.dtype for r in flat if isinstance(r, torch.Tensor)] if result is not None else None
    computed = cache[key]
    if computed is None or len(computed) != len(declared) or computed == declared:
        return []
    shown = ", ".join(str(d).replace("torch.", "") for d in computed)
    return [f"declares result dtype {', '.join(str(d).replace('torch.', '') for d in declared)} but "
            f"the op computes {shown}: fix the output type (or cast the operands)"]


def collect_problems(module: Module) -> list[str]:
    """All invariant violations of ``module``, one message each (empty when valid)."""
    problems: list[str] = []
    graph = module.graph
    defined: set[int] = set()
    env = _sizes(module)
    cache: dict[Any, Any] = {}
    names: Counter[str] = Counter()
    all_values: list[Value] = []

    for name, param in module.params.items():
        if param.name != name:
            problems.append(f"parameter stored as @{name} is named @{param.name}: keep them equal")
        for key, attr in param.attrs.items():
            check = getattr(attr, "check", None)
            if check is None:
                problems.append(f"parameter @{name} attribute {key}={attr!r} is not a typed "
                                "attribute (optc.ir.attributes)")
                continue
            problems += [f"parameter @{name} {p} (attribute {key})" for p in check(param.data)]
        defined.add(id(param))
        all_values.append(param)
    for value in graph.inputs:
        if value.producer is not None:
            problems.append(f"graph input %{value.name} has a producer: inputs are defined by the graph")
        defined.add(id(value))
        names[value.name] += 1
        all_values.append(value)
        _check_dims(module, value, problems)

    for node in graph:
        where = _where(node)
        if node.graph is not graph:
            problems.append(f"{where} is listed in the graph but not attached to it")
        for value in flatten_values((node.args, node.kwargs)):
            if value.is_param:
                if module.params.get(value.name) is not value:
                    problems.append(
                        f"{where} reads @{value.name}, which is not a parameter of this module: "
                        "add it with module.add_param or use the module's parameter"
                    )
            elif id(value) not in defined:
                problems.append(
                    f"{where} uses %{value.name} before it is defined: move the node after "
                    f"%{value.name}'s producer or fix the argument"
                )
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                problems.append(f"{where}: output %{out.name} does not point back to its node")
            names[out.name] += 1
            defined.add(id(out))
            all_values.append(out)
            _check_dims(module, out, problems)
        opdef = get_op(node.op)
        if opdef is not None:
            problems += [f"{where}: {p}" for p in opdef.validate(node)]
        else:
            try:
                resolve(node.op)
            except IRError as exc:
                text = unknown_op_message(node.op, list(all_ops())) if "." not in node.op else str(exc)
                problems.append(f"{where}: {text}")
                continue
            if node.op.startswith("aten."):
                problems += [f"{where}: {p}" for p in _aten_dtypes(node, env, cache)]

    for name, count in names.items():
        if count > 1:
            problems.append(f"value %{name} is defined {count} times: SSA names must be unique")

    # use-lists must match the arguments
    expected: dict[int, Counter[Node]] = {}
    for node in graph:
        for value in flatten_values((node.args, node.kwargs)):
            expected.setdefault(id(value), Counter())[node] += 1
    for value in all_values:
        recorded = Counter(value._users)
        if recorded != expected.get(id(value), Counter()):
            stale = [n for n in recorded if n.graph is not graph]
            hint = f" (stale users not in the graph: {stale})" if stale else ""
            problems.append(
                f"use-list of %{value.name} is out of sync with the graph{hint}: edit arguments "
                "through Node.args/kwargs/replace_input, never by mutating containers"
            )

    outputs = graph.outputs
    if not outputs:
        problems.append("the graph has no outputs: set at least one with graph.set_output")
    for key, value in outputs.items():
        if not isinstance(value, Value):
            problems.append(f"output '{key}' is {value!r}, not a value")
        elif id(value) not in defined:
            problems.append(f"output '{key}' is %{value.name}, which the graph does not define")
    return problems


def verify(module: Module, context: str = "") -> None:
    """Raise :class:`VerificationError` listing every problem, if there are any."""
    problems = collect_problems(module)
    if problems:
        raise VerificationError(problems, context)
