"""Learned structured pruning: hard-concrete L0 gates on heads and FFN neurons, with
distillation, committed physically with the structural passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from optc.errors import PassError, PipelineSpecError
from optc.ir.analysis import Structure, analyze
from optc.ir.core import Module, Parameter
from optc.ir.surgery import slice_conflict
from optc.passes.base import PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.distill import Distill
from optc.passes.finetune import pass_task, pass_tokenizer, report_stats, train_options
from optc.passes.prune_heads import PruneHeads
from optc.passes.prune_neurons import PruneNeurons
from optc.passes.registry import register_pass
from optc.train import distill, has_task_head
from optc.train.gates import L0Gates, SizeModel, encoder_cost, size_model

__all__ = ["L0Prune", "commit_gates", "enforce_target"]

Gate = Literal["heads", "neurons", "layers"]


def _block(structure: Structure, layer_id: int, kind: str) -> Any:
    layer = structure.by_id(layer_id)
    if layer is None:
        raise PassError(f"layer id {layer_id} disappeared while training the L0 gates")
    return layer.attention if kind == "head" else layer.ffn


def enforce_target(size: SizeModel, gates: dict[str, torch.Tensor],
                   scores: dict[str, torch.Tensor], target: float) -> int:
    """Close (set to 0, in place) the open gates with the lowest scores until the size with
    hard gates is at most ``target``; returns how many were closed."""
    def fraction() -> float:
        return float(size.fraction({k: (v > 0).float() for k, v in gates.items()}))

    candidates = sorted((float(scores[name][i]), name, i) for name, z in gates.items()
                        for i in range(len(z)) if z[i] > 0)
    closed = 0
    for _, name, i in candidates:
        if fraction() <= target + 1e-12:
            break
        gates[name][i] = 0.0
        closed += 1
    return closed


@torch.no_grad()
def commit_gates(module: Module, size: SizeModel, gates: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Make ``module`` compute what its gated form computes with the fixed ``gates`` (one
    tensor per group of ``size``, values in [0, 1]): gates below 1 are folded into the
    output-projection / down-projection columns, units whose gate is 0 are removed with
    ``prune-neurons`` and ``prune-heads`` (by stable ids). Returns counts per layer."""
    structure = analyze(module)
    heads: list[tuple[int, int]] = []
    neurons: list[tuple[int, int]] = []
    folded = 0
    removed: dict[str, dict[int, int]] = {"head": {}, "neuron": {}}
    for g in size.groups:
        z = gates[g.input_name].detach().to(torch.float32)
        if z.shape != (g.count,):
            raise PassError(f"gate {g.input_name} has shape {list(z.shape)}, expected [{g.count}]")
        block = _block(structure, g.layer_id, g.kind)
        proj = block.output if g.kind == "head" else block.down
        weight = proj.args[1]
        scale = z.clamp(0, 1)
        fold = (scale > 0) & (scale < 1)
        if bool(fold.any()):
            column = scale.repeat_interleave(g.repeat)
            column = torch.where(column > 0, column, torch.ones_like(column))
            weight.data = weight.data * column.to(weight.data.dtype)
            folded += int(fold.sum())
        ids = block.head_ids if g.kind == "head" else block.neuron_ids
        dead = [(g.layer_id, ids[i]) for i in range(g.count) if scale[i] <= 0]
        removed[g.kind][g.layer_id] = len(dead)
        (heads if g.kind == "head" else neurons).extend(dead)
    for units, make in ((neurons, lambda u: PruneNeurons(neurons=u, ids=True)),
                        (heads, lambda u: PruneHeads(heads=u, ids=True))):
        if not units:
            continue
        structural = make(tuple(units))
        reason = structural.requires(module)
        if reason:
            raise PassError(f"{structural.name}: {reason}")
        structural.run(module)
    return {"folded": folded, "heads": removed["head"], "neurons": removed["neuron"]}


def _per_layer(counts: dict[int, int], layer_ids: list[int]) -> str:
    return ",".join(str(counts.get(i, 0)) for i in layer_ids)


