"""What a pass gets beyond its options: the :class:`PassContext`.

The pass manager builds one per pipeline run and hands it to every pass's ``run(module, ctx)``:
the pipeline's input module (the default teacher or reference of the passes that learn from or
compare against it), where training passes report their steps, the device and precision
they train in, and the data task calibration data is read as. Passes read it; they never
stash it on themselves (passes are frozen dataclasses) and nothing travels through
``module.meta`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optc.ir.core import Module

__all__ = ["PassContext", "EMPTY_CONTEXT"]


@dataclass(frozen=True)
class PassContext:
    """Everything a pass needs beyond its options, for one pipeline run."""

    reference: Module | None = None
    """The pipeline's input (a copy taken before the first pass, or the manager's
    ``reference``, e.g. the model a search started from): the default teacher of ``distill``,
    ``gradual-prune``, ``l0-prune``, ``quantize{mode=qat}`` and the model ``reconstruct`` follows.
    None: a pass that needs one uses its ``teacher`` option or says what is missing."""
    progress: Callable[[Any], None] | None = None
    """Called after each training step of a training pass with a
    :class:`~optc.train.StepInfo` (step, loss, ETA, pass-specific terms); None: silent."""
    device: str = "cpu"
    """Where training passes (finetune, distill, gradual-prune, quantize{mode=qat}, l0-prune)
    train and evaluate: cpu, cuda, cuda:N or auto (CUDA when torch sees one); see
    :mod:`optc.train.device`. The IR stays on the CPU: trained values are written back there."""
    precision: str = "fp32"
    """Autocast precision of training passes: fp32, bf16 or fp16 (with loss scaling)."""
    task: Any = None
    """The pipeline's data task (a :class:`~optc.tasks.Task`, the CLI's ``--task``): passes
    that measure the model on calibration data read it as this task reads its files (its
    columns and labels; without ``data``, from the task's own data directory). None: the
    columns are found from the data file itself (:mod:`optc.tasks.detect`)."""

    def train_options(self) -> dict[str, Any]:
        """The keyword arguments :func:`optc.train.finetune`/``distill`` take from the
        context."""
        return {"device": self.device, "precision": self.precision}


EMPTY_CONTEXT = PassContext()
"""The context of a pass run on its own, outside a pipeline."""
