"""The textual form of the IR: stable, diffable, and read back by :mod:`optc.ir.parser`.

    module @BertModel {
      dim batch = [2, inf]
      param @embeddings.word_embeddings.weight : f32[30522,384]
      graph(%input_ids : i64[batch,seq]) {
        %emb : f32[batch,seq,384] = embedding(%input_ids, @embeddings.word_embeddings.weight, padding_idx=0)
        return (last_hidden_state=%emb)
      }
    }

Values are ``%name``, parameters ``@name``. Attributes of high-level ops and keyword arguments of
ATen ops are printed as ``key=value``. Floats print with ``repr`` so they read back exactly.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch

from optc.ir.attributes import Attribute
from optc.ir.core import Module, Node, Value

__all__ = ["print_module", "format_literal", "format_node"]

_BARE = re.compile(r"[A-Za-z0-9_.]+\Z")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _ref(value: Value, names: dict[Value, str] | None) -> str:
    if value.is_param:
        return "@" + (value.name if _BARE.match(value.name) else json.dumps(value.name))
    name = names.get(value, value.name) if names is not None else value.name
    return "%" + name


def format_literal(obj: Any, names: dict[Value, str] | None = None) -> str:
    """Print an argument tree: values, literals, lists and tuples."""
    if isinstance(obj, Value):
        return _ref(obj, names)
    if obj is None:
        return "none"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return repr(obj)
    if isinstance(obj, str):
        return json.dumps(obj)
    if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
        return str(obj)  # torch.float32, torch.strided, torch.contiguous_format
    if isinstance(obj, torch.device):
        return f'device("{obj}")'
    if isinstance(obj, Attribute):
        fields = ", ".join(f"{k}={format_literal(v, names)}" for k, v in obj.fields().items())
        return f"{obj.kind}({fields})"
    if isinstance(obj, list):
        return "[" + ", ".join(format_literal(x, names) for x in obj) + "]"
    if isinstance(obj, tuple):
        inner = ", ".join(format_literal(x, names) for x in obj)
        return f"({inner},)" if len(obj) == 1 else f"({inner})"
    raise TypeError(f"cannot print IR literal {obj!r} of type {type(obj).__name__}")


def format_node(node: Node, names: dict[Value, str] | None = None, locations: bool = False) -> str:
    """One node as a single line (without indentation)."""
    parts = [format_literal(a, names) for a in node.args]
    parts += [f"{k}={format_literal(v, names)}" for k, v in node.kwargs.items()]
    call = f"{node.op}({', '.join(parts)})"
    if node.outputs:
        defs = ", ".join(f"{_ref(v, names)} : {v.type}" for v in node.outputs)
        call = f"{defs} = {call}"
    if locations and node.loc:
        call += f" loc({json.dumps(node.loc)})"
    return call


def _output_key(name: str) -> str:
    return name if _KEY.match(name) else json.dumps(name)


def print_module(module: Module, canonical: bool = False, locations: bool = False) -> str:
    """Print a module.

    ``canonical`` renames values to ``%0, %1, ...`` in definition order so that two modules
    that differ only in value names print the same (structural comparison in tests).
    ``locations`` appends each node's ``loc("...")`` (source module path).
    """
    graph = module.graph
    names: dict[Value, str] | None = None
    if canonical:
        names = {}
        for value in graph.inputs:
            names[value] = value.name  # input names are part of the interface
        taken = {v.name for v in graph.inputs}
        counter = 0
        for node in graph:
            for out in node.outputs:
                while str(counter) in taken:
                    counter += 1
                names[out] = str(counter)
                counter += 1
    lines = [f"module @{module.name if _BARE.match(module.name) else json.dumps(module.name)} {{"]
    if module.meta:
        lines.append(f"  meta {json.dumps(module.meta, sort_keys=True)}")
    for dim, rng in module.dims.items():
        hi = "inf" if rng.max is None else str(rng.max)
        lines.append(f"  dim {dim} = [{rng.min}, {hi}]")
    for param in module.params.values():
        attrs = ""
        if param.attrs:
            attrs = " {" + ", ".join(f"{k}={format_literal(v)}" for k, v in param.attrs.items()) + "}"
        lines.append(f"  param {_ref(param, names)} : {param.type}{attrs}")
    sig = ", ".join(f"{_ref(v, names)} : {v.type}" for v in graph.inputs)
    lines.append(f"  graph({sig}) {{")
    for node in graph:
        lines.append("    " + format_node(node, names, locations))
    outs = ", ".join(f"{_output_key(k)}={_ref(v, names)}" for k, v in graph.outputs.items())
    lines.append(f"    return ({outs})")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
