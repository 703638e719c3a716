"""Backends: optc IR -> eager nn.Module, TorchScript file, ONNX file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optc.artifacts import load_module
from optc.artifacts import save as save_artifact
from optc.backends.eager import EagerModule, to_eager
from optc.backends.selfcheck import check_written, write_checked
from optc.backends.writers import BACKENDS, check_writable, write_unchecked
from optc.ir.core import Module

__all__ = ["EagerModule", "to_eager", "BACKENDS", "write_backend", "save", "load"]


def load(path: str | os.PathLike, sparse_kernel: str | None = None) -> EagerModule:
    """Load an artifact as a callable module (eager backend); ``.ir`` holds its IR module.
    ``sparse_kernel`` (see :mod:`optc.backends.sparse_exec`) defaults to the one recorded in
    the artifact (``optc --sparse-kernel``), else dense."""
    module = load_module(path)
    return to_eager(module, sparse_kernel or module.meta.get("sparse_kernel", "dense"))


def write_backend(module: Module, backend: str, path: str | os.PathLike, *, force: bool = False,
                  check: bool = True) -> Path:
    """Lower ``module`` with ``backend`` and write the result to ``path`` (atomically).

    By default the output is loaded back and run against the eager IR before it is installed
    (the CLI's self-check, :mod:`optc.backends.selfcheck`): an output that fails to load,
    crashes or disagrees is deleted, an existing ``path`` stays, and
    :class:`~optc.errors.BackendError` names the backend and the difference. ``check=False``
    skips it (for a caller that checks what it wrote itself).
    """
    check_writable(module, backend)
    if not check:
        return write_unchecked(module, backend, path, force=force)
    write_checked(module, backend, path, force=force)
    return Path(path)


def save(obj: Any, path: str | os.PathLike, *, force: bool = False, backend: str = "eager",
         extra: dict[str, Any] | None = None, inputs: Iterable[str | os.PathLike] = (),
         check: bool = True) -> Path:
    """``optc.save``: :func:`optc.artifacts.save` (an artifact directory), self-checked like
    :func:`write_backend`: the artifact is loaded back with ``optc.load`` and run against the
    IR it came from before it is installed; a failure deletes it and raises
    :class:`~optc.errors.BackendError`. ``check=False`` skips the check."""
    return save_artifact(obj, path, force=force, backend=backend, extra=extra, inputs=inputs,
                         check=_check_artifact if check else None)


def _check_artifact(module: Module, staged: Path, target: Path) -> None:
    check_written(module, "eager", staged, label=target)
