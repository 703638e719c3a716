"""``optc passes`` and ``optc ops``: the catalogue of registered passes (each with its options,
their types, defaults and docs) and of the IR's high-level ops (operands, attributes, backend
lowerings), as text or JSON."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from typing import Any

from optc.tools.common import EPILOG
from optc.tools.common import Parser as _Parser

__all__ = ["option_docs", "describe_passes", "cmd_passes", "describe_ops", "cmd_ops"]


def option_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each dataclass field (xDSL style), by field name, from the
    class and the classes it extends (a subclass's docs win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:] + [None], strict=True):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_passes() -> list[dict[str, Any]]:
    """Every registered pass with its options (name, type, default, doc)."""
    from optc.passes.base import format_value
    from optc.passes.registry import all_passes
    from optc.passes.spec import describe_type

    result = []
    for name, cls in all_passes().items():
        hints = typing.get_type_hints(cls)
        docs = option_docs(cls)
        options = []
        for f in cls.options():
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            options.append({
                "name": f.name,
                "type": describe_type(hints[f.name]),
                "default": format_value(default),
                "doc": docs.get(f.name, ""),
            })
        result.append({"name": name, "summary": cls.summary(), "options": options})
    return result


def cmd_passes(argv: list[str]) -> int:
    """``optc passes [--json]``."""
    p = _Parser(prog="optc passes", description="List every pass with its options.", epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    passes = describe_passes()
    if args.json:
        print(json.dumps(passes, indent=2))
        return 0
    width = max(len(x["name"]) for x in passes)
    for x in passes:
        print(f"{x['name'].ljust(width)}  {x['summary']}")
        for o in x["options"]:
            print(f"{'':{width}}    {o['name']}={o['default']}  ({o['type']})  {o['doc']}".rstrip())
    print("\nspec syntax: name or name{option=value,...}; separate passes with commas")
    return 0


def describe_ops() -> list[dict[str, Any]]:
    """Every high-level op: operands, attributes and which backends lower it natively."""
    from optc.ir.ops import REQUIRED, all_ops
    from optc.passes.base import format_value

    result = []
    for name, op in sorted(all_ops().items()):
        attrs = []
        for key, a in op.attrs.items():
            types = a.types if isinstance(a.types, tuple) else (a.types,)
            attrs.append({"name": key, "type": "|".join(t.__name__ for t in types),
                          "required": a.default is REQUIRED,
                          "default": None if a.default is REQUIRED else format_value(a.default),
                          "doc": a.doc})
        result.append({
            "name": name,
            "doc": op.doc,
            "operands": [{"name": o.name, "dtypes": o.dtypes, "optional": o.optional}
                         for o in op.operands],
            "attributes": attrs,
            "lowerings": {"eager": "kernel", "torchscript": "script" if op.script else None,
                          "onnx": "custom" if op.onnx else "traced"},
            "traits": sorted(op.traits),
            "samples": len(op.samples),
            "module": op.kernel.__module__ if op.kernel is not None else None,
        })
    return result


def cmd_ops(argv: list[str]) -> int:
    """``optc ops [--json]``."""
    p = _Parser(prog="optc ops", description="List the IR's high-level ops: operands, "
                "attributes and their backend lowerings (ATen ops are written aten.name.overload).",
                epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    ops = describe_ops()
    if args.json:
        print(json.dumps(ops, indent=2))
        return 0
    for op in ops:
        operands = ", ".join(o["name"] + ("?" if o["optional"] else "") + f": {o['dtypes']}"
                             for o in op["operands"])
        onnx = {"custom": "ONNX Runtime op", "traced": "traced"}[op["lowerings"]["onnx"]]
        traits = f"  ({', '.join(op['traits'])})" if op["traits"] else ""
        print(f"{op['name']}({operands})  {op['doc']}  [onnx: {onnx}]{traits}")
        for a in op["attributes"]:
            default = "required" if a["required"] else a["default"]
            print(f"    {a['name']}: {a['type']} = {default}  {a['doc']}".rstrip())
    return 0
