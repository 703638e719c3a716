"""Knowledge distillation as a pass: recover a compressed module's accuracy from a teacher."""

from __future__ import annotations

from dataclasses import dataclass

from optc.errors import InputError, PipelineSpecError
from optc.ir.core import Module
from optc.passes.base import PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.finetune import (
    TrainingPass,
    pass_task,
    pass_tokenizer,
    report_stats,
    train_options,
)
from optc.passes.registry import register_pass
from optc.passes.support.reference import TakesReference
from optc.train import distill, has_task_head
from optc.train.losses import parse_layer_map

__all__ = ["Distill"]


@register_pass
@dataclass(frozen=True)
class Distill(TrainingPass, TakesReference):
    """Train the module to imitate a teacher on a task's data (soft targets, hidden states).

    Teacher: ``teacher=PATH`` (an optc artifact), else the module as it entered the pipeline
    when the pass manager hands it over (``ctx.reference``), else a copy of the
    module as this pass starts (said in the stats: ``teacher=self``).
    Loss: ``alpha_soft * KL(student/T || teacher/T) * T^2 + (1 - alpha_soft) * task loss +
    hidden_mse * MSE(student layer outputs, mapped teacher layer outputs)``. A teacher without
    the task's head gives no soft targets; then ``hidden_mse`` defaults to 1 (match the
    teacher's layer outputs) instead of 0.
    Rewrites: new tensors for every floating-point parameter; a task head when the module
    has none (as ``finetune``); ``meta["task"]`` records the task and best evaluation.
    Refuses: no task, a head that does not fit, a teacher with a different head or hidden
    size, an unreadable teacher artifact, empty data.
    """

    name = "distill"

    teacher: str | None = None
    """Teacher optc artifact (default: the module as it entered the pipeline)."""
    temperature: float = 2.0
    """Softmax temperature T of the soft targets."""
    alpha_soft: float = 0.5
    """Weight of the soft-target loss; the task loss gets 1 - alpha_soft."""
    hidden_mse: float | None = None
    """Weight of the hidden-state MSE (default: 0 with soft targets, 1 without)."""
    layer_map: str = "auto"
    """Student:teacher layer pairs for hidden states (auto: by stable layer id, else evenly)."""
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0 or not 0 <= self.alpha_soft <= 1:
            raise PipelineSpecError("distill needs temperature > 0 and 0 <= alpha_soft <= 1")
        if self.hidden_mse is not None and self.hidden_mse < 0:
            raise PipelineSpecError(f"distill hidden_mse must be >= 0, got {self.hidden_mse}")
        if self.layer_map != "auto":
            try:
                parse_layer_map(self.layer_map)
            except InputError as exc:
                raise PipelineSpecError(f"distill: {exc}") from None

    def _teacher(self, module: Module, ctx: PassContext) -> tuple[Module, str]:
        return self.reference(ctx) or (module.clone(), "self")

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        task = pass_task(self, module)
        tokenizer = pass_tokenizer(self, module)
        teacher, origin = self._teacher(module, ctx)
        soft = self.alpha_soft > 0 and has_task_head(teacher, task)
        hidden = self.hidden_mse if self.hidden_mse is not None else (0.0 if soft else 1.0)
        report = distill(module, teacher, task, self.data, tokenizer=tokenizer,
                         temperature=self.temperature, alpha_soft=self.alpha_soft,
                         hidden_mse=hidden, layer_map=self.layer_map, progress=ctx.progress,
                         **train_options(self), **ctx.train_options())
        stats = report_stats(report)
        stats.update({"teacher": origin, "soft_targets": soft, "hidden_mse": hidden,
                      "layer_map": report.extra["layer_map"]})
        return PassResult(True, stats)
