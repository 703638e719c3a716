"""The TorchScript backend: IR -> Python source that ``torch.jit.script`` compiles.

``torch.jit.trace`` of an exported graph freezes its shapes and ``torch.jit.script`` rejects
fx-generated code, so this backend generates its own scriptable source from the IR: one
statement per node, ATen ops called through ``torch.ops.aten.<name>`` (TorchScript resolves the
overload from the arguments), high-level ops through their TorchScript lowerings (each op's
``script``, in :mod:`optc.ir.ops`). Shapes stay
symbolic, so the saved module runs at any batch and sequence size.

``to_torchscript(module, sparse_kernel=...)`` runs sparse linear weights with CSR or BSR kernels
(:mod:`optc.backends.sparse_exec`): the weight is stored as its compressed parts (plain tensors,
which ``torch.jit.save`` writes; it cannot save a BSR tensor) and ``k_sparse_linear`` rebuilds
the sparse tensor on each call. ``semi-structured`` weights cannot be scripted (a tensor
subclass): they fall back to dense with a warning. The plan is saved in the file as the extra
file ``optc/sparse_plan.json`` (``torch.jit.load(path, _extra_files={...})``). Dynamic int8
linears call fbgemm's prepacked kernel, as in eager (:mod:`optc.backends.int8_exec`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import torch

from optc.backends.eager import EagerModule, python_identifier
from optc.backends.int8_exec import packed_int8_nodes, packed_weights
from optc.backends.record import torchscript_extra_files
from optc.backends.sparse_exec import (
    SPARSE_SCRIPT,
    AutoOptions,
    SparsePlan,
    dense_unused,
    lowered_nodes,
    resolve_plan,
    sparse_parts,
)
from optc.errors import BackendError, IRError
from optc.ir.core import Module, Node, Value
from optc.ir.ops import get_op
from optc.ir.targets import resolve
from optc.ir.types import SymType, TensorType

__all__ = ["generate_source", "to_torchscript", "export_torchscript", "PLAN_FILE", "scriptable_plan"]

PLAN_FILE = "optc/sparse_plan.json"
"""Extra file of a saved TorchScript module holding its sparse-kernel plan (JSON)."""

_COUNTER = itertools.count()

_PY_OPERATORS = {
    "py.operator.add": "+", "py.operator.sub": "-", "py.operator.mul": "*",
    "py.operator.truediv": "/", "py.operator.floordiv": "//", "py.operator.mod": "%",
    "py.operator.pow": "**", "py.operator.eq": "==", "py.operator.ne": "!=",
    "py.operator.lt": "<", "py.operator.le": "<=", "py.operator.gt": ">", "py.operator.ge": ">=",
}



def _script_type(value: Value) -> str:
    t = value.type
    if isinstance(t, TensorType):
        return "Tensor"
    if isinstance(t, SymType):
        return {"int": "int", "float": "float", "bool": "bool"}[t.kind]
    raise BackendError(f"torchscript backend cannot type %{value.name}")


class _Writer:
    def __init__(self, module: Module, plan: SparsePlan | None = None) -> None:
        self.module = module
        self.sparse = lowered_nodes(module, plan, ("csr", "bsr"))
        self.packed: dict[Node, str | None] = {n: None for n in packed_int8_nodes(module)
                                               if n not in self.sparse}
        """Prepacked int8 linears and the attribute holding each one's parameters."""
        self.parts: dict[str, list[str]] = {}
        self.names: dict[int, str] = {}
        self.taken: set[str] = {"self", "torch", "math", "Tensor", "List", "Optional", "Dict"}

    def literal(self, obj: Any, list_type: str | None = None) -> str:
        if isinstance(obj, Value):
            return self.names[id(obj)]
        if obj is None or isinstance(obj, (bool, int, str)):
            return repr(obj)
        if isinstance(obj, float):
            if math.isinf(obj):
                return "float('inf')" if obj > 0 else "float('-inf')"
            if math.isnan(obj):
                return "float('nan')"
            return repr(obj)
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            return str(obj)
        if isinstance(obj, torch.device):
            return f"torch.device({str(obj)!r})"
        if isinstance(obj, (list, tuple)):
            inner = ", ".join(self.literal(x) for x in obj)
            text = f"[{inner}]"
            if list_type is not None:
                return f"torch.jit.annotate({list_type}, {text})"
            return text
        raise BackendError(f"torchscript backend cannot write literal {obj!r}")

    def call(self, node: Node) -> str:
        op = node.op
        args, kwargs = node.args, node.kwargs
        if op in _PY_OPERATORS:
            return f"({self.literal(args[0])} {_PY_OPERATORS[op]} {self.literal(args[1])})"
        if op == "py.operator.neg":  # symbolic sizes: -s % block (a dim captured as Dim.AUTO)
            return f"(-{self.literal(args[0])})"
        if op in ("py.torch.sym_min", "py.torch.sym_max"):
            return f"{op[-3:]}({self.literal(args[0])}, {self.literal(args[1])})"
        if op == "aten.sym_size.int":
            return f"{self.literal(args[0])}.size({self.literal(args[1])})"
        if node in self.sparse:
            w, bias = args[1], node.arg(2)
            limit = self.sparse[node].max_tokens
            parts = [self.literal(args[0]), *self.parts[w.name],
                     "None" if bias is None else self.literal(bias), str(int(w.data.shape[0])),
                     "None" if limit is None else self.literal(w), str(-1 if limit is None else limit)]
            return f"k_sparse_linear({', '.join(parts)})"
        if node in self.packed:
            return f"torch.ops.quantized.linear_dynamic({self.literal(args[0])}, {self.packed[node]}, False)"
        opdef = get_op(op)
        if opdef is not None:
            if not opdef.script:
                raise BackendError(f"torchscript backend cannot lower {node!r}: op '{op}' has no "
                                   "TorchScript lowering")
            parts = [self.literal(a) for a in opdef.operand_args(node)]
            for key, value in opdef.kernel_attrs(node).items():
                if opdef.attrs[key].types is float and isinstance(value, int):
                    value = float(value)  # TorchScript does not widen int to float
                parts.append(self.literal(list(value) if isinstance(value, tuple) else value))
            return f"k_{op}({', '.join(parts)})"
        if not op.startswith("aten."):
            raise BackendError(f"torchscript backend cannot lower {node!r}: op '{op}' is not an ATen op")
        try:
            target = resolve(op)
        except IRError as exc:
            raise BackendError(f"torchscript backend cannot lower {node!r}: {exc}") from None
        schema = target._schema
        name = op.split(".")[1]
        parts = []
        for i, arg in enumerate(args):
            ann = None
            if i < len(schema.arguments) and str(schema.arguments[i].type) == "List[Optional[Tensor]]":
                ann = "List[Optional[Tensor]]"
            parts.append(self.literal(arg, ann))
        parts += [f"{k}={self.literal(v)}" for k, v in kwargs.items()]
        return f"torch.ops.aten.{name}({', '.join(parts)})"

    def source(self) -> tuple[str, dict[str, Any]]:
        """The module's source and its attributes: tensors (buffers) and prepacked int8 weights."""
        graph = self.module.graph
        buffers: dict[str, Any] = {}
        skip = dense_unused(self.module, {**self.sparse, **self.packed})
        lines = []
        sig = []
        for value in graph.inputs:
            name = python_identifier(value.name, self.taken)
            self.names[id(value)] = name
            sig.append(f"{name}: {_script_type(value)}")
        for pname, param in self.module.params.items():
            if pname in skip:
                continue
            attr = python_identifier("p_" + pname, self.taken)
            buffers[attr] = param.data
            self.names[id(param)] = f"self.{attr}"
        for node, choice in self.sparse.items():
            w = node.arg(1)
            if w.name in self.parts:
                continue
            self.parts[w.name] = []
            for suffix, t in zip(("crow", "col", "values"), sparse_parts(w.data, choice.kernel, choice.block),
                                 strict=True):
                attr = python_identifier(f"p_{w.name}_{choice.kernel}_{suffix}", self.taken)
                buffers[attr] = t
                self.parts[w.name].append(f"self.{attr}")
        for weight, params, users in packed_weights(self.packed):
            attr = python_identifier(f"p_{weight}_packed", self.taken)
            buffers[attr] = params
            self.packed.update(dict.fromkeys(users, f"self.{attr}"))
        for node in graph:
            call = self.call(node)
            if not node.outputs:
                lines.append(call)
                continue
            outs = [python_identifier(v.name, self.taken) for v in node.outputs]
            for v, n in zip(node.outputs, outs, strict=True):
                self.names[id(v)] = n
            if len(outs) == 1:
                lines.append(f"{outs[0]} = {call}")
            else:
                lines.append(f"{', '.join(outs)} = {call}")
        result = ", ".join(f"{k!r}: {self.names[id(v)]}" for k, v in graph.outputs.items())
        body = "\n".join("        " + line for line in lines)
        src = (
            "import math\nimport torch\nfrom torch import Tensor\n"
            "from typing import Dict, List, Optional\n\n"
            f"{_kernel_sources(self.module)}\n{SPARSE_SCRIPT if self.sparse else ''}\n"
            "class OptcModule(torch.nn.Module):\n"
            f"    def forward(self, {', '.join(sig)}) -> Dict[str, Tensor]:\n"
            f"{body}\n"
            f"        return {{{result}}}\n"
        )
        return src, buffers


