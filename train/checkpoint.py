"""Checkpoints of a training run, to resume it where it stopped.

A checkpoint is a directory ``step-NNNNNN`` inside the run's checkpoint directory, written
under a hidden name and renamed when complete (only the newest is kept):

- ``model.safetensors``: the trainable weights by IR parameter name (the IR's safetensors form,
  on the CPU, in the IR's dtype); ``masks.safetensors``: the masks that keep zeros zero
  (sparsity, gradual pruning); ``best.safetensors``: the best evaluation's weights so far;
- ``training.pt`` (``torch.load(weights_only=True)``: tensors, numbers and strings only): the
  optimizer, learning-rate schedule and loss scaler, the batch generator's state, this epoch's
  batch order and how many of its batches are done, the step, the losses, evaluations and best
  record, the state of the training hooks (masks schedules, gates and their optimizers,
  activation ranges) and a fingerprint of the run (steps, batch size, seed, ...);
- ``rng-<rank>.pt``: each process's torch random state (dropout), CUDA's too when used;
- ``state.json``: the same summary in text, for people.

:func:`finetune`/:func:`distill` with ``resume=DIR`` rebuild the run as it started (same
arguments: the fingerprint must match) and then load this state, so the resumed run continues
with exactly the numbers an uninterrupted one would have used: on the CPU the final weights are
equal bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from optc.errors import InputError, OutputError
from optc.train.distributed import World, barrier

__all__ = ["CheckpointState", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "checkpoint_name"]

_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


@dataclass
class CheckpointState:
    """Everything a resumed run loads (see the module docstring)."""

    step: int
    fingerprint: dict[str, Any]
    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor] | None
    training: dict[str, Any]
    """optimizer, scheduler, scaler, generator, epoch, batches, index, losses, evals, best,
    hooks, step_time, seconds, pending_eval."""
    rng: dict[str, Any] = field(default_factory=dict)
    """This rank's ``cpu`` (and ``cuda``) random state."""


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(directory: str | os.PathLike, state: CheckpointState, world: World) -> Path:
    """Write ``state`` as ``directory/step-NNNNNN`` (every rank calls this: each writes its
    random state, rank 0 the rest); returns the checkpoint's path."""
    root = Path(directory)
    final = root / checkpoint_name(state.step)
    partial = root / f".{checkpoint_name(state.step)}.partial"
    try:
        if world.main:
            root.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
        barrier(world)
        torch.save(state.rng, partial / f"rng-{world.rank}.pt")
        barrier(world)
        if world.main:
            save_file(_cpu(state.weights), str(partial / "model.safetensors"))
            save_file(_cpu(state.masks), str(partial / "masks.safetensors"))
            if state.best_weights is not None:
                save_file(_cpu(state.best_weights), str(partial / "best.safetensors"))
            torch.save(state.training, partial / "training.pt")
            summary = {"step": state.step, "processes": world.size, **state.fingerprint,
                       "losses": len(state.training.get("losses", [])),
                       "best": state.training.get("best")}
            (partial / "state.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in root.glob(f"{_PREFIX}*"):
                if old != final and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        barrier(world)
    except OSError as exc:
        raise OutputError(f"cannot write the checkpoint in '{root}': {exc.strerror or exc}") from None
    return final


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint ``path`` names: a ``step-NNNNNN`` directory, or a checkpoint directory
    (its newest one)."""
    p = Path(path)
    if (p / "training.pt").is_file():
        return p
    if not p.is_dir():
        raise InputError(f"resume: '{p}' does not exist")
    found = sorted(c for c in p.glob(f"{_PREFIX}*") if (c / "training.pt").is_file())
    if not found:
        raise InputError(f"resume: '{p}' holds no checkpoint (no {_PREFIX}NNNNNN directory "
                         "with training.pt): give the --checkpoint-dir of the interrupted run")
    return found[-1]


def load_checkpoint(path: str | os.PathLike, fingerprint: dict[str, Any],
                    world: World) -> CheckpointState:
    """Read the checkpoint at ``path`` (see :func:`find_checkpoint`) and check that it was
    written by the same run (``fingerprint``) with as many processes."""
    where = find_checkpoint(path)
    try:
        training = torch.load(where / "training.pt", weights_only=True)
        rng_file = where / f"rng-{world.rank}.pt"
        if not rng_file.is_file():
            count = len(list(where.glob("rng-*.pt")))
            raise InputError(f"resume: '{where}' was written by {count} process(es); resume it "
                             f"with as many (this run has {world.size})")
        rng = torch.load(rng_file, weights_only=True)
        weights = load_file(str(where / "model.safetensors"))
        masks = load_file(str(where / "masks.safetensors"))
        best = (load_file(str(where / "best.safetensors"))
                if (where / "best.safetensors").is_file() else None)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"resume: cannot read the checkpoint '{where}': "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    recorded = training.get("fingerprint", {})
    for key, value in fingerprint.items():
        if key in recorded and recorded[key] != value:
            raise InputError(f"resume: '{where}' was written by a run with {key} "
                             f"{recorded[key]!r}, this run has {value!r}: resume with the "
                             "interrupted run's options")
    processes = training.get("processes", 1)
    if processes != world.size:
        raise InputError(f"resume: '{where}' was written by {processes} process(es); resume "
                         f"it with as many (this run has {world.size})")
    return CheckpointState(int(training["step"]), recorded, weights, masks, best, training, rng)


def record_to_dict(record: Any) -> dict[str, Any] | None:
    """An :class:`~optc.train.loop.EvalRecord` as plain data (None stays None)."""
    return None if record is None else asdict(record)
