"""Quantization-aware training for ``quantize{mode=qat}`` (Q8BERT, as in Prune Once for All).

The module trains through :func:`optc.train.distill` with two extension points
(:mod:`optc.train.hooks`):

- ``edit``: in the training copy of the IR, each target linear reads its weight through a
  ``fake_quant{scheme=symmetric, axis=0}`` node (per output channel, the weight quantization
  ``quantize`` applies at the end) and, with activations, its input through a
  ``fake_quant{scheme=affine}`` node whose scale and zero point are new graph inputs (one pair
  per distinct input value); the raw input also becomes an extra output ``qat.input.<i>``.
  Gradients pass straight through the rounding (and stop where an activation is clipped).
- :class:`QATHooks`: the ranges start as the min/max of the inputs on a few training batches
  (before the first step), then follow a moving average of each training batch's min/max,
  read from the extra outputs by a forward hook in train mode; the scale and zero point fed
  to the graph inputs are refreshed after every forward.

Sparse weights keep their zeros (the training loop's masks; ``fake_quant`` maps 0 to 0). At
the end :func:`train_qat` returns the trained ranges as static activation parameters (or None
without activations); ``quantize`` then writes the same int8 IR as post-training quantization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from optc.errors import InputError
from optc.ir.analysis import Structure
from optc.ir.core import Module, Parameter, Value
from optc.ir.types import TensorType
from optc.passes.context import PassContext
from optc.passes.finetune import pass_task, pass_tokenizer, report_stats, train_options
from optc.passes.support.calibration import (
    RangeObserver,
    affine_qparams,
    linears_of,
    observe_inputs,
)
from optc.tasks import batches, model_input_names
from optc.train import TrainHooks, distill, has_task_head
from optc.train.distributed import global_extrema

if TYPE_CHECKING:
    from optc.train.module import TrainableModule

__all__ = ["QATHooks", "train_qat", "insert_fake_quant", "QAT_OUTPUT"]

QAT_OUTPUT = "qat.input."
"""Prefix of the extra outputs that expose each fake-quantized activation's raw value."""


