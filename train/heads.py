"""Task heads in the IR: what a bare encoder needs to be trained and scored on a task.

:func:`add_task_head` gives a module the outputs a task reads, as Hugging Face's heads do:

- classification / regression: ``logits = linear(pooled, [num_labels, hidden])`` where
  ``pooled`` is chosen by ``pooling`` (:data:`POOLINGS`): ``pooler`` the ``pooler_output``
  (BERT's dense + tanh on the first token), ``cls`` the first token of ``last_hidden_state``,
  ``mean`` the attention-masked mean of ``last_hidden_state`` over the tokens (what
  sentence-transformers encoders such as all-MiniLM-L6-v2 were trained with), ``auto`` (the
  default) the pooler when the module has one, else the first token;
- extractive QA: ``linear(last_hidden_state, [2, hidden])`` split into ``start_logits`` and
  ``end_logits``.

New weights are drawn from a seeded normal(0, 0.02), biases are zero (Hugging Face's
initialization). The module's outputs become the head's outputs, and ``meta["task"]``
records the task (name, kind, labels, metric) and, for classification / regression, the
pooling the head reads (``"pooling": "mean"``; ``auto`` is recorded as what it chose). A
module that already has a fitting head is left as it is; a head that does not fit the task
(3 labels for a 2-label task, a QA head for a classification task) is an :class:`InputError`.
"""

from __future__ import annotations

from typing import Any

import torch

from optc.errors import InputError
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module, Value
from optc.ir.types import TensorType
from optc.tasks import Task, get_task
from optc.tasks.embedding import embedding_task_spec

__all__ = ["add_task_head", "has_task_head", "has_token_states", "task_meta", "task_spec", "task_from_meta",
           "check_pooling",
           "trained_max_length", "selection_split", "selection_warning", "HEAD_INIT_STD",
           "POOLINGS"]

HEAD_INIT_STD = 0.02
"""Standard deviation of new head weights (BERT's ``initializer_range``)."""

_QA_OUTPUTS = ("start_logits", "end_logits")

