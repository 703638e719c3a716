"""Data-parallel training over several processes with ``torch.distributed``.

Every process (rank) builds the same trainable module (same seed), walks the same sequence of
global batches (same seeded generator) and takes its share of each: rank ``r`` of ``W`` takes
rows ``r, r + W, r + 2W, ...`` of the batch (the batch is sorted by length, so every rank gets
rows of similar length). Each rank scales its loss so that the *average* of the ranks'
gradients is the gradient of the loss on the whole global batch (:class:`Share`): terms that
are means over examples are weighted by ``W * n_r / B`` (``n_r`` of the ``B`` rows are this
rank's), terms that are means over tokens by ``W * t_r / T``; terms that do not depend on the
data (a hook's penalty) are the same on every rank and average to themselves. After backward
the gradients are averaged with one all-reduce of a flat buffer, so every rank clips and steps
with identical gradients and its weights stay identical to the other ranks'.

The result equals a one-process run on the same global batches up to floating-point rounding
(sums in another order, each rank padding to its own longest row) — about 1e-6 relative on
fp32 weights after a few steps — provided dropout is 0: each rank draws its own dropout masks
(seeded by seed and rank), so with dropout the runs are statistically, not numerically, the
same.

Process groups: :func:`init_from_env` starts one from the variables ``torchrun`` (or
``optc finetune --nproc N``) sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): NCCL when training on CUDA, gloo on the CPU. A library caller may start its
own group instead; training uses whatever group is initialized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from optc.errors import InputError

__all__ = ["World", "Share", "current_world", "init_from_env", "env_world_size", "shard",
           "average_gradients", "all_sum", "broadcast_tensors", "global_extrema", "barrier",
           "shutdown"]


@dataclass(frozen=True)
class World:
    """The processes training together."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    """``gloo`` or ``nccl`` (None: one process, no group)."""

    @property
    def main(self) -> bool:
        """Whether this process evaluates, writes back and writes outputs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


@dataclass(frozen=True)
class Share:
    """How much of a global batch one rank holds, as loss weights (1 and 1 in one process)."""

    examples: float = 1.0
    """Weight of terms that are means over examples: ``W * n_r / B``."""
    tokens: float = 1.0
    """Weight of terms that are means over real tokens: ``W * t_r / T``."""


def current_world() -> World:
    """The initialized process group's rank and size (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(text)
    except ValueError:
        raise InputError(f"WORLD_SIZE={text!r} is not a number") from None


def init_from_env(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (a no-op for one
    process or when a group is already up). NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``;
    see :func:`local_device`), gloo on the CPU."""
    if dist.is_available() and dist.is_initialized():
        return current_world()
    if env_world_size() <= 1:
        return World()
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed: run one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the "
                         "processes with torchrun or optc finetune --nproc N")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise InputError("training on CUDA with several processes needs NCCL, which this torch "
                         "build lacks")
    dist.init_process_group(backend, timeout=timedelta(minutes=60))
    return current_world()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` when several processes share
    a machine (one GPU each)."""
    if device.type != "cuda" or device.index is not None or env_world_size() <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise InputError(f"process {local} on this machine has no GPU of its own: torch sees "
                         f"{torch.cuda.device_count()}; start at most that many processes")
    return torch.device("cuda", local)


def shutdown() -> None:
    """Leave the process group (if one is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: Sequence[int], world: World) -> list[int]:
    """This rank's rows of a global batch (every ``size``-th, from ``rank``)."""
    return list(rows[world.rank::world.size])


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


@torch.no_grad()
def average_gradients(params: Iterable[torch.Tensor], world: World) -> None:
    """Replace each gradient by its mean over the ranks (one all-reduce of a flat buffer;
    a missing gradient counts as zeros)."""
    if not world.distributed:
        return
    params = list(params)
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        value = flat[offset:offset + n].view_as(g).to(g.dtype)
        if p.grad is None:
            p.grad = value.clone()
        else:
            p.grad.copy_(value)
        offset += n


@torch.no_grad()
def all_sum(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """The sums over the ranks of a few numbers (themselves in one process)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Copy rank 0's values of ``tensors`` into every rank's (in place)."""
    if not world.distributed:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def global_extrema(x: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of ``x`` over every rank (of this rank alone in one process): an
    observer of activation ranges fed this sees what one process sees on the global batch."""
    x = x.detach().float().flatten()
    local = torch.stack([x.min(), -x.max()]) if x.numel() else torch.full((2,), float("inf"),
                                                                            device=x.device)
    world = current_world()
    if world.distributed:
        dist.all_reduce(local, op=dist.ReduceOp.MIN)
    return torch.stack([local[0], -local[1]])
