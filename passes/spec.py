"""The text pipeline spec shared by the Python API and the CLI.

    dce
    drop-layers{strategy=top,count=2},prune-heads{heads=0:1,0:3,2:5},dce

Passes are separated by commas at the top level. Inside braces, ``key=value`` options are
separated by commas too; a comma-separated item without ``=`` continues the previous option's
list (``heads=0:1,0:3``). Items of pair-typed lists are written ``a:b``. Values are converted
by the option's type annotation; errors list the valid passes, options or choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from optc.errors import PipelineSpecError, excerpt
from optc.passes.base import Pass, format_pass
from optc.passes.registry import get_pass

__all__ = ["parse_pipeline", "task_pipeline", "format_pipeline", "format_pass", "describe_type"]


def _split_top(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PipelineSpecError(f"unbalanced '}}' at position {i + 1} in pipeline {excerpt(text)}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise PipelineSpecError(f"missing '}}' in pipeline {excerpt(text)}")
    items.append(text[start:])
    return [item.strip() for item in items]


def _option_items(name: str, body: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    last: str | None = None
    for raw in body.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
            if key in options:
                raise PipelineSpecError(f"option '{key}' of pass '{name}' is given twice")
            options[key] = [value]
            last = key
        elif last is None:
            raise PipelineSpecError(
                f"'{item}' in pass '{name}' is not an option: write key=value"
            )
        else:
            options[last].append(item)
    return options


def describe_type(tp: Any) -> str:
    """A short human description of an option type (for errors and `optc passes`)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + " or none"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe_type(args[0])}"
        return ":".join(describe_type(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _convert_scalar(text: str, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert_scalar(text, arg, where)
            except PipelineSpecError as exc:
                errors.append(str(exc))
        raise PipelineSpecError(f"{where}: '{text}' is not a {describe_type(tp)}")
    if origin is Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise PipelineSpecError(
            f"{where}: '{text}' is not valid; choose one of {', '.join(str(a) for a in args)}"
        )
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        parts = text.split(":")
        if len(parts) != len(args):
            raise PipelineSpecError(
                f"{where}: '{text}' should have the form {describe_type(tp)}"
            )
        return tuple(_convert_scalar(p, a, where) for p, a in zip(parts, args, strict=True))
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise PipelineSpecError(f"{where}: '{text}' is not a boolean; use true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise PipelineSpecError(f"{where}: '{text}' is not an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise PipelineSpecError(f"{where}: '{text}' is not a number") from None
    if tp is str:
        return text
    raise PipelineSpecError(f"{where}: options of type {tp} cannot be given in a spec")


def _convert(values: list[str], tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(values) == 1 and values[0].lower() == "none":
            return None
        if len(non_none) == 1:
            return _convert(values, non_none[0], where)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if values == [""]:
            return ()
        return tuple(_convert_scalar(v, args[0], where) for v in values)
    if len(values) != 1:
        raise PipelineSpecError(f"{where}: takes one value, got {', '.join(values)}")
    return _convert_scalar(values[0], tp, where)


def _build(item: str) -> Pass:
    if "{" in item:
        if not item.endswith("}"):
            raise PipelineSpecError(f"text after '}}' in '{item}'")
        name, body = item[: item.index("{")].strip(), item[item.index("{") + 1 : -1]
    else:
        name, body = item, ""
    cls = get_pass(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, values in _option_items(name, body).items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise PipelineSpecError(f"pass '{name}' has no option '{key}'; valid options: {valid}")
        kwargs[key] = _convert(values, hints[key], f"option '{key}' of pass '{name}'")
    try:
        return cls(**kwargs)
    except PipelineSpecError:
        raise
    except (TypeError, ValueError) as exc:
        raise PipelineSpecError(f"pass '{name}': {exc}") from None


def parse_pipeline(text: str | Sequence[str | Pass]) -> list[Pass]:
    """Parse a pipeline spec into pass instances (an empty spec is an empty pipeline).

    Also accepts a list whose items are specs (``["dce"]``, ``["prune-heads{amount=0.5}",
    "dce"]``) or pass instances, in order. Anything else raises :class:`PipelineSpecError`
    saying what to pass.
    """
    if isinstance(text, str):
        if not text.strip():
            return []
        items = _split_top(text)
        if any(not item for item in items):
            raise PipelineSpecError(f"empty pass name in pipeline {excerpt(text)}")
        return [_build(item) for item in items]
    if isinstance(text, Pass):
        return [text]
    if not isinstance(text, (list, tuple)):
        raise PipelineSpecError(
            f"a pipeline is a spec string such as 'prune-heads{{amount=0.5}},dce', a list of "
            f"specs or a list of passes, not {type(text).__name__}"
        )
    passes: list[Pass] = []
    for i, item in enumerate(text):
        if isinstance(item, Pass):
            passes.append(item)
        elif isinstance(item, str):
            passes.extend(parse_pipeline(item))
        else:
            raise PipelineSpecError(
                f"item {i} of the pipeline is a {type(item).__name__}; give pass specs (strings "
                "such as 'dce') or pass instances (e.g. optc.passes.registry.get_pass('dce')())"
            )
    return passes


def task_pipeline(spec: str | Sequence[str | Pass], data: str | None,
                  task: str | None) -> list[Pass]:
    """The passes of ``spec`` with ``data`` and ``task`` filled in where a pass takes them and
    the spec left them out (a pipeline run on a task model, e.g. after ``optc specialize``)."""
    passes = []
    for p in parse_pipeline(spec):
        fields = {f.name for f in dataclasses.fields(p)}
        changes: dict[str, Any] = {}
        if "data" in fields and p.data is None and data is not None:
            changes["data"] = data
        if "task" in fields and p.task is None and task:
            changes["task"] = task
        passes.append(dataclasses.replace(p, **changes) if changes else p)
    return passes


def format_pipeline(passes: list[Pass]) -> str:
    """The spec that :func:`parse_pipeline` turns back into ``passes``."""
    return ",".join(format_pass(p) for p in passes)
