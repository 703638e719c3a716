"""Task heads in the IR: what a bare encoder needs to be trained and scored on a task.

:func:`add_task_head` gives a module the outputs a task reads, as Hugging Face's heads do:

- classification / regression: ``logits = linear(pooled, [num_labels, hidden])`` where
  ``pooled`` is the ``pooler_output`` when the module has one, else the first token of
  ``last_hidden_state``;
- extractive QA: ``linear(last_hidden_state, [2, hidden])`` split into ``start_logits`` and
  ``end_logits``.

New weights are drawn from a seeded normal(0, 0.02), biases are zero (Hugging Face's
initialization). The module's outputs become the head's outputs, and ``meta["task"]``
records the task (name, kind, labels, metric). A module that already has a fitting head is
left as it is; a head that does not fit the task (3 labels for a 2-label task, a QA head for
a classification task) is an :class:`InputError`.
"""

from __future__ import annotations

from typing import Any

import torch

from optc.errors import InputError
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module, Value
from optc.ir.types import TensorType
from optc.tasks import Task, get_task

__all__ = ["add_task_head", "has_task_head", "task_meta", "task_from_meta", "HEAD_INIT_STD"]

HEAD_INIT_STD = 0.02
"""Standard deviation of new head weights (BERT's ``initializer_range``)."""

_QA_OUTPUTS = ("start_logits", "end_logits")


def _output(module: Module, name: str) -> Value | None:
    value = module.graph.outputs.get(name)
    return value if isinstance(value, Value) else None


def _check_existing(module: Module, task: Task) -> bool:
    """True when the module has the task's head; InputError when it has a different one."""
    logits = _output(module, "logits")
    qa = all(_output(module, n) is not None for n in _QA_OUTPUTS)
    if task.kind == "extractive-qa":
        if qa:
            return True
        if logits is not None:
            raise InputError(f"task '{task.name}' (extractive QA) needs start_logits/end_logits, "
                             f"but module @{module.name} has a classification head (logits): "
                             "start from the encoder without its head")
        return False
    if logits is None:
        if qa:
            raise InputError(f"task '{task.name}' ({task.kind}) needs logits, but module "
                             f"@{module.name} has a question-answering head: start from the "
                             "encoder without its head")
        return False
    shape = logits.tensor_type.shape
    width = shape[-1] if shape else None
    if len(shape) != 2 or width != task.num_labels:
        what = f"{width} labels" if len(shape) == 2 else f"logits of shape {list(shape)}"
        raise InputError(f"module @{module.name} has a head with {what} but task '{task.name}' "
                         f"needs {task.num_labels}: start from the encoder without its head, or "
                         "pick the task the model was made for")
    return True


def has_task_head(module: Module, task: Task | str) -> bool:
    """Whether ``module`` already has the outputs ``task`` reads (InputError if it has a head
    that does not fit)."""
    return _check_existing(module, get_task(task) if isinstance(task, str) else task)


def task_meta(task: Task, spec: str | None = None) -> dict[str, Any]:
    """What ``meta["task"]`` records about ``task`` (JSON)."""
    meta: dict[str, Any] = {
        "name": task.name,
        "kind": task.kind,
        "num_labels": task.num_labels,
        "labels": list(task.label_names),
        "metric": task.main_metric,
        "metrics": list(task.metrics),
    }
    if spec is not None:
        meta["spec"] = spec
    return meta


def task_from_meta(meta: dict[str, Any]) -> Task | None:
    """The task recorded in a module's ``meta`` (``meta["task"]``), or None."""
    recorded = meta.get("task")
    if not isinstance(recorded, dict) or not recorded.get("name"):
        return None
    if recorded.get("spec"):
        return get_task(str(recorded["spec"]))
    name = str(recorded["name"])
    if name == "text-classification":
        if recorded.get("kind") == "regression":
            return get_task(name, regression="true")
        labels = recorded.get("labels") or None
        return get_task(name, labels=",".join(labels)) if labels else get_task(name)
    return get_task(name)


def _new_linear(module: Module, prefix: str, rows: int, width: int, dtype: torch.dtype,
                seed: int) -> tuple[Value, Value]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(rows, width).normal_(0.0, HEAD_INIT_STD, generator=generator).to(dtype)
    w = module.add_param(module.unique_param_name(f"{prefix}.weight"), weight)
    b = module.add_param(module.unique_param_name(f"{prefix}.bias"), torch.zeros(rows, dtype=dtype))
    return w, b


def add_task_head(module: Module, task: Task | str, seed: int = 0,
                  spec: str | None = None) -> bool:
    """Give ``module`` the head ``task`` needs, in place; returns whether one was added.

    Always records the task in ``module.meta["task"]`` (``spec``: the task spec to record,
    for generic tasks built from options). Raises :class:`InputError` when the module has a
    head that does not fit, or no ``last_hidden_state`` to put one on.
    """
    task = get_task(task) if isinstance(task, str) else task
    if _check_existing(module, task):
        module.meta["task"] = task_meta(task, spec)
        return False
    hidden = _output(module, "last_hidden_state")
    if hidden is None or hidden.tensor_type.rank != 3:
        raise InputError(f"cannot add a {task.kind} head to module @{module.name}: it has no "
                         "last_hidden_state output of shape [batch, seq, hidden] (outputs: "
                         f"{', '.join(module.graph.outputs)})")
    htype = hidden.tensor_type
    width = htype.shape[-1]
    if not isinstance(width, int) or not htype.dtype.is_floating_point:
        raise InputError(f"cannot add a head to module @{module.name}: last_hidden_state is "
                         f"{htype}, not a float tensor with a fixed hidden size")
    graph = module.graph
    if task.kind == "extractive-qa":
        w, b = _new_linear(module, "qa_outputs", 2, width, htype.dtype, seed)
        lin = graph.create_node("linear", (hidden, w, b), {},
                                [TensorType(htype.dtype, htype.shape[:-1] + (2,))],
                                names="qa_logits")
        ends = []
        for k, name in enumerate(_QA_OUTPUTS):
            ends.append(graph.create_node("aten.select.int", (lin.output, -1, k), {},
                                          [TensorType(htype.dtype, htype.shape[:-1])], names=name))
        graph.set_outputs({name: node.output for name, node in zip(_QA_OUTPUTS, ends, strict=True)})
    else:
        pooled = _output(module, "pooler_output")
        if pooled is None or pooled.tensor_type.shape != (htype.shape[0], width):
            first = graph.create_node("aten.select.int", (hidden, 1, 0), {},
                                      [TensorType(htype.dtype, (htype.shape[0], width))],
                                      names="first_token")
            pooled = first.output
        w, b = _new_linear(module, "classifier", task.num_labels, width, htype.dtype, seed)
        lin = graph.create_node("linear", (pooled, w, b), {},
                                [TensorType(htype.dtype, (htype.shape[0], task.num_labels))],
                                names="logits")
        graph.set_outputs({"logits": lin.output})
    eliminate_dead_code(module)
    module.meta["task"] = task_meta(task, spec)
    return True
