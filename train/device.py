"""Where training and evaluation run: the device and the precision of a run.

``device``: ``cpu``, ``cuda`` (``cuda:N`` for one GPU of several) or ``auto`` (CUDA when torch
sees a GPU, else the CPU). ``precision``: ``fp32`` (no autocast), ``bf16`` (autocast to
bfloat16, on the CPU too) or ``fp16`` (autocast to float16 with a ``torch.amp.GradScaler``
that scales the loss so that small gradients do not underflow; on the CPU it works but is
slow: it is there so the GPU path can be tested without a GPU).

Autocast changes only the dtype operations compute in: the parameters stay in the IR's dtype
(fp32), so the trained values written back to the IR have the IR's dtype exactly as in an fp32
run, and masks (booleans) are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from optc.errors import InputError

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "check_precision", "autocast",
           "grad_scaler", "describe_device"]

DEVICES = ("cpu", "cuda", "auto")
"""What ``device=`` accepts (``cuda:N`` too)."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""What ``precision=`` accepts."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``device`` (None: the CPU). A CUDA request on a machine where
    torch sees no GPU is an :class:`InputError`."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        text = str(device)
    else:
        text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}: choose cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported: choose cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
            raise InputError(f"device {text} asked for, but torch sees no CUDA device ({build}, "
                             f"torch {torch.__version__}): use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {text} does not exist: torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and ``device`` runs it, else an
    :class:`InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"{torch.cuda.get_device_name(device)} does not support bf16: use "
                         "--precision fp16 or fp32")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler of an fp16 run (None otherwise: bf16 has fp32's range)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def describe_device(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