POOLINGS = ("auto", "pooler", "cls", "mean")
"""What a classification / regression head reads: ``auto`` (the pooler output when the module
has one, else the first token), ``pooler``, ``cls`` (first token) or ``mean`` (masked mean)."""


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`, else :class:`InputError` listing them."""
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling '{pooling}': use one of {', '.join(POOLINGS)}")
    return pooling


def _output(module: Module, name: str) -> Value | None:
    value = module.graph.outputs.get(name)
    return value if isinstance(value, Value) else None


def _check_existing(module: Module, task: Task, pooling: str = "auto") -> bool:
    """True when the module has the task's head; InputError when it has a different one, or
    one whose recorded pooling is not ``pooling``; InputError for a task with no head to train
    (the embedding kinds: training, searches and accuracy-aware passes all check here), but
    for a label-free task (``embedding``), whose "head" is the base model's token states:
    distillation trains on it."""
    if task.label_free:
        return has_token_states(module, task, pooling)
    task.check_trainable("training, searches and accuracy-aware passes")
    check_pooling(pooling)
    logits = _output(module, "logits")
    qa = all(_output(module, n) is not None for n in _QA_OUTPUTS)
    if task.kind == "extractive-qa":
        if pooling != "auto":
            raise InputError(f"pooling={pooling} applies to classification and regression heads; "
                             f"task '{task.name}' (extractive QA) scores every token: leave "
                             "pooling at auto")
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
    recorded = _recorded_pooling(module)
    if pooling != "auto" and recorded is not None and pooling != recorded:
        raise InputError(f"module @{module.name} already has a head on {recorded} pooling "
                         f"(meta task.pooling), not {pooling}: leave pooling at auto (or "
                         f"{recorded}) to train this head, or start from the encoder without "
                         f"its head for a {pooling}-pooled one")
    return True


def has_token_states(module: Module, task: Task, pooling: str = "auto") -> bool:
    """An embedding task reads the module's ``last_hidden_state`` [batch, seq, hidden] (pooled
    by the task's own ``pooling=`` option, not by a head's): True, else InputError."""
    if pooling != "auto":
        raise InputError(f"pooling={pooling} chooses what a classification head reads; task "
                         f"'{task.name}' pools the token states itself: leave pooling at auto and "
                         f"give the task its pooling ({task.name}{{...,pooling=cls}})")
    hidden = _output(module, "last_hidden_state")
    if hidden is None or hidden.tensor_type.rank != 3:
        raise InputError(f"task '{task.name}' pools the token states (last_hidden_state "
                         f"[batch, seq, hidden]), but module @{module.name} outputs "
                         f"{', '.join(module.graph.outputs)}: start from the encoder without "
                         "its task head")
    return True


def _recorded_pooling(module: Module) -> str | None:
    recorded = module.meta.get("task")
    pooling = recorded.get("pooling") if isinstance(recorded, dict) else None
    return pooling if pooling in POOLINGS and pooling != "auto" else None


def has_task_head(module: Module, task: Task | str, pooling: str = "auto") -> bool:
    """Whether ``module`` already has the outputs ``task`` reads (InputError if it has a head
    that does not fit, or ``pooling`` conflicts with the pooling ``meta["task"]`` records:
    the checks :func:`add_task_head` makes, without changing the module)."""
    return _check_existing(module, get_task(task) if isinstance(task, str) else task, pooling)


def task_meta(task: Task, spec: str | None = None,
              pooling: str | None = None) -> dict[str, Any]:
    """What ``meta["task"]`` records about ``task`` (JSON); ``spec``: the spec to record when
    it rebuilds ``task`` (else the one :func:`task_spec` finds); ``pooling``: what the head
    reads."""
    spec = task_spec(task, spec)
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
    if pooling is not None:
        meta["pooling"] = pooling
    return meta


def _rebuilds(spec: str, task: Task) -> bool:
    try:
        return get_task(spec) == task
    except InputError:
        return False


def _text_classification_spec(task: Task) -> str:
    """The ``text-classification{...}`` spec of a task built by that factory (defaults left out)."""
    options = []
    if task.table is not None and not task.table.header:
        options.append("header=false")  # columns by number
    if task.text_columns and task.text_columns[0] != "text":
        options.append(f"text_column={task.text_columns[0]}")
    if len(task.text_columns) > 1:
        options.append(f"pair_column={task.text_columns[1]}")
    if task.label_column not in (None, "label"):
        options.append(f"label_column={task.label_column}")
    if task.kind == "regression":
        options.append("regression=true")
    elif not task.numbers_are_indices:  # the classes were named
        options.append(f"labels={','.join(task.label_names)}")
    elif task.num_labels != 2:
        options.append(f"num_labels={task.num_labels}")
    default = ("pearson", "spearman") if task.kind == "regression" else ("accuracy",)
    if task.metrics != default:
        options.append(f"metrics={','.join(task.metrics)}")
    if task.main_metric != task.metrics[0]:
        options.append(f"main_metric={task.main_metric}")
    return f"{task.name}{{{','.join(options)}}}" if options else task.name


def task_spec(task: Task, given: str | None = None) -> str | None:
    """The spec string that ``get_task`` rebuilds ``task`` from (equal in every field): ``given``
    when it does, else the task's name (a registered task) or, for ``text-classification``,
    the name with the options that differ from the defaults
    (``text-classification{text_column=review,labels=neg,pos}``); None when neither rebuilds
    it (a task built by hand, not from the registry)."""
    candidates = [given] if given else []
    candidates.append(task.name)
    if task.name == "text-classification":
        candidates.append(_text_classification_spec(task))
    embedding = embedding_task_spec(task)  # embedding tasks: their data, columns, pooling
    if embedding is not None:
        candidates.append(embedding)
    return next((c for c in candidates if _rebuilds(c, task)), None)


def task_from_meta(meta: dict[str, Any]) -> Task | None:
    """The task recorded in a module's ``meta`` (``meta["task"]``), or None: rebuilt from its
    ``spec`` (every option: columns, labels, metrics) when recorded, else from its name and
    labels (artifacts written before the spec was recorded)."""
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


def trained_max_length(meta: dict[str, Any]) -> int | None:
    """The token limit the model was fine-tuned with (``meta["task"]["max_length"]``), or None:
    what evaluation and searches use when not told otherwise."""
    recorded = meta.get("task")
    value = recorded.get("max_length") if isinstance(recorded, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def selection_split(meta: dict[str, Any]) -> str | None:
    """The split fine-tuning chose the model's best weights on (``meta["task"]["eval"]["split"]``:
    ``val``, ``dev``), or None when nothing was chosen or nothing is recorded."""
    recorded = meta.get("task")
    chosen = recorded.get("eval") if isinstance(recorded, dict) else None
    split = chosen.get("split") if isinstance(chosen, dict) else None
    return split if isinstance(split, str) else None


def selection_warning(meta: dict[str, Any], name: str, split: str = "dev") -> str | None:
    """One line when the model ``name`` had its weights chosen on ``split``, the split being
    reported (its figure there is then optimistic: selection saw it); else None."""
    if selection_split(meta) != split:
        return None
    fix = ": fine-tune with the default --eval-split val to keep dev for reporting" \
        if split == "dev" else ""
    return (f"{name}: checkpoint chosen on the split being reported ({split}; fine-tuned with "
            f"--eval-split {split}), so its {split} figures are optimistic{fix}")


def _new_linear(module: Module, prefix: str, rows: int, width: int, dtype: torch.dtype,
                seed: int) -> tuple[Value, Value]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(rows, width).normal_(0.0, HEAD_INIT_STD, generator=generator).to(dtype)
    w = module.add_param(module.unique_param_name(f"{prefix}.weight"), weight)
    b = module.add_param(module.unique_param_name(f"{prefix}.bias"), torch.zeros(rows, dtype=dtype))
    return w, b


def add_task_head(module: Module, task: Task | str, seed: int = 0,
                  spec: str | None = None, pooling: str = "auto") -> bool:
    """Give ``module`` the head ``task`` needs, in place; returns whether one was added.

    ``pooling`` (classification / regression; :data:`POOLINGS`): what the head reads.
    ``pooler``: the ``pooler_output`` (InputError when the module has none); ``cls``: the first
    token of ``last_hidden_state``; ``mean``: ``sum(h * mask[..., None], 1) /
    clamp(sum(mask, 1), min=1)`` over ``last_hidden_state`` with the ``attention_mask`` graph
    input, so padded tokens do not count (a module without an ``attention_mask`` input
    averages over all tokens); ``auto``: the pooler when the module has one, else ``cls``.
    Extractive QA reads every token: any pooling but ``auto`` is an InputError there.

    A module that already has the task's head keeps it and ``pooling`` is ignored, unless
    ``meta["task"]`` records a different pooling for that head (then InputError: leave
    pooling at auto, or start from the encoder without its head).

    Always records the task in ``module.meta["task"]``, with its spec (``spec`` when given and
    it rebuilds the task, else the one :func:`task_spec` finds; an existing record's spec is
    kept) and the head's pooling (``auto`` resolved).
    Raises :class:`InputError` when the module has a head that does not fit, or no
    ``last_hidden_state`` to put one on; the module is unchanged then.
    """
    task = get_task(task) if isinstance(task, str) else task
    if _check_existing(module, task, pooling):
        recorded = module.meta.get("task")
        kept = recorded.get("spec") if isinstance(recorded, dict) else None
        module.meta["task"] = task_meta(task, spec or kept, _recorded_pooling(module))
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
        chosen = None
    else:
        pooled, chosen = _pooled(module, hidden, pooling)
        w, b = _new_linear(module, "classifier", task.num_labels, width, htype.dtype, seed)
        lin = graph.create_node("linear", (pooled, w, b), {},
                                [TensorType(htype.dtype, (htype.shape[0], task.num_labels))],
                                names="logits")
        graph.set_outputs({"logits": lin.output})
    eliminate_dead_code(module)
    module.meta["task"] = task_meta(task, spec, chosen)
    return True


def _pooler_output(module: Module, hidden: Value) -> Value | None:
    """The module's ``pooler_output`` when it is one vector per example, else None."""
    pooled = _output(module, "pooler_output")
    htype = hidden.tensor_type
    if pooled is None or pooled.tensor_type.shape != (htype.shape[0], htype.shape[-1]):
        return None
    return pooled


def _pooled(module: Module, hidden: Value, pooling: str) -> tuple[Value, str]:
    """The [batch, hidden] value a classification head reads, and the pooling it is (``auto``
    resolved). Checks everything before creating a node, so a refusal leaves the IR as it was."""
    pooler = _pooler_output(module, hidden)
    if pooling == "pooler" and pooler is None:
        raise InputError(f"pooling=pooler needs a pooler_output of shape [batch, hidden], but "
                         f"module @{module.name} has none (outputs: "
                         f"{', '.join(module.graph.outputs)}): use pooling=cls or pooling=mean")
    if pooling in ("auto", "pooler") and pooler is not None:
        return pooler, "pooler"
    if pooling == "mean":
        return _mean_pooled(module, hidden), "mean"
    htype = hidden.tensor_type
    first = module.graph.create_node("aten.select.int", (hidden, 1, 0), {},
                                     [TensorType(htype.dtype, (htype.shape[0], htype.shape[-1]))],
                                     names="first_token")
    return first.output, "cls"


def _mean_pooled(module: Module, hidden: Value) -> Value:
    """``sum(hidden * mask[..., None], 1) / clamp(sum(mask, 1), min=1)`` as ATen nodes, with
    the ``attention_mask`` graph input cast to the hidden dtype; the plain mean over the
    tokens when the module takes no attention mask."""
    graph = module.graph
    htype = hidden.tensor_type
    batch, seq, width = htype.shape
    dtype = htype.dtype
    pooled_type = TensorType(dtype, (batch, width))
    mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
    if mask is None:
        return graph.create_node("aten.mean.dim", (hidden, [1]), {}, [pooled_type],
                                 names="mean_pooled").output
    mtype = mask.tensor_type
    if mtype.rank != 2:
        raise InputError(f"pooling=mean reads attention_mask as [batch, seq], but module "
                         f"@{module.name} takes {mtype}: use pooling=cls or pooling=pooler")
    weights = graph.create_node("aten.to.dtype", (mask, dtype), {},
                                [TensorType(dtype, (batch, seq))], names="token_mask")
    weights3 = graph.create_node("aten.unsqueeze.default", (weights.output, -1), {},
                                 [TensorType(dtype, (batch, seq, 1))], names="token_mask_3d")
    masked = graph.create_node("aten.mul.Tensor", (hidden, weights3.output), {},
                               [TensorType(dtype, (batch, seq, width))], names="masked_hidden")
    total = graph.create_node("aten.sum.dim_IntList", (masked.output, [1]), {}, [pooled_type],
                              names="token_sum")
    count = graph.create_node("aten.sum.dim_IntList", (weights3.output, [1]), {},
                              [TensorType(dtype, (batch, 1))], names="token_count")
    count = graph.create_node("aten.clamp_min.default", (count.output, 1.0), {},
                              [TensorType(dtype, (batch, 1))], names="token_count_min1")
    return graph.create_node("aten.div.Tensor", (total.output, count.output), {}, [pooled_type],
                             names="mean_pooled").output
