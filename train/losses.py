"""Distillation losses: soft targets from a teacher, hidden-state matching, and layer maps.

- :func:`soft_target_loss`: ``KL(teacher/T || student/T) * T^2`` on classification logits
  (Hinton et al.), the mean over start and end logits for extractive QA (padding never
  counts), the squared error to the teacher's score for regression, and for the label-free
  embedding task (``embedding``) the task's own loss, ``1 - cosine`` of the student's pooled
  embedding to the teacher's (:func:`embedding_target_loss`).
- :func:`hidden_state_loss`: the mean squared error between mapped student and teacher
  layer outputs over real (unpadded) tokens.
- :func:`layer_map`: which teacher layer each student layer imitates. Layers carry a stable
  id (the ``layer`` attribute of their attention / linear nodes, their index at capture)
  when a frontend or pass records it; then a student layer is matched with the teacher
  layer of the same id, so the map follows dropped layers. Otherwise the student's layers
  are spread evenly over the teacher's (the last with the last).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from optc.errors import InputError
from optc.ir.analysis import Layer, analyze
from optc.ir.core import Module
from optc.tasks import DEFAULT_POOLING, Pooling, Task, declared_pooling
from optc.tasks.task import model_output

__all__ = ["soft_target_loss", "embedding_target_loss", "embedding_pooling",
           "hidden_state_loss", "layer_map", "layer_ids", "parse_layer_map"]


def embedding_pooling(task: Task, *modules: Module) -> Pooling:
    """The pooling that distillation on an embedding task compares the two models' embeddings
    with: the task's ``pooling=`` option, else the first of ``modules`` (student, teacher)
    that declares one (its recorded embedding task's, else its source's sentence-transformers
    directory's), else mean."""
    if task.pooling is not None:
        return task.pooling
    for module in modules:
        found = declared_pooling(module.meta)
        if found is not None:
            return found
    return DEFAULT_POOLING


def embedding_target_loss(task: Task, student: Any, teacher: Any,
                          attention_mask: torch.Tensor | None,
                          pooling: Pooling | None = None) -> torch.Tensor:
    """The label-free embedding task's loss of a batch (mean): both models' token states
    (``last_hidden_state``) pooled with the attention mask by ``task.pooling``, else
    ``pooling`` (the model's own), else mean, then ``task.loss``: ``1 - cosine`` of each
    text's student embedding to its teacher embedding.

    Why 1 - cosine alone: every embedding metric (the task's mean cosine and top-10 neighbour
    agreement, STS zero-shot Spearman) is a function of cosines, so the loss is the complement
    of the metric the validation split selects on. sentence-transformers' distillation
    objective, the MSE of the embeddings, is the same up to a factor for the models that
    normalize (``||s - t||^2 = 2 (1 - cos)`` for unit vectors: MiniLM, mpnet) and otherwise
    also spends the student's capacity on the norm, which no metric reads."""
    if attention_mask is None:
        raise InputError(f"task '{task.name}' pools token states with the attention mask: "
                         "give attention_mask")
    chosen = task.pooling or pooling or DEFAULT_POOLING
    mask = attention_mask.to(model_output(student, "last_hidden_state").device)
    s = chosen(model_output(student, "last_hidden_state"), mask)
    with torch.no_grad():
        t = chosen(model_output(teacher, "last_hidden_state").detach(), mask)
    if s.shape != t.shape:
        raise InputError(f"student embeddings {tuple(s.shape)} and teacher embeddings "
                         f"{tuple(t.shape)} differ: distill from a teacher of the same width")
    return task.loss({"embeddings": s}, t)


def soft_target_loss(task: Task, student: Any, teacher: Any, temperature: float = 2.0,
                     attention_mask: torch.Tensor | None = None,
                     pooling: Pooling | None = None) -> torch.Tensor:
    """The soft-target loss of ``student`` outputs against ``teacher`` outputs (mean over the
    batch); ``pooling``: the label-free embedding task's (see :func:`embedding_target_loss`;
    ``temperature`` does not apply to it)."""
    if temperature <= 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    if task.label_free:
        return embedding_target_loss(task, student, teacher, attention_mask, pooling)
    if task.kind == "regression":
        s = model_output(student, "logits").float().reshape(-1)
        t = model_output(teacher, "logits").float().reshape(-1)
        return F.mse_loss(s, t.detach())
    names = ("start_logits", "end_logits") if task.kind == "extractive-qa" else ("logits",)
    total = torch.zeros(())
    for name in names:
        s = model_output(student, name).float()
        t = model_output(teacher, name).float().detach()
        if s.shape != t.shape:
            raise InputError(f"student {name} {tuple(s.shape)} and teacher {name} "
                             f"{tuple(t.shape)} differ: the two heads must match")
        if task.kind == "extractive-qa" and attention_mask is not None:
            pad = attention_mask.to(s.device) == 0
            s = s.masked_fill(pad, -1e4)
            t = t.masked_fill(pad, -1e4)
        kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                      log_target=True, reduction="batchmean")
        total = total + kl * temperature ** 2
    return total / len(names)


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of paired ``[batch, seq, hidden]`` states over real tokens,
    averaged over the pairs."""
    if not student:
        return torch.zeros(())
    total = torch.zeros(())
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise InputError(f"student hidden states {tuple(s.shape)} and teacher hidden states "
                             f"{tuple(t.shape)} differ: hidden-state matching needs the same "
                             "hidden size")
        err = (s.float() - t.float().detach()).pow(2).mean(-1)
        if attention_mask is not None:
            mask = attention_mask.to(err.dtype)
            err = (err * mask).sum() / mask.sum().clamp(min=1)
        else:
            err = err.mean()
        total = total + err
    return total / len(student)


def _layer_id(layer: Layer) -> int | None:
    for node in (layer.attention and layer.attention.node, layer.attention and layer.attention.query,
                 layer.ffn and layer.ffn.up):
        value = node.attr("layer") if node is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def layer_ids(module: Module) -> list[int | None]:
    """The stable id of each layer of ``module`` (None where no node records one)."""
    return [_layer_id(layer) for layer in analyze(module).layers]


def parse_layer_map(text: str) -> list[tuple[int, int]]:
    """``"0:1,1:3"`` -> [(0, 1), (1, 3)] (student layer : teacher layer)."""
    pairs = []
    for item in text.split(","):
        try:
            s, t = item.split(":")
            pairs.append((int(s), int(t)))
        except ValueError:
            raise InputError(f"bad layer map {text!r}: write student:teacher pairs, "
                             "e.g. 0:1,1:3, or auto") from None
    return pairs


def layer_map(student: Module, teacher: Module,
              spec: str | Sequence[tuple[int, int]] = "auto") -> list[tuple[int, int]]:
    """(student layer index, teacher layer index) pairs for hidden-state matching."""
    s_ids, t_ids = layer_ids(student), layer_ids(teacher)
    ns, nt = len(s_ids), len(t_ids)
    if ns == 0 or nt == 0:
        raise InputError("hidden-state distillation needs transformer layers in both the "
                         f"student ({ns}) and the teacher ({nt})")
    if spec != "auto":
        pairs = parse_layer_map(spec) if isinstance(spec, str) else [tuple(p) for p in spec]
        bad = [(s, t) for s, t in pairs if not (0 <= s < ns and 0 <= t < nt)]
        if bad:
            raise InputError(f"layer map pair {bad[0][0]}:{bad[0][1]} is out of range: the "
                             f"student has layers 0..{ns - 1}, the teacher 0..{nt - 1}")
        return [(int(s), int(t)) for s, t in pairs]
    if None not in s_ids and None not in t_ids:
        where = {lid: i for i, lid in enumerate(t_ids)}
        pairs = [(i, where[lid]) for i, lid in enumerate(s_ids) if lid in where]
        if pairs:
            return pairs
    return [(i, max(0, round((i + 1) * nt / ns) - 1)) for i in range(ns)]