def _kernel_sources(module: Module) -> str:
    """The TorchScript lowering of every high-level op the module uses, once each."""
    used = dict.fromkeys(node.op for node in module.graph if get_op(node.op) is not None)
    return "\n".join(get_op(op).script for op in used)


def scriptable_plan(plan: SparsePlan | None) -> SparsePlan | None:
    """``plan`` with its semi-structured choices turned dense (with a warning): TorchScript
    cannot script or save torch's semi-structured tensor subclass."""
    if plan is None or not any(c.kernel == "semi-structured" for c in plan.layers):
        return plan
    semi = [c.param for c in plan.layers if c.kernel == "semi-structured"]
    warnings.warn(f"TorchScript cannot script semi-structured (2:4) sparse tensors: {len(semi)} "
                  "weight(s) run dense in the TorchScript module (use the eager backend for "
                  "2:4 kernels on CUDA)", UserWarning, stacklevel=3)
    layers = tuple(dataclasses.replace(c, kernel="dense", reason="semi-structured cannot be "
                                       "scripted: dense")
                   if c.kernel == "semi-structured" else c for c in plan.layers)
    return SparsePlan(plan.requested, plan.threads, layers)


def generate_source(module: Module, plan: SparsePlan | None = None) -> str:
    """The scriptable Python source for ``module`` (parameters are ``self.p_*`` buffers)."""
    return _Writer(module, plan).source()[0]


