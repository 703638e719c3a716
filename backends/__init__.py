"""Backends: optc IR -> eager nn.Module, TorchScript file, ONNX file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from optc.artifacts import load_module, save
from optc.backends.eager import EagerModule, to_eager
from optc.errors import InputError, PipelineSpecError
from optc.ir.core import Module

__all__ = ["EagerModule", "to_eager", "BACKENDS", "write_backend", "load"]

BACKENDS = {
    "eager": "an optc artifact directory (IR text + safetensors), loaded with optc.load",
    "torchscript": "a TorchScript file for torch.jit.load, dynamic batch and sequence",
    "onnx": "an ONNX model (opset 18, ONNX Runtime fused attention), dynamic axes",
    "hf": "a Hugging Face model directory (per-layer sizes in config.json, generated modeling "
          "file) for transformers' from_pretrained(..., trust_remote_code=True)",
}
"""Backends the CLI's --backend accepts, with what each writes."""


def load(path: str | os.PathLike, sparse_kernel: str | None = None) -> EagerModule:
    """Load an artifact as a callable module (eager backend); ``.ir`` holds its IR module.
    ``sparse_kernel`` (see :mod:`optc.backends.sparse_exec`) defaults to the one recorded in
    the artifact (``optc --sparse-kernel``), else dense."""
    module = load_module(path)
    return to_eager(module, sparse_kernel or module.meta.get("sparse_kernel", "dense"))


def write_backend(module: Module, backend: str, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Lower ``module`` with ``backend`` and write the result to ``path`` (atomically)."""
    if not isinstance(module, Module):
        hint = (": capture it first (module = optc.capture(model))"
                if isinstance(module, torch.nn.Module) else "")
        raise InputError(f"write_backend needs an optc IR module, got {type(module).__name__}{hint}")
    if backend == "eager":
        return save(module, path, force=force)
    if backend == "torchscript":
        from optc.backends.torchscript import export_torchscript

        return export_torchscript(module, path, force=force)
    if backend == "onnx":
        from optc.backends.onnx import export_onnx

        return export_onnx(module, path, force=force)
    if backend == "hf":
        from optc.backends.hf import export_hf

        return export_hf(module, path, force=force)
    raise PipelineSpecError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
