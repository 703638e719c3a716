"""Gradual magnitude pruning with distillation (Zhu & Gupta's schedule, as in Prune Once for
All and SparseBERT): sparsity rises on a cubic schedule while the module distills from its
teacher, so accuracy recovers as the weights go."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from optc.errors import InputError, PipelineSpecError
from optc.ir.core import Module
from optc.passes.base import PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.distill import Distill
from optc.passes.finetune import pass_task, pass_tokenizer, report_stats, train_options
from optc.passes.registry import register_pass
from optc.passes.sparsify import Sparsify
from optc.train import TrainableModule, TrainHooks, distill, has_task_head
from optc.train.schedules import check_schedule, cubic_sparsity, prune_steps

__all__ = ["GradualPrune", "GradualPruneHooks", "END_FRACTION", "UPDATES"]

END_FRACTION = 2 / 3
"""Default end of the schedule, as a fraction of the training steps: the last third trains
with the final masks fixed, and only its evaluations may be kept."""

UPDATES = 20
"""Default number of mask updates between the start and the end of the schedule."""


class GradualPruneHooks(TrainHooks):
    """Raises the sparsity of the target weights on the cubic schedule while training.

    At each pruning step (:func:`~optc.train.schedules.prune_steps`) the masks are
    recomputed by magnitude with the pattern's own rule (``sparsify``'s mask functions:
    per-tensor / per-layer / global magnitude, block L2 norms, the largest ``k`` of each group
    of ``m`` with ``k`` falling from ``m`` to ``n``), intersected with the previous masks (a
    pruned weight never comes back) and applied at once. From ``end`` on the masks are those
    of the final sparsity; evaluations before that are not kept as best.
    """

    def __init__(self, final: Sparsify, targets: Sequence[tuple[int | None, str]], *,
                 initial: float = 0.0, start: int = 0, end: int | None = None,
                 frequency: int | None = None) -> None:
        self.final = final
        """The ``sparsify`` pass this schedule ends at (pattern, scope, final sparsity)."""
        self.targets = list(targets)
        """(layer position or None, IR parameter name) of each weight pruned."""
        self.final_sparsity = 1 - final._nm()[0] / final._nm()[1] if final._nm() else final.sparsity
        self.initial = initial
        self.start_step, self.end_option, self.frequency_option = start, end, frequency
        self.end = end if end is not None else 0
        """Step (0-based) at which the final masks are applied (set by :meth:`start`)."""
        self.frequency = frequency or 1
        self.steps: set[int] = set()
        self.level = 0.0
        """The scheduled sparsity the current masks were made for."""
        self.sparsity = 0.0
        """The current fraction of zeros over all targets (the masks' own count)."""
        self.updates: list[tuple[int, float]] = []
        """(step, sparsity reached) of every mask update."""
        self.end_clamped = False

    # -- TrainHooks ------------------------------------------------------------------------------
    def start(self, model: TrainableModule, total_steps: int) -> None:
        last = total_steps - 1
        if self.start_step > last:
            raise InputError(f"gradual-prune start_step={self.start_step} is past the last "
                             f"training step ({last}): lower start_step or train longer")
        end = self.end_option
        if end is None:
            end = max(self.start_step, math.floor(END_FRACTION * total_steps) - 1)
        self.end_clamped = end > last
        self.end = min(end, last)
        self.frequency = self.frequency_option or max(1, math.ceil((self.end - self.start_step)
                                                                   / UPDATES))
        check_schedule(self.initial, self.final_sparsity, self.start_step, self.end, self.frequency)
        self.steps = set(prune_steps(self.start_step, self.end, self.frequency))

    def before_step(self, model: TrainableModule, step: int) -> None:
        if step in self.steps:
            level = cubic_sparsity(step, self.initial, self.final_sparsity, self.start_step,
                                   self.end)
            if level > self.level or not self.updates:
                self.prune(model, level)
                self.updates.append((step, self.sparsity))

    def after_step(self, model: TrainableModule, step: int) -> dict[str, float]:
        return {"sparsity": round(self.sparsity, 4)}

    def keep_best(self, step: int) -> bool:
        return step > self.end  # ``step`` steps done: the final masks trained at least once

    def finish(self, model: TrainableModule) -> None:
        if self.level < self.final_sparsity or not self.updates:
            self.prune(model, self.final_sparsity)  # only when training stopped early

    def state_dict(self) -> dict[str, Any]:
        """The schedule's progress (the masks themselves are the trainable module's, saved
        with every checkpoint)."""
        return {"level": self.level, "sparsity": self.sparsity,
                "updates": [[step, value] for step, value in self.updates]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = float(state["level"])
        self.sparsity = float(state["sparsity"])
        self.updates = [(int(step), float(value)) for step, value in state["updates"]]

    # -- masks -----------------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, model: TrainableModule, level: float) -> None:
        """Recompute the masks for sparsity ``level``, keep them monotone, apply them."""
        weights = {name: model.tensor(name).detach() for _, name in self.targets}
        fresh = self._masks(weights, level)
        zeros = total = 0
        for name, keep in fresh.items():
            old = model.masks.get(name)
            mask = keep if old is None else keep & old
            model.masks[name] = mask
            zeros += mask.numel() - int(mask.sum())
            total += mask.numel()
        model.apply_masks()
        self.level = level
        self.sparsity = zeros / total if total else 0.0

    def _masks(self, weights: dict[str, torch.Tensor], level: float) -> dict[str, torch.Tensor]:
        nm = self.final._nm()
        if nm:
            n, m = nm
            keep = max(n, math.ceil((1 - level) * m - 1e-9))
            if keep >= m:
                return {name: w != 0 for name, w in weights.items()}
            step = Sparsify(pattern=f"{keep}:{m}")
            return {name: step._nm_mask(w) for name, w in weights.items()}
        rule = Sparsify(sparsity=level, pattern=self.final.pattern, block=self.final.block,
                        scope=self.final.scope, targets=self.final.targets)
        groups: dict[object, list[str]] = {}
        for layer, name in self.targets:
            key = {"global": 0, "per_layer": ("layer", layer), "per_tensor": name}[rule.scope]
            groups.setdefault(key, []).append(name)
        masks = {}
        for names in groups.values():
            scores = [rule._scores(weights[n]) for n in names]
            for n, keep in zip(names, rule._keep_top(scores, level), strict=True):
                masks[n] = rule._expand(keep, weights[n])
        return masks


@register_pass
@dataclass(frozen=True)
class GradualPrune(Distill):
    """Prune linear weights gradually to a target sparsity while distilling from a teacher.

    Trains as ``distill`` does (teacher: ``teacher=PATH``, else the module as it entered the
    pipeline; loss ``alpha_soft * KL(T=temperature) + (1 - alpha_soft) * task loss +
    hidden_mse * hidden-state MSE``) while the sparsity of the target weights rises from
    ``initial_sparsity`` at ``start_step`` to ``sparsity`` at ``end_step`` on the cubic
    schedule, masks recomputed by magnitude every ``frequency`` steps in any pattern
    ``sparsify`` supports (unstructured, N:M, block). Pruned weights never come back; only
    evaluations after ``end_step`` may be kept as the best weights.
    Rewrites: new tensors for every floating-point parameter; each target weight ends exactly
    at the final sparsity with the ``sparsity`` attribute ``sparsify`` records (so later
    training keeps the pattern, and quantize, the ONNX annotations and compressed storage see
    it); a task head when the module has none; ``meta["task"]``.
    Refuses (IR unchanged): sparsity outside [0, 1), initial_sparsity above it, end_step before
    start_step, start_step past the training, what ``sparsify`` refuses (a pattern that does
    not tile a weight, int8 weights, another pattern already there), no task, empty data.
    """

    name = "gradual-prune"

    sparsity: float | None = None
    """Final fraction of zeros in each target weight, in [0, 1) (N:M: ``1 - N/M``, may be
    omitted)."""
    initial_sparsity: float = 0.0
    """Sparsity at ``start_step`` (the schedule's s_i)."""
    start_step: int = 0
    """Step (0-based) of the first mask update (t0)."""
    end_step: int | None = None
    """Step at which the final sparsity is reached (t1; default: 2/3 of the training steps;
    past the last step it is clamped to it)."""
    frequency: int | None = None
    """Steps between mask updates (default: about 20 updates from start to end)."""
    pattern: str = "unstructured"
    """``unstructured``, ``block`` or ``N:M`` (e.g. ``2:4``), as ``sparsify``."""
    block: str = "1x4"
    """Block shape ``RxC`` for ``pattern=block``."""
    scope: Literal["global", "per_layer", "per_tensor"] = "per_tensor"
    """Where the magnitude threshold is shared (N:M is always per group)."""
    targets: tuple[str, ...] = ("attention", "ffn")
    """Roles pruned: every encoder linear by default (never embeddings; pooler and
    classifier only with ``head``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            final = self._final()
        except ValueError as exc:
            raise PipelineSpecError(f"gradual-prune: {exc}") from None
        s = final.sparsity if final.sparsity is not None else 1 - final._nm()[0] / final._nm()[1]
        if self.end_step is not None and self.end_step < self.start_step:
            raise PipelineSpecError(f"gradual-prune end_step={self.end_step} is before "
                                    f"start_step={self.start_step}: choose end_step >= start_step")
        try:
            check_schedule(self.initial_sparsity, s, self.start_step,
                           self.end_step if self.end_step is not None else self.start_step,
                           self.frequency if self.frequency is not None else 1)
        except InputError as exc:
            raise PipelineSpecError(f"gradual-prune: {exc}") from None

    def _final(self) -> Sparsify:
        """The ``sparsify`` pass at the final sparsity (pattern, scope, targets)."""
        return Sparsify(sparsity=self.sparsity, pattern=self.pattern, block=self.block,
                        scope=self.scope, targets=self.targets)

    def requires(self, module: Module) -> str | None:
        return super().requires(module) or self._final().requires(module)

    def make_hooks(self, module: Module) -> GradualPruneHooks:
        """The training hooks that prune ``module``'s targets on this pass's schedule."""
        targets = [(layer, p.name) for layer, _, p in self._final()._targets(module)]
        return GradualPruneHooks(self._final(), targets, initial=self.initial_sparsity,
                                 start=self.start_step, end=self.end_step,
                                 frequency=self.frequency)

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT,
            hooks: GradualPruneHooks | None = None) -> PassResult:
        task = pass_task(self, module)
        tokenizer = pass_tokenizer(self, module)
        teacher, origin = self._teacher(module, ctx)
        soft = self.alpha_soft > 0 and has_task_head(teacher, task)
        hidden = self.hidden_mse if self.hidden_mse is not None else (0.0 if soft else 1.0)
        hooks = hooks or self.make_hooks(module)
        snapshot = module.clone()
        try:
            report = distill(module, teacher, task, self.data, tokenizer=tokenizer,
                             temperature=self.temperature, alpha_soft=self.alpha_soft,
                             hidden_mse=hidden, layer_map=self.layer_map, hooks=hooks,
                             progress=ctx.progress, **train_options(self), **ctx.train_options())
        except BaseException:  # a refusal (or Ctrl-C) after add_task_head: undo it
            module.restore(snapshot)
            raise
        final = self._final().run(module)  # no value changes: records the sparsity attribute
        stats: dict[str, Any] = report_stats(report)
        stats.update({
            "teacher": origin, "soft_targets": soft, "hidden_mse": hidden,
            "weights": final.stats["weights"], "sparsity": final.stats["sparsity"],
            "schedule": f"{hooks.initial:g}->{hooks.final_sparsity:g} steps "
                        f"{hooks.start_step}..{hooks.end} every {hooks.frequency}",
            "updates": len(hooks.updates),
        })
        if hooks.end_clamped:
            stats["end_step_clamped"] = hooks.end
        return PassResult(True, stats)