class QATHooks(TrainHooks):
    """Activation ranges during QAT: moving averages of each training batch's min/max."""

    def __init__(self, observers: list[RangeObserver]) -> None:
        self.observers = observers
        """One per fake-quantized activation, in the order of the ``qat_scale_<i>`` inputs."""
        self._handle: Any = None

    def inputs(self, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The graph inputs carrying the current scale and zero point of each activation
        (on ``device``, the trainable module's)."""
        out = {}
        for i, obs in enumerate(self.observers):
            scale, zp = obs.qparams()
            out[f"qat_scale_{i}"] = scale.to(device)
            out[f"qat_zero_point_{i}"] = zp.to(device, torch.float32)
        return out

    def start(self, model: TrainableModule, total_steps: int) -> None:
        for obs in self.observers:
            obs.kind = "moving_average"  # min/max seeded the range; from here on: EMA
        model.extra_inputs = {**model.extra_inputs, **self.inputs(model.device)}
        self._handle = model.register_forward_hook(self._observe)

    def _observe(self, model: Any, args: Any, outputs: dict[str, torch.Tensor]) -> None:
        if not model.training:
            return
        for i, obs in enumerate(self.observers):
            # [min, max] over every process's rows: what one process sees on the global batch
            obs.observe(global_extrema(outputs[f"{QAT_OUTPUT}{i}"]))
        model.extra_inputs = {**model.extra_inputs, **self.inputs(model.device)}

    def finish(self, model: TrainableModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def state_dict(self) -> dict[str, Any]:
        """Each observer's kind, range and batch count."""
        return {"observers": [{"kind": o.kind, "lo": o.lo, "hi": o.hi, "batches": o.batches}
                              for o in self.observers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["observers"]
        if len(saved) != len(self.observers):
            raise InputError(f"resume: the checkpoint has {len(saved)} activation ranges, this "
                             f"run {len(self.observers)}: resume with the interrupted run's options")
        for obs, s in zip(self.observers, saved, strict=True):
            obs.kind, obs.lo, obs.hi, obs.batches = s["kind"], s["lo"], s["hi"], int(s["batches"])


def insert_fake_quant(work: Module, names: list[str], bits: int, activations: bool) -> list[str]:
    """Rewrite ``work`` (a training copy): fake-quantize the weight of each linear whose weight
    is in ``names`` and, with ``activations``, its input. Returns the weight names whose
    inputs share each activation (``i``-th entry: the first linear of ``qat_scale_<i>``)."""
    graph = work.graph
    wanted = set(names)
    seen: dict[int, Value] = {}
    firsts: list[str] = []
    for node in list(graph):
        w = node.arg(1)
        if node.op != "linear" or not isinstance(w, Parameter) or w.name not in wanted:
            continue
        wq = graph.create_node("fake_quant", (w,), {"scheme": "symmetric", "bits": bits,
                                                    "axis": 0},
                               [w.type], names=w.name.replace(".", "_") + "_fq", before=node)
        node.replace_input(w, wq.outputs[0])
        x = node.args[0]
        if not activations or not isinstance(x, Value):
            continue
        if id(x) not in seen:
            i = len(firsts)
            scalar = TensorType(torch.float32, ())
            scale = graph.add_input(f"qat_scale_{i}", scalar)
            zp = graph.add_input(f"qat_zero_point_{i}", scalar)
            xq = graph.create_node("fake_quant", (x, scale, zp), {"scheme": "affine", "bits": 8},
                                   [x.type], names=f"qat_input_{i}", before=node)
            graph.set_output(f"{QAT_OUTPUT}{i}", x)
            seen[id(x)] = xq.outputs[0]
            firsts.append(w.name)
        node.replace_input(x, seen[id(x)])
    return firsts


def _seed_ranges(p: Any, module: Module, names: list[str], task: Any,
                 tokenizer: Any) -> tuple[list[RangeObserver], dict[str, int]]:
    """Min/max observers of each distinct target input on ``p.samples`` training examples,
    and the observer index of each target weight."""
    nodes = linears_of(module, names)
    examples = task.read("train", p.data, val_size=0, limit=p.samples)
    graph_inputs = [v.name for v in module.graph.inputs]
    wanted = [n for n in model_input_names(tokenizer) if n in graph_inputs]
    feeds = [{k: b[k] for k in wanted}
             for b in batches(examples, tokenizer, p.batch_size, p.max_length or 128, wanted)]
    seen = observe_inputs(module, nodes, feeds,
                          lambda: RangeObserver("minmax", p.averaging))
    order: dict[int, int] = {}
    index: dict[str, int] = {}
    for node in nodes:
        key = id(node.args[0])
        index[node.args[1].name] = order.setdefault(key, len(order))
    observers = [seen[k] for k in sorted(order, key=order.__getitem__)]
    return observers, index


def train_qat(p: Any, module: Module, names: list[str], ctx: PassContext
              ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]] | None, dict[str, Any]]:
    """Train ``module`` (in place, float weights) with fake quantization of the linears whose
    weights are ``names``, distilling from ``p``'s teacher; ``p`` is the ``quantize`` pass.
    Returns the static activation parameters by weight name (None without activations) and
    the training stats. ``ctx``: the pipeline's context (its input is the default teacher,
    its progress gets each step)."""
    task = pass_task(p, module)
    tokenizer = pass_tokenizer(p, module)
    teacher, origin = p._teacher(module, ctx)
    soft = p.alpha_soft > 0 and has_task_head(teacher, task)
    hidden = p.hidden_mse if p.hidden_mse is not None else (0.0 if soft else 1.0)
    observers: list[RangeObserver] = []
    index: dict[str, int] = {}
    if p.activations:
        observers, index = _seed_ranges(p, module, names, task, tokenizer)
    hooks = QATHooks(observers)

    def edit(work: Module, structure: Structure) -> None:
        insert_fake_quant(work, names, p.bits, p.activations)

    report = distill(module, teacher, task, p.data, tokenizer=tokenizer,
                     temperature=p.temperature, alpha_soft=p.alpha_soft, hidden_mse=hidden,
                     layer_map=p.layer_map, hooks=hooks, edit=edit, progress=ctx.progress,
                     **train_options(p), **ctx.train_options())
    stats = report_stats(report)
    stats.update({"teacher": origin, "soft_targets": soft, "hidden_mse": hidden,
                  "qat_activations": len(observers)})
    if not p.activations:
        return None, stats
    final = [affine_qparams(o.lo or 0.0, o.hi or 0.0) for o in observers]
    return {name: final[i] for name, i in index.items()}, stats
