"""Backends: optc IR -> eager nn.Module, TorchScript file, ONNX file."""

from __future__ import annotations

import os
from pathlib import Path

from optc.backends.eager import EagerModule, to_eager
from optc.errors import PipelineSpecError
from optc.ir.core import Module

__all__ = ["EagerModule", "to_eager", "BACKENDS", "write_backend"]

BACKENDS = {
    "eager": "an optc artifact directory (IR text + safetensors), loaded with optc.load",
    "torchscript": "a TorchScript file for torch.jit.load, dynamic batch and sequence",
    "onnx": "an ONNX model (opset 18, ONNX Runtime fused attention), dynamic axes",
}
"""Backends the CLI's --backend accepts, with what each writes."""


def write_backend(module: Module, backend: str, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Lower ``module`` with ``backend`` and write the result to ``path`` (atomically)."""
    if backend == "eager":
        from optc.artifacts import save

        return save(module, path, force=force)
    if backend == "torchscript":
        from optc.backends.torchscript import export_torchscript

        return export_torchscript(module, path, force=force)
    if backend == "onnx":
        from optc.backends.onnx import export_onnx

        return export_onnx(module, path, force=force)
    raise PipelineSpecError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