@register_pass
@dataclass(frozen=True)
class L0Prune(Distill):
    """Remove the heads and FFN neurons whose learned hard-concrete L0 gates close (CoFi).

    Trains the module (distilling from the teacher: the module as it entered the pipeline by
    default, as ``distill``) with a gate on every head (the attention result before the output
    projection) and every FFN neuron (the activation before the down projection), optionally
    one more per block (``gates=...,layers``); a Lagrangian term pushes the expected encoder
    size (FLOPs at ``max_length`` tokens, or parameters) to the target, which falls linearly
    from 1 over ``target_warmup`` steps. At the end the deterministic gates decide: units whose
    gate is 0 are removed (``prune-neurons``, ``prune-heads``); with ``exact_target`` the
    lowest-scoring open units are removed too until the target is met; kept gates below 1 are
    folded into the projection columns. A closed block gate (``layers``) removes all of its
    block's heads or neurons: what is left of the block is its output bias (and, post-LN, its
    norm), exactly what the gated model computes (``drop-layers`` would also drop the norm).
    Guarantees: the result computes what the trained gated model computes with those hard
    gates. Rewrites: every floating-point weight (training), the sliced projections.
    Refuses: neither or both targets, a target outside (0, 1), a target the gates cannot reach,
    int8 weights (run before quantize), N:M/block sparsity on the projections, no task, empty
    data.
    """

    name = "l0-prune"

    target_flops: float | None = None
    """Encoder FLOPs to keep, as a fraction of the model's (0..1)."""
    target_params: float | None = None
    """Encoder parameters to keep, as a fraction of the model's (0..1)."""
    gates: tuple[Gate, ...] = ("heads", "neurons")
    """What gets gates: heads, neurons, and layers (one gate per attention/FFN block)."""
    gate_lr: float = 0.1
    """Learning rate (Adam) of the gates' log-alpha."""
    lambda_lr: float = 0.1
    """Learning rate (Adam, ascent) of the Lagrange multipliers."""
    target_warmup: int | None = None
    """Steps over which the target falls from 1 to its value (default: half the steps)."""
    init_drop: float = 0.1
    """Initial drop rate of the gates (log-alpha = log(1 - d) - log(d); CoFi uses 0.5)."""
    form: Literal["cofi", "louizos"] = "cofi"
    """Deterministic gates at the end: cofi (as many closed per block as expected, lowest
    log-alpha first) or louizos (clamp(sigmoid(log-alpha) * 1.2 - 0.1, 0, 1))."""
    exact_target: bool = True
    """Remove the lowest-scoring open units too until the target is met."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.target_flops is None) == (self.target_params is None):
            raise PipelineSpecError("l0-prune needs exactly one of target_flops=F or "
                                    "target_params=F (the fraction of the encoder to keep)")
        target = self.target
        if target >= 1:
            raise PipelineSpecError(f"l0-prune target {target} is not smaller than the model: "
                                    "give a fraction in (0, 1)")
        if target <= 0:
            raise PipelineSpecError(f"l0-prune target must be a fraction in (0, 1), got {target}")
        if not self.gates or not {"heads", "neurons"} & set(self.gates):
            raise PipelineSpecError("l0-prune gates must include heads and/or neurons")
        if self.gate_lr <= 0 or self.lambda_lr <= 0:
            raise PipelineSpecError("l0-prune needs gate_lr > 0 and lambda_lr > 0")
        if not 0 < self.init_drop < 1:
            raise PipelineSpecError(f"l0-prune init_drop must be in (0, 1), got {self.init_drop}")
        if self.target_warmup is not None and self.target_warmup < 0:
            raise PipelineSpecError(f"l0-prune target_warmup must be >= 0, got {self.target_warmup}")

    @property
    def target(self) -> float:
        """The target fraction (FLOPs or parameters)."""
        return float(self.target_flops if self.target_flops is not None else self.target_params)

    @property
    def measure(self) -> Literal["flops", "params"]:
        return "flops" if self.target_flops is not None else "params"

    def _size(self, module: Module, structure: Structure, seq: int) -> SizeModel:
        return size_model(module, structure, self.measure, heads="heads" in self.gates,
                          neurons="neurons" in self.gates, seq=seq)

    def requires(self, module: Module) -> str | None:
        reason = super().requires(module)
        if reason:
            return reason
        structure = analyze(module)
        if not structure.layers:
            return f"the module has {structure.describe()}"
        for layer in structure.layers:
            for block, proj in ((layer.attention, layer.attention and layer.attention.output),
                                (layer.ffn, layer.ffn and layer.ffn.down)):
                if block is None:
                    continue
                weight = proj.args[1] if proj is not None else None
                if isinstance(weight, Parameter) and not weight.data.is_floating_point():
                    return (f"layer {layer.index}: {proj!r} has int8 weights; l0-prune trains "
                            "the model: run it before quantize")
                conflict = slice_conflict(block)
                if conflict:
                    return f"layer {layer.index}: {conflict}"
        return None

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        task = pass_task(self, module)
        tokenizer = pass_tokenizer(self, module)
        seq = self.max_length or (384 if task.kind == "extractive-qa" else 128)
        structure = analyze(module)
        size = self._size(module, structure, seq)
        floor = size.fixed / size.full
        if self.target <= floor:
            # Like a head that does not exist: the option is well formed but this model cannot
            # meet it, so the pass fails (exit 5); a malformed target is refused when parsed (2).
            raise PassError(f"l0-prune target {self.target} is below what removing every gated "
                             f"unit leaves ({floor:.3f} of the encoder's {self.measure}): raise "
                             "the target or gate more kinds of units")
        teacher, origin = self._teacher(module, ctx)
        soft = self.alpha_soft > 0 and has_task_head(teacher, task)
        hidden = self.hidden_mse if self.hidden_mse is not None else (0.0 if soft else 1.0)
        hooks = L0Gates(size, self.target, layers="layers" in self.gates,
                        warmup_steps=self.target_warmup, gate_lr=self.gate_lr,
                        lambda_lr=self.lambda_lr, init_drop=self.init_drop, seed=self.seed,
                        form=self.form)
        before = {m: encoder_cost(module, structure, m, seq) for m in ("flops", "params")}
        layer_ids = [layer.id for layer in structure.layers]
        snapshot = module.clone()
        try:
            report = distill(module, teacher, task, self.data, tokenizer=tokenizer,
                             temperature=self.temperature, alpha_soft=self.alpha_soft,
                             hidden_mse=hidden, layer_map=self.layer_map, hooks=hooks,
                             edit=hooks.edit, progress=ctx.progress, **train_options(self), **ctx.train_options())
            gates = hooks.final_gates()
            forced = (enforce_target(size, gates, hooks.scores(), self.target)
                      if self.exact_target else 0)
            done = commit_gates(module, size, gates)
        except BaseException:  # a refusal or Ctrl-C: no half-trained, half-pruned module
            module.restore(snapshot)
            raise
        after_structure = analyze(module)
        after = {m: encoder_cost(module, after_structure, m, seq) for m in ("flops", "params")}
        trace = [h["expected_size"] for h in hooks.history]
        picks = sorted({round(i * (len(trace) - 1) / 9) for i in range(10)}) if trace else []
        stats = report_stats(report)
        stats.update({
            "teacher": origin, "soft_targets": soft, "hidden_mse": hidden,
            "measure": self.measure, "target": self.target,
            "expected_size": f"{trace[0]:.3f}->{trace[-1]:.3f}" if trace else "-",
            "size_trace": ",".join(f"{trace[i]:.3f}" for i in picks),
            "heads_removed": sum(done["heads"].values()),
            "neurons_removed": sum(done["neurons"].values()),
            "heads_removed_per_layer": _per_layer(done["heads"], layer_ids),
            "neurons_removed_per_layer": _per_layer(done["neurons"], layer_ids),
            "forced_removed": forced, "gates_folded": done["folded"],
            "flops_ratio": round(after["flops"] / before["flops"], 4),
            "params_ratio": round(after["params"] / before["params"], 4),
        })
        return PassResult(True, stats)
