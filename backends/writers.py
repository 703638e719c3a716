"""The backends' writers, without the self-check: ``write_unchecked(module, backend, path)``.

:func:`optc.backends.write_backend` (the public entry) runs the self-check of
:mod:`optc.backends.selfcheck` on what these write unless told not to; the self-check itself
writes through this module (so the two do not import each other).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from optc.artifacts import save
from optc.errors import InputError, PipelineSpecError
from optc.ir.core import Module

__all__ = ["BACKENDS", "DIRECTORY_BACKENDS", "check_writable", "write_unchecked"]

BACKENDS = {
    "eager": "an optc artifact directory (IR text + safetensors), loaded with optc.load",
    "torchscript": "a TorchScript file for torch.jit.load, dynamic batch and sequence",
    "onnx": "an ONNX model (opset 18, ONNX Runtime fused attention), dynamic axes",
    "hf": "a Hugging Face model directory (per-layer sizes in config.json, generated modeling "
          "file) for transformers' from_pretrained(..., trust_remote_code=True); a "
          "sentence-embedding model also gets its pooling for SentenceTransformer(path, "
          "trust_remote_code=True)",
    "onnx-st": "a sentence-transformers directory (onnx/model.onnx, tokenizer, pooling) for "
               "SentenceTransformer(path, backend=\"onnx\"); fp32 and int8 sentence-embedding "
               "models (token states, no task head)",
}
"""Backends the CLI's --backend accepts, with what each writes."""
DIRECTORY_BACKENDS = ("eager", "hf", "onnx-st")
"""Backends that write a directory (the others write one file)."""


def check_writable(module: object, backend: str) -> None:
    """Refuse what no backend writes: not an IR module, or an unknown backend name."""
    if not isinstance(module, Module):
        hint = (": capture it first (module = optc.capture(model))"
                if isinstance(module, torch.nn.Module) else "")
        raise InputError(f"write_backend needs an optc IR module, got {type(module).__name__}{hint}")
    if backend not in BACKENDS:
        raise PipelineSpecError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def write_unchecked(module: Module, backend: str, path: str | os.PathLike, *,
                    force: bool = False) -> Path:
    """Lower ``module`` with ``backend`` and write the result to ``path`` (atomically), without
    loading it back."""
    check_writable(module, backend)
    if backend == "eager":
        return save(module, path, force=force)
    if backend == "torchscript":
        from optc.backends.torchscript import export_torchscript

        return export_torchscript(module, path, force=force)
    if backend == "onnx":
        from optc.backends.onnx import export_onnx

        return export_onnx(module, path, force=force)
    if backend == "onnx-st":
        from optc.backends.st_onnx import export_st_onnx

        return export_st_onnx(module, path, force=force)
    from optc.backends.hf import export_hf

    return export_hf(module, path, force=force)
