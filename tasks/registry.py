"""Tasks by name: GLUE tasks, SQuAD, and generic tasks built from options.

``get_task("sst2")`` returns a fixed task; ``get_task("text-classification", labels="neg,pos")``
(or the spec ``"text-classification{labels=neg,pos,text_column=review}"``) builds one from
options. Unknown names and options are :class:`InputError`\\ s that list the valid ones.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from optc.errors import InputError
from optc.tasks.task import Task

__all__ = ["TaskFactory", "register_task", "get_task", "all_tasks", "parse_task_spec",
           "describe_tasks"]

TaskFactory = Callable[..., Task]
"""Builds a task from keyword options."""

_TASKS: dict[str, Task | TaskFactory] = {}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "squad-v2": "squad_v2", "squad2": "squad_v2"}
_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\{(.*)\})?\s*$", re.DOTALL)


def register_task(task: Task | TaskFactory, name: str | None = None,
                  replace: bool = False) -> Task | TaskFactory:
    """Register a :class:`Task`, or a factory building one from keyword options under
    ``name``; refuses to shadow a registered name unless ``replace``. Returns its argument, so
    it works as a decorator on factories (``@register_task`` needs ``name`` for factories:
    ``register_task(factory, "my-task")``)."""
    if isinstance(task, Task):
        key = name or task.name
    elif callable(task):
        key = name or getattr(task, "__name__", "").replace("_", "-")
    else:
        raise InputError(f"register_task takes a Task or a factory, not {type(task).__name__}")
    if not key:
        raise InputError("register_task needs a name for this task")
    if key in _TASKS and not replace:
        raise InputError(f"task '{key}' is already registered: pass replace=True to override it")
    _TASKS[key] = task
    return task


def all_tasks() -> tuple[str, ...]:
    """The registered task names, sorted."""
    return tuple(sorted(_TASKS))


def parse_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name{option=value,...}`` -> (name, options). A comma-separated value
    continues over pieces without ``=``: ``labels=neg,pos,text_column=review`` gives
    ``labels='neg,pos'`` and ``text_column='review'``."""
    match = _SPEC.match(spec)
    if match is None:
        raise InputError(f"bad task spec '{spec}': expected NAME or NAME{{option=value,...}}")
    name, body = match.group(1), match.group(2)
    options: dict[str, str] = {}
    last: str | None = None
    for piece in ([] if not body or not body.strip() else body.split(",")):
        if "=" in piece:
            key, value = piece.split("=", 1)
            key = key.strip()
            if not key or key in options:
                raise InputError(f"bad task spec '{spec}': option '{key}' is "
                                 f"{'repeated' if key else 'unnamed'}")
            options[key] = value.strip()
            last = key
        elif last is not None:
            options[last] += "," + piece.strip()
        else:
            raise InputError(f"bad task spec '{spec}': '{piece.strip()}' is not option=value")
    return name, options


def get_task(name: str, **options: Any) -> Task:
    """The task registered as ``name`` (a spec with ``{options}`` is accepted), built with
    ``options`` when it is a factory."""
    if not isinstance(name, str):
        raise InputError(f"a task name must be a string, not {type(name).__name__}")
    base, spec_options = parse_task_spec(name)
    clash = sorted(set(spec_options) & set(options))
    if clash:
        raise InputError(f"task option {', '.join(clash)} given both in '{name}' and as argument")
    options = {**spec_options, **options}
    key = base if base in _TASKS else _ALIASES.get(base.lower(), base.lower())
    entry = _TASKS.get(key)
    if entry is None:
        raise InputError(f"unknown task '{base}': valid tasks are {', '.join(all_tasks())}")
    if isinstance(entry, Task):
        if options:
            raise InputError(f"task '{key}' takes no options, got {', '.join(sorted(options))}")
        return entry
    accepted = inspect.signature(entry).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InputError(f"task '{key}' has no option {', '.join(unknown)}: valid options "
                             f"are {', '.join(accepted)}")
    return entry(**options)


def describe_tasks() -> list[dict[str, Any]]:
    """Every registered task as a JSON-friendly dict (what ``optc tasks`` prints): name, kind,
    the model head it needs, its description, data files and conventional directory, metrics
    (the main one first) and, for tasks built from options, each option with its default."""
    from optc.tasks.task import HEADS

    described = []
    for name in all_tasks():
        entry = _TASKS[name]
        options: list[dict[str, Any]] = []
        if isinstance(entry, Task):
            task: Task | None = entry
        else:
            for param in inspect.signature(entry).parameters.values():
                if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                    continue
                default = None if param.default is param.empty else param.default
                options.append({"name": param.name, "default": default,
                                "required": param.default is param.empty})
            try:
                task = entry()
            except (InputError, TypeError):
                task = None  # needs options to exist (e.g. its data file)
        doc = (inspect.getdoc(entry) or "").split("\n\n")[0].replace("\n", " ")
        described.append({
            "name": name,
            "kind": task.kind if task else None,
            "head": HEADS.get(task.kind) if task else None,
            "description": (task.description if task and task.description else doc),
            "files": list(task.file_names) if task else [],
            "data": task.data_path if task else None,
            "metrics": ([task.main_metric] + [m for m in task.metrics if m != task.main_metric]
                        if task else []),
            "labels": list(task.label_names) if task and task.label_names else [],
            "options": options,
        })
    return described
