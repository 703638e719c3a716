"""The eager backend: IR -> a runnable ``torch.nn.Module`` generated through torch.fx.

The module's ``forward`` takes the graph inputs by position or by name (inputs with a recorded
default, such as a Hugging Face ``attention_mask``, may be omitted) and returns a dict of
output tensors named like the source model's output fields. Inputs that do not fit (3-D or
float ids, ids past the vocabulary, a sequence past the position table, a mask of another
shape) raise a :class:`~optc.errors.ModelInputError` before anything runs
(:class:`~optc.backends.model_inputs.InputCheck`).

``to_eager(module, sparse_kernel=...)`` runs sparse linear weights with the kernels of
:mod:`optc.backends.sparse_exec` (``dense`` by default; ``auto``, ``csr``, ``bsr``,
``semi-structured``); the choices are in ``EagerModule.sparse_plan``. Dynamic int8 linears run
on fbgemm's prepacked kernel where it computes the same integers (:mod:`optc.backends.int8_exec`).
"""

from __future__ import annotations

import keyword
import re
from typing import Any

import torch
import torch.fx

from optc.backends.int8_exec import packed_int8_linear, packed_int8_nodes, packed_weights
from optc.backends.model_inputs import InputCheck
from optc.backends.sparse_exec import (
    AutoOptions,
    SparsePlan,
    dense_unused,
    lowered_nodes,
    resolve_plan,
    semi_structured_linear,
    semi_structured_weight,
    sparse_linear,
    sparse_parts,
)
from optc.errors import BackendError, InputError, IRError, ModelInputError
from optc.ir.core import Module, Node, Value, map_values
from optc.ir.ops import get_op
from optc.ir.targets import resolve

__all__ = ["EagerModule", "to_eager", "build_graph_module", "bind_inputs", "python_identifier"]


def python_identifier(name: str, taken: set[str]) -> str:
    """A valid, unused Python identifier derived from ``name`` (added to ``taken``)."""
    base = re.sub(r"\W", "_", name)
    if not base or base[0].isdigit() or keyword.iskeyword(base):
        base = "v_" + base
    candidate, i = base, 0
    while candidate in taken:
        i += 1
        candidate = f"{base}_{i}"
    taken.add(candidate)
    return candidate


def build_graph_module(module: Module, plan: SparsePlan | None = None,
                       device: torch.device | str | None = None, *,
                       packed_int8: bool = False) -> torch.fx.GraphModule:
    """Generate a GraphModule computing ``module``; it returns a dict of named outputs.

    With ``plan`` (:func:`optc.backends.sparse_exec.plan_sparse_kernels`), the linear nodes of
    its csr/bsr weights call :func:`~optc.backends.sparse_exec.sparse_linear` on the weight's compressed
    parts and its semi-structured weights are stored as such (on CUDA); a dense copy of a weight
    is kept only when something else reads it. ``device``: where the buffers go.
    ``packed_int8``: dynamic int8 linears run on fbgemm's prepacked kernel
    (:mod:`optc.backends.int8_exec`) instead of the IR's portable one."""
    root = torch.nn.Module()
    fx = torch.fx.Graph()
    env: dict[int, torch.fx.Node] = {}
    taken: set[str] = set()
    sparse = lowered_nodes(module, plan, ("csr", "bsr"))
    semi = lowered_nodes(module, plan, ("semi-structured",))
    packed: dict[Node, Any] = {n: None for n in packed_int8_nodes(module, device)
                               if n not in sparse and n not in semi} if packed_int8 else {}
    skip = dense_unused(module, {**sparse, **semi, **packed})
    for value in module.graph.inputs:
        env[id(value)] = fx.placeholder(python_identifier(value.name, taken))
    for name, param in module.params.items():
        if param.data.is_meta:
            raise BackendError(f"parameter @{name} has no data (IR text was loaded without weights)")
        if name in skip:
            continue
        attr = python_identifier(name, taken)
        root.register_buffer(attr, param.data if device is None else param.data.to(device))
        env[id(param)] = fx.get_attr(attr)
    parts: dict[str, list[torch.fx.Node]] = {}
    for node in semi:  # a separate buffer: anything else reading the weight gets it dense
        w = node.arg(1)
        if w.name not in parts:
            attr = python_identifier(f"{w.name}_semi_structured", taken)
            root.register_buffer(attr, semi_structured_weight(w.data, device or "cuda", w.name))
            parts[w.name] = [fx.get_attr(attr)]
    for node, choice in sparse.items():
        w = node.arg(1)
        if w.name not in parts:
            tensors = sparse_parts(w.data, choice.kernel, choice.block)
            parts[w.name] = []
            for suffix, t in zip(("crow", "col", "values"), tensors, strict=True):
                attr = python_identifier(f"{w.name}_{choice.kernel}_{suffix}", taken)
                root.register_buffer(attr, t if device is None else t.to(device))
                parts[w.name].append(fx.get_attr(attr))

    for weight, params, users in packed_weights(packed):
        attr = python_identifier(f"{weight}_packed", taken)
        setattr(root, attr, params)
        ref = fx.get_attr(attr)
        packed.update(dict.fromkeys(users, ref))

    def lookup(v: Value) -> torch.fx.Node:
        return env[id(v)]

    for node in module.graph:
        opdef = get_op(node.op)
        if node in sparse:
            w = node.arg(1)
            bias = node.arg(2)
            limit = sparse[node].max_tokens
            args = (lookup(node.arg(0)), *parts[w.name], None if bias is None else lookup(bias),
                    int(w.data.shape[0]), None if limit is None else lookup(w),
                    -1 if limit is None else limit)
            env[id(node.outputs[0])] = fx.call_function(sparse_linear, args, {})
            continue
        if node in packed:
            args = (lookup(node.arg(0)), packed[node])
            env[id(node.outputs[0])] = fx.call_function(packed_int8_linear, args, {})
            continue
        if node in semi:
            bias = node.arg(2)
            args = (lookup(node.arg(0)), parts[node.arg(1).name][0],
                    None if bias is None else lookup(bias))
            env[id(node.outputs[0])] = fx.call_function(semi_structured_linear, args, {})
            continue
        if opdef is not None:
            target = opdef.kernel
            args = map_values(tuple(opdef.operand_args(node)), lookup)
            kwargs = opdef.kernel_attrs(node)
        else:
            try:
                target = resolve(node.op)
            except IRError as exc:
                raise BackendError(f"eager backend cannot lower {node!r}: {exc}") from None
            args = map_values(node.args, lookup)
            kwargs = map_values(node.kwargs, lookup)
            if device is not None:  # tensors created in the graph (arange, ones) follow the weights
                kwargs = {k: torch.device(device) if isinstance(v, torch.device) else v
                          for k, v in kwargs.items()}
        call = fx.call_function(target, tuple(args), kwargs)
        if len(node.outputs) == 1:
            env[id(node.outputs[0])] = call
        else:
            for i, out in enumerate(node.outputs):
                env[id(out)] = fx.call_function(_getitem, (call, i))
    fx.output({name: env[id(v)] for name, v in module.graph.outputs.items()})
    return torch.fx.GraphModule(root, fx, class_name=re.sub(r"\W", "_", module.name) or "Module")


