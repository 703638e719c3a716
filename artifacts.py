"""optc artifacts: a directory holding a compiled module, loadable without the source model.

    OUT/
      model.optc          the IR in textual form (with source locations)
      weights.safetensors parameters, by IR parameter name
      metadata.json       format version, optc/torch/transformers versions, source model,
                          pipeline, backend

Loading parses text, JSON and safetensors only: nothing is ever unpickled. Saving writes into a
temporary sibling directory and renames it into place, so a failure leaves no partial output and
an existing artifact is replaced only with ``force=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from optc.errors import ArtifactError, OptcError, OutputError
from optc.ir.core import Module
from optc.ir.parser import parse_module
from optc.ir.printer import print_module
from optc.ir.verifier import verify
from optc.outputs import check_output, umask_mode

__all__ = ["save", "load", "load_module", "is_artifact", "FORMAT_VERSION"]

FORMAT_VERSION = 1
IR_FILE = "model.optc"
WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def is_artifact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory that looks like an optc artifact."""
    p = Path(path)
    return p.is_dir() and (p / IR_FILE).is_file() and (p / METADATA_FILE).is_file()


def _as_module(obj: Any) -> Module:
    if isinstance(obj, Module):
        return obj
    ir = getattr(obj, "ir", None)
    if isinstance(ir, Module):
        return ir
    raise OptcError(f"optc.save needs an optc IR module or a module from optc.load, got {type(obj).__name__}")


def _weights_for_saving(module: Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, param in module.params.items():
        data = param.data
        if data.is_meta:
            raise ArtifactError(f"parameter @{name} has no data; cannot save IR loaded without weights")
        data = data.detach().cpu().contiguous()
        key = (data.untyped_storage().data_ptr(), data.storage_offset())
        if key in seen or data.untyped_storage().nbytes() != data.numel() * data.element_size():
            data = data.clone()  # safetensors refuses shared or partial storages
        seen.add(key)
        tensors[name] = data
    return tensors


def save(obj: Any, path: str | os.PathLike, *, force: bool = False, backend: str = "eager",
         extra: dict[str, Any] | None = None) -> Path:
    """Save an IR module (or a module returned by :func:`load`) as an artifact directory."""
    from safetensors.torch import save_file

    module = _as_module(obj)
    verify(module, "before saving")
    target = Path(path)
    parent = check_output(target, force)
    meta = {
        "format": "optc-artifact",
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "versions": {p: _version(p) for p in ("optc", "torch", "transformers")},
        "source": module.meta.get("source"),
        "pipeline": module.meta.get("pipeline", []),
        "parameters": module.num_parameters(),
        **(extra or {}),
    }
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write '{target}': {exc.strerror}") from None
    try:
        (tmp / IR_FILE).write_text(print_module(module, locations=True))
        save_file(_weights_for_saving(module), str(tmp / WEIGHTS_FILE))
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; give normal permissions
        for f in (IR_FILE, WEIGHTS_FILE, METADATA_FILE):
            os.chmod(tmp / f, umask_mode(0o666))
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / target.name)
            try:
                os.replace(tmp, target)
            except OSError:
                os.replace(old / target.name, target)  # put the previous artifact back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's metadata.json."""
    p = Path(path)
    try:
        meta = json.loads((p / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"'{p}' is not an optc artifact: {METADATA_FILE} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read '{p / METADATA_FILE}': {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "optc-artifact":
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"'{p}' is not an optc artifact (metadata format is {found!r})")
    if not isinstance(meta.get("format_version"), int):
        raise ArtifactError(f"'{p / METADATA_FILE}' has no integer format_version; the artifact is damaged")
    if meta.get("format") != "optc-artifact":
        raise ArtifactError(f"'{p}' is not an optc artifact (metadata format is {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(
            f"'{p}' was written by a newer optc (format {meta['format_version']}); upgrade optc"
        )
    return meta


def load_module(path: str | os.PathLike) -> Module:
    """Read an artifact back into an IR module (verified)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact '{p}' does not exist")
    if not p.is_dir():
        raise ArtifactError(f"'{p}' is not an optc artifact directory")
    read_metadata(p)
    try:
        text = (p / IR_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read '{p / IR_FILE}': {getattr(exc, 'strerror', None) or exc}") from None
    try:
        weights = load_file(str(p / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read '{p / WEIGHTS_FILE}': {exc}") from None
    module = parse_module(text, weights)
    missing = [n for n, prm in module.params.items() if prm.data.is_meta]
    if missing:
        raise ArtifactError(
            f"'{p / WEIGHTS_FILE}' lacks {len(missing)} parameters (first: @{missing[0]}); "
            "the artifact is incomplete"
        )
    verify(module, f"in artifact '{p}'")
    return module


def load(path: str | os.PathLike) -> torch.nn.Module:
    """Load an artifact as a callable module (eager backend); ``.ir`` holds its IR module."""
    from optc.backends.eager import to_eager

    return to_eager(load_module(path))
