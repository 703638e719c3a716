"""Extension points of the training loop, for passes that change the model while it trains.

Gradual pruning raises sparsity on a schedule (masks recomputed every few steps), learned
gates add a penalty and their own parameters, quantization-aware training swaps observers:
none of them needs a loop of its own. :func:`~optc.train.finetune` and
:func:`~optc.train.distill` take ``hooks=`` (a :class:`TrainHooks`) and ``edit=`` (a function
that rewrites the copy of the IR the trainable module is built from, e.g. to insert gates).

Order within one optimizer step::

    hooks.before_step(model, step)          # step counts from 0
    loss = task/distillation loss (+ the term returned by hooks.loss)
    backward; mask gradients; clip; optimizer step; apply masks
    terms = hooks.after_step(model, step)   # numbers shown by the progress callback

Evaluations during training keep the best weights only where ``hooks.keep_best(step)`` says
so (a model evaluated before pruning reached its target must not be the one written back);
:meth:`TrainHooks.finish` runs on the written-back weights' model before they go to the IR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from optc.train.module import TrainableModule

__all__ = ["TrainHooks"]


class TrainHooks:
    """Base class: every method does nothing. Subclass and override what you need."""

    def start(self, model: TrainableModule, total_steps: int) -> None:
        """Called once before the first step with the number of steps planned."""

    def before_step(self, model: TrainableModule, step: int) -> None:
        """Called before the forward pass of step ``step`` (0-based)."""

    def loss(self, model: TrainableModule, step: int) -> torch.Tensor | None:
        """An extra loss term added to this step's loss (None: nothing)."""
        return None

    def after_step(self, model: TrainableModule, step: int) -> dict[str, float]:
        """Called after the optimizer step (masks applied); returns named numbers for the
        progress display (current sparsity, expected size, loss terms, ...)."""
        return {}

    def keep_best(self, step: int) -> bool:
        """Whether an evaluation after ``step`` steps may be the one whose weights are kept."""
        return True

    def finish(self, model: TrainableModule) -> None:
        """Called once after training, on the weights about to be written back."""