def _getitem(obj: Any, index: int) -> Any:
    return obj[index]


class EagerModule(torch.nn.Module):
    """A compiled optc module for eager PyTorch execution."""

    def __init__(self, module: Module, plan: SparsePlan | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.ir = module
        """The IR module this was generated from (``optc.save`` accepts the EagerModule)."""
        self.sparse_plan = plan
        """The kernel chosen for each sparse weight (None: all dense); ``.table()`` prints it."""
        self.graph_module = build_graph_module(module, plan, device, packed_int8=True)
        self.input_names = [v.name for v in module.graph.inputs]
        self.output_names = list(module.graph.outputs)
        self.input_defaults: dict[str, str] = dict(module.meta.get("input_defaults", {}))
        self.input_check = InputCheck(module)
        """Refuses inputs that do not fit the graph's (run at the start of ``forward``)."""
        self.eval()

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = bind_inputs(self.input_names, self.input_defaults, args, kwargs)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            self.input_check(dict(zip(self.input_names, inputs, strict=True)))
        return self.graph_module(*inputs)


def bind_inputs(names: list[str], defaults: dict[str, str], args: tuple[torch.Tensor, ...],
                kwargs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The graph inputs in order from positional and keyword inputs; an input with a recorded
    default (``"ones"``/``"zeros"``, e.g. an attention mask) may be left out."""
    if len(args) > len(names):
        raise ModelInputError(
            f"got {len(args)} positional inputs, the model takes {len(names)}: {', '.join(names)}"
        )
    bound = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise ModelInputError(f"unknown input '{key}'; the model takes {', '.join(names)}")
        if key in bound:
            raise ModelInputError(f"input '{key}' given twice")
        bound[key] = value
    ordered = []
    for name in names:
        if name in bound:
            ordered.append(bound[name])
            continue
        default = defaults.get(name)
        if default is None or not bound:
            raise ModelInputError(f"missing input '{name}'")
        like = next(iter(bound.values()))
        if not isinstance(like, torch.Tensor):
            raise ModelInputError(f"input '{next(iter(bound))}' must be a torch.Tensor, got "
                                  f"{type(like).__name__}")
        ordered.append(torch.ones_like(like) if default == "ones" else torch.zeros_like(like))
    return ordered


def to_eager(module: Module, sparse_kernel: str | SparsePlan | None = "dense", *,
             auto: AutoOptions | None = None, device: torch.device | str | None = None) -> EagerModule:
    """Lower ``module`` to an eager ``nn.Module``.

    ``sparse_kernel``: ``dense`` (default), ``auto``, ``csr``, ``bsr``, ``semi-structured`` or a
    :class:`~optc.backends.sparse_exec.SparsePlan` (see :mod:`optc.backends.sparse_exec`;
    ``auto`` tunes with ``auto``). ``device``: where the weights go (``semi-structured``
    defaults to CUDA: give the module CUDA inputs)."""
    if not isinstance(module, Module):
        what = "torch module" if isinstance(module, torch.nn.Module) else "object"
        raise InputError(f"to_eager needs an optc IR module, got the {what} "
                         f"{type(module).__name__}: call optc.capture(model) first")
    plan = resolve_plan(module, sparse_kernel, auto, runner=lambda p: EagerModule(module, p))
    if device is None and plan is not None and any(c.kernel == "semi-structured" for c in plan.layers):
        device = "cuda"
    return EagerModule(module, plan, device)
