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

Resumable runs (:mod:`optc.train.checkpoint`): :meth:`TrainHooks.state_dict` is saved with
each checkpoint and :meth:`TrainHooks.load_state_dict` loads it into a fresh hooks object
before :meth:`TrainHooks.start` on a resumed run; hooks that keep state across steps (masks
schedules, gates, activation ranges, their random generators and optimizers) must save all
of it. Several processes (:mod:`optc.train.distributed`): the gradients of
:meth:`TrainHooks.parameters` are averaged over the ranks with the model's.

Evaluations during training keep the best weights only where ``hooks.keep_best(step)`` says
so (a model evaluated before pruning reached its target must not be the one written back);
:meth:`TrainHooks.finish` runs on the written-back weights' model before they go to the IR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from optc.train.module import TrainableModule

__all__ = ["TrainHooks"]


class TrainHooks:
    """Base class: every method does nothing. Subclass and override what you need."""

    def start(self, model: TrainableModule, total_steps: int) -> None:
        """Called once before the first step with the number of steps planned (on a resumed
        run: after :meth:`load_state_dict`, and the model may be evaluated right after it, so
        leave it as :meth:`after_step` would)."""

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

    def parameters(self) -> list[torch.Tensor]:
        """Tensors the hooks train with their own optimizers (gates): their gradients are
        averaged over the processes of a distributed run."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume: tensors, numbers, strings, lists and dicts
        of them (``torch.load(weights_only=True)`` reads it back)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (called before :meth:`start` on a resumed run)."""
