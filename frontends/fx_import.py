"""Conversion of a torch.export ``ExportedProgram`` (ATen graph) into an optc module."""

from __future__ import annotations

import operator
import re
from typing import Any

import sympy
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from optc.errors import FrontendError
from optc.ir.core import DimRange, Module, Value
from optc.ir.targets import op_name_of
from optc.ir.types import SymType, TensorType, Type

__all__ = ["import_exported_program"]

_LITERALS = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
             torch.memory_format)


def _source_line(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    # The stack trace ends with: File "...", line N, in fn / <code line>
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File "):
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{lines[i]}: {code}".strip()
    return "unknown source line"


def _finite_int(bound: Any) -> int | None:
    """A range bound as an int, or None when infinite (torch uses its own int_oo)."""
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return value if abs(value) < 2**62 else None


def _module_path(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return re.sub(r"^L\['self'\]\.?", "", str(path)) or None


class _DimNamer:
    """Maps the program's sympy symbols to the module's dim names."""

    def __init__(self, names: dict[sympy.Symbol, str]) -> None:
        self.names = names
        self.subs = {sym: sympy.Symbol(name, integer=True) for sym, name in names.items()}

    def dim(self, d: Any) -> int | str:
        if isinstance(d, int):
            return d
        expr = d.node.expr if isinstance(d, torch.SymInt) else d
        if isinstance(expr, sympy.Integer) or (hasattr(expr, "is_number") and expr.is_number):
            return int(expr)
        for sym in expr.free_symbols:
            if sym not in self.names:
                self.names[sym] = str(sym)
                self.subs[sym] = sympy.Symbol(str(sym), integer=True)
        return str(expr.xreplace(self.subs))

    def type_of(self, val: Any) -> Type | None:
        if isinstance(val, torch.Tensor):
            return TensorType(val.dtype, tuple(self.dim(d) for d in val.shape))
        if isinstance(val, torch.SymInt):
            return SymType("int", str(self.dim(val)))
        if isinstance(val, torch.SymFloat):
            return SymType("float", str(val.node.expr.xreplace(self.subs)))
        if isinstance(val, torch.SymBool):
            return SymType("bool", str(val.node.expr.xreplace(self.subs)))
        if isinstance(val, bool):
            return SymType("bool", str(val))
        if isinstance(val, int):
            return SymType("int", str(val))
        if isinstance(val, float):
            return SymType("float", repr(val))
        return None


def import_exported_program(
    ep: ExportedProgram,
    name: str,
    dim_names: dict[tuple[int, int], str] | None = None,
    param_prefix: str = "",
    input_names: list[str] | None = None,
) -> Module:
    """Build an optc module from an exported program.

    ``input_names`` name the user inputs in order (default: the placeholder names);
    ``dim_names`` maps (user input index, axis) to the dim name to use (``batch``, ``seq``);
    ``param_prefix`` is stripped from parameter names (the wrapper's attribute name).
    """
    module = Module(name)
    graph = module.graph
    sig = ep.graph_signature
    specs = {spec.arg.name: spec for spec in sig.input_specs}
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]

    # Name the symbols after the user's dims.
    sym_names: dict[sympy.Symbol, str] = {}
    user_inputs = [n for n in placeholders if specs[n.name].kind == InputKind.USER_INPUT]
    for index, node in enumerate(user_inputs):
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                wanted = (dim_names or {}).get((index, axis))
                if wanted and size.node.expr not in sym_names:
                    sym_names[size.node.expr] = wanted
    namer = _DimNamer(sym_names)

    env: dict[torch.fx.Node, Any] = {}
    state = {**ep.state_dict, **ep.constants}
    for node in placeholders:
        spec = specs[node.name]
        if spec.kind == InputKind.USER_INPUT:
            type_ = namer.type_of(node.meta.get("val"))
            if type_ is None:
                raise FrontendError(
                    f"input '{node.name}' is not a tensor or symbolic int; optc captures tensor inputs"
                )
            index = user_inputs.index(node)
            env[node] = graph.add_input(input_names[index] if input_names else node.name, type_)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            target = spec.target
            data = state.get(target)
            if data is None:
                raise FrontendError(f"no tensor for {spec.kind.name.lower()} '{target}'")
            pname = target[len(param_prefix):] if target.startswith(param_prefix) else target
            pname = module.unique_param_name(pname)
            env[node] = module.add_param(pname, data.detach())
        else:
            raise FrontendError(
                f"input '{node.name}' of kind {spec.kind.name} is not supported "
                "(optc captures inference graphs: call model.eval() and avoid custom objects)"
            )

    def convert_arg(arg: Any, where: torch.fx.Node) -> Any:
        if isinstance(arg, torch.fx.Node):
            value = env.get(arg)
            if not isinstance(value, Value):
                raise FrontendError(
                    f"op {where.target} reads {arg.name}, which has no single IR value; "
                    f"at {_source_line(where)}"
                )
            return value
        if isinstance(arg, (list, tuple)):
            items = [convert_arg(a, where) for a in arg]
            return items if isinstance(arg, list) else tuple(items)
        if isinstance(arg, _LITERALS):
            return arg
        raise FrontendError(
            f"op {where.target} has an argument of type {type(arg).__name__} that optc cannot "
            f"represent; at {_source_line(where)}"
        )

    outputs: dict[str, Value] = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            flat = node.args[0]
            outputs = {}
            for i, item in enumerate(flat):
                if not isinstance(item, torch.fx.Node) or not isinstance(env.get(item), Value):
                    raise FrontendError(
                        f"model output {i} is {item!r}, not a tensor computed by the graph"
                    )
                outputs[str(i)] = env[item]
            continue
        if node.op != "call_function":
            raise FrontendError(
                f"graph node '{node.name}' ({node.op} {node.target}) is not supported: optc "
                f"captures flat ATen graphs (no control-flow or higher-order ops); at "
                f"{_source_line(node)}"
            )
        if node.target is operator.getitem:
            source, index = node.args
            parts = env.get(source)
            if not isinstance(parts, tuple):
                raise FrontendError(f"getitem on {source.name} which is not a multi-output op")
            env[node] = parts[index]
            continue
        op = op_name_of(node.target)
        if op is None:
            raise FrontendError(
                f"op {getattr(node.target, '__qualname__', node.target)} cannot be represented "
                f"in optc's IR; at {_source_line(node)}"
            )
        val = node.meta.get("val")
        multi = isinstance(val, (list, tuple))
        vals = list(val) if multi else ([] if val is None else [val])
        types = []
        for v in vals:
            t = namer.type_of(v)
            if t is None:
                raise FrontendError(
                    f"op {op} produces a {type(v).__name__}, which optc cannot type; at "
                    f"{_source_line(node)}"
                )
            types.append(t)
        args = tuple(convert_arg(a, node) for a in node.args)
        kwargs = {k: convert_arg(v, node) for k, v in node.kwargs.items()}
        names = [f"{node.name}_{i}" for i in range(len(types))] if multi else [node.name] * len(types)
        ir_node = graph.create_node(op, args, kwargs, types, names=names)
        ir_node.loc = _module_path(node)
        env[node] = tuple(ir_node.outputs) if multi else (ir_node.outputs[0] if types else None)

    for name, value in outputs.items():
        graph.set_output(name, value)

    for sym, rng in ep.range_constraints.items():
        if sym in namer.names:
            lo = _finite_int(rng.lower)
            hi = _finite_int(rng.upper)
            module.dims[namer.names[sym]] = DimRange(lo or 0, hi)
    for dim_name in namer.names.values():
        module.dims.setdefault(dim_name, DimRange(0, None))
    return module
