"""The verifier: checks every invariant of a module and explains how to fix what is broken.

Invariants:

- SSA: every value is defined once (graph input, parameter or node output) and before use.
- Use-lists: each value's recorded users match the arguments that read it.
- Parameters: every ``@name`` a node reads is the module's parameter of that name.
- Ops: ATen ops resolve to ``torch.ops``; Python ops are allow-listed; high-level ops have
  their operands and attributes, and their declared output types equal the inferred ones
  (so a weight sliced without updating the op is caught).
- Types: symbolic dims are expressions of the module's declared dims.
- Outputs: at least one named output, each defined in the graph.
"""

from __future__ import annotations

import re
from collections import Counter

from optc.errors import IRError, VerificationError
from optc.ir.core import Module, Node, Value, flatten_values
from optc.ir.ops import get_op
from optc.ir.targets import resolve
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


def collect_problems(module: Module) -> list[str]:
    """All invariant violations of ``module``, one message each (empty when valid)."""
    problems: list[str] = []
    graph = module.graph
    defined: set[int] = set()
    names: Counter[str] = Counter()
    all_values: list[Value] = []

    for name, param in module.params.items():
        if param.name != name:
            problems.append(f"parameter stored as @{name} is named @{param.name}: keep them equal")
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
                problems.append(f"{where}: {exc}")

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