def to_torchscript(module: Module, sparse_kernel: str | SparsePlan | None = "dense", *,
                   auto: AutoOptions | None = None) -> torch.jit.ScriptModule:
    """Compile ``module`` to a ScriptModule with dynamic shapes.

    ``sparse_kernel``: as for :func:`optc.backends.eager.to_eager` (``semi-structured`` falls
    back to dense with a warning); the plan is kept as the module's ``optc_sparse_plan``
    attribute (JSON text, empty for dense)."""
    for name, param in module.params.items():
        if param.data.is_meta:
            raise BackendError(f"parameter @{name} has no data (IR text was loaded without weights)")
    plan = scriptable_plan(resolve_plan(module, sparse_kernel, auto,
                                        runner=lambda p: EagerModule(module, p)))
    src, buffers = _Writer(module, plan).source()
    with tempfile.NamedTemporaryFile("w", suffix="_optc_ts.py", delete=False) as f:
        f.write(src)  # TorchScript reads the source back from disk to compile it
        path = f.name
    name = f"optc_generated_{next(_COUNTER)}"
    generated = types.ModuleType(name)
    generated.__file__ = path
    sys.modules[name] = generated
    try:
        exec(compile(src, path, "exec"), generated.__dict__)  # noqa: S102 - our generated code
        instance = generated.OptcModule()
        for attr, value in buffers.items():
            if isinstance(value, torch.Tensor):
                instance.register_buffer(attr, value)
            else:  # prepacked int8 weights: TorchScript saves them with the module
                setattr(instance, attr, value)
        instance.optc_sparse_plan = json.dumps(plan.to_json()) if plan is not None else ""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
                return torch.jit.script(instance)
        except Exception as exc:  # noqa: BLE001 - report which statement failed
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"torchscript backend: TorchScript rejected the generated code: {first}") from exc
    finally:
        sys.modules.pop(name, None)
        os.unlink(path)


def export_torchscript(module: Module, path: str | os.PathLike, *, force: bool = False,
                       sparse_kernel: str | SparsePlan | None = None,
                       auto: AutoOptions | None = None) -> Path:
    """Write ``module`` as a TorchScript file for ``torch.jit.load`` (atomic, no overwrite).

    ``sparse_kernel``: as for :func:`to_torchscript`; None takes the module's recorded choice,
    ``module.meta["sparse_kernel"]`` (what ``optc --sparse-kernel`` sets), else dense. The
    extra files ``optc.json`` and ``optc/tokenizer_files.json`` record the module's task, max
    length, pooling and tokenizer (see :mod:`optc.backends.record`)."""
    from optc.outputs import atomic_file, check_output

    check_output(path, force)  # fail before compiling
    if sparse_kernel is None:
        sparse_kernel = module.meta.get("sparse_kernel", "dense")
    scripted = to_torchscript(module, sparse_kernel, auto=auto)
    plan = scripted.optc_sparse_plan
    extra = torchscript_extra_files(module)  # task, max length, pooling, tokenizer
    if plan:
        extra[PLAN_FILE] = plan
    with atomic_file(path, force) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return Path(path)
