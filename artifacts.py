"""optc artifacts: a directory holding a compiled module, loadable without the source model.

    OUT/
      model.optc          the IR in textual form (with source locations)
      weights.safetensors parameters, by IR parameter name
      metadata.json       format version, optc/torch/transformers versions, source model,
                          pipeline, backend

Sparse weights (parameters with a ``sparsity`` attribute) are stored compressed when that is
smaller: ``NAME#values`` (the nonzero entries, in row-major order, at the weight's dtype) and
``NAME#mask`` (a bitmask of the nonzero positions, packed 8 per byte, numpy bit order "big"),
with each compressed weight's shape and dtype in the safetensors header metadata under
``optc.sparse`` (JSON). "Nonzero" compares bit patterns, so loading rebuilds every weight
bit-exactly (``-0.0`` included). Format version 2 added them.

Loading parses text, JSON and safetensors only: nothing is ever unpickled. Saving writes into a
temporary sibling directory and swaps it into place atomically, so a failure or an interrupt
leaves no partial output; an existing artifact is replaced only with ``force=True`` (and never
anything that is not an optc artifact, see :mod:`optc.outputs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from optc.errors import (
    ArtifactError,
    InputError,
    OutputError,
    PipelineSpecError,
    VerificationError,
)
from optc.ir.core import Module
from optc.ir.parser import parse_module
from optc.ir.printer import print_module
from optc.ir.verifier import verify
from optc.outputs import atomic_directory, check_output, umask_mode

__all__ = ["save", "load_module", "is_artifact", "FORMAT_VERSION"]

FORMAT_VERSION = 2
"""Format written and newest read (2 added compressed sparse weights; 1 is read as before)."""
_SPARSE_KEY = "optc.sparse"
_BITS_DTYPE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
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


def _as_module(obj: Any, what: str = "optc.save") -> Module:
    if isinstance(obj, Module):
        return obj
    ir = getattr(obj, "ir", None)
    if isinstance(ir, Module):
        return ir
    if isinstance(obj, torch.nn.Module):
        raise InputError(
            f"{what} needs an optc IR module, got the torch module {type(obj).__name__}: capture "
            "it first (module = optc.capture(model)) or pass a module from optc.load"
        )
    raise InputError(f"{what} needs an optc IR module (from optc.capture or optc.load_module), "
                     f"got {type(obj).__name__}")


def _check_path(path: Any, what: str) -> Path:
    if isinstance(path, (str, os.PathLike)) and str(path):
        return Path(path)
    raise InputError(f"{what} needs the path of an artifact directory (a str or os.PathLike), "
                     f"got {path!r}")


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


def _compress_sparse(module: Module, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Replace sparse weights in ``tensors`` by values + bitmask where that is smaller; returns
    the safetensors header metadata describing them (empty when none was compressed)."""
    import numpy as np

    from optc.ir.types import dtype_name

    described: dict[str, Any] = {}
    for name, param in module.params.items():
        data = tensors[name]
        if "sparsity" not in param.attrs or data.element_size() not in _BITS_DTYPE or data.dtype == torch.bool:
            continue
        flat = data.reshape(-1)
        nonzero = flat.view(_BITS_DTYPE[data.element_size()]) != 0
        values = flat[nonzero]
        mask = torch.from_numpy(np.packbits(nonzero.numpy()))
        if values.numel() * values.element_size() + mask.numel() >= flat.numel() * data.element_size():
            continue
        del tensors[name]
        tensors[name + "#values"], tensors[name + "#mask"] = values.contiguous(), mask
        described[name] = {"shape": list(data.shape), "dtype": dtype_name(data.dtype)}
    return {_SPARSE_KEY: json.dumps(described, sort_keys=True)} if described else {}


def _decompress_sparse(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Rebuild the compressed weights of a loaded safetensors file in place (bit-exact)."""
    import numpy as np
    from safetensors import safe_open

    from optc.ir.types import dtype_from_name

    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    if _SPARSE_KEY not in header:
        return
    try:
        described = json.loads(header[_SPARSE_KEY])
        for name, info in described.items():
            shape, dtype = [int(d) for d in info["shape"]], dtype_from_name(info["dtype"])
            values, bits = weights.pop(name + "#values"), weights.pop(name + "#mask")
            count = int(np.prod(shape)) if shape else 1
            nonzero = torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool))
            if values.dtype != dtype or int(nonzero.sum()) != values.numel():
                raise ValueError(f"@{name}: {values.numel()} values for {int(nonzero.sum())} mask bits")
            dense = torch.zeros(count, dtype=dtype)
            dense[nonzero] = values
            weights[name] = dense.reshape(shape)
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"'{path}' has damaged compressed sparse weights ({exc}); rebuild the "
                            "artifact with optc") from None


def save(obj: Any, path: str | os.PathLike, *, force: bool = False, backend: str = "eager",
         extra: dict[str, Any] | None = None,
         inputs: Iterable[str | os.PathLike] = (),
         check: Callable[[Module, Path, Path], None] | None = None) -> Path:
    """Save an IR module (or a module returned by :func:`load`) as an artifact directory.

    An existing ``path`` is replaced only with ``force=True`` and only when it is an optc
    artifact that is not one of ``inputs`` (the paths the module was loaded from) and does not
    contain one (see :func:`optc.outputs.check_output`). The artifact is written to a hidden
    temporary directory and swapped into place atomically. ``check(module, written, path)``
    runs on the complete temporary directory before the swap; if it raises, the directory is
    removed and ``path`` is left as it was (``optc.save`` passes the backends' self-check).
    """
    from safetensors.torch import save_file

    if backend != "eager":  # recorded in metadata.json: it must say what the directory is
        raise PipelineSpecError(f"optc.save writes an optc artifact, the eager backend's output; "
                                f"backend={backend!r} is not one: valid: 'eager' (write other "
                                "backends with optc.backends.write_backend(module, backend, path))")
    module = _as_module(obj)
    target = _check_path(path, "optc.save")
    inputs = list(inputs)
    check_output(target, force, kind="artifact", inputs=inputs)  # before any slow work
    verify(module, "before saving")
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
    tensors = _weights_for_saving(module)
    header = _compress_sparse(module, tensors)
    with atomic_directory(target, force, inputs=inputs) as tmp:
        try:
            (tmp / IR_FILE).write_text(print_module(module, locations=True))
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=header or None)
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            for f in (IR_FILE, WEIGHTS_FILE, METADATA_FILE):
                os.chmod(tmp / f, umask_mode(0o666))
        except OSError as exc:
            raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from None
        if check is not None:
            check(module, tmp, target)
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


def _unknown_ops(module: Module) -> list[str]:
    """Op names in ``module`` that neither a registered op nor a torch op resolves, in order."""
    from optc.errors import IRError
    from optc.ir.ops import get_op
    from optc.ir.targets import resolve

    unknown: list[str] = []
    for node in module.graph:
        if node.op in unknown or get_op(node.op) is not None:
            continue
        try:
            resolve(node.op)
        except IRError:
            unknown.append(node.op)
    return unknown


def load_module(path: str | os.PathLike) -> Module:
    """Read an artifact back into an IR module (verified)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = _check_path(path, "optc.load")
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
        _decompress_sparse(p / WEIGHTS_FILE, weights)
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read '{p / WEIGHTS_FILE}': {exc}") from None
    module = parse_module(text, weights)
    missing = [n for n, prm in module.params.items() if prm.data.is_meta]
    if missing:
        raise ArtifactError(
            f"'{p / WEIGHTS_FILE}' lacks {len(missing)} parameters (first: @{missing[0]}); "
            "the artifact is incomplete"
        )
    unknown = _unknown_ops(module)
    if unknown:
        from optc.ir.ops import all_ops
        from optc.ir.targets import unknown_op_message

        raise ArtifactError(
            f"artifact '{p}' uses {unknown_op_message(unknown[0], list(all_ops()))}: it was "
            "written by a newer optc or with a plugin op that is not installed here (install "
            "that optc or plugin), or its model.optc was edited (fix it, or rebuild the "
            "artifact with this optc)")
    try:
        verify(module, f"in artifact '{p}'")
    except VerificationError as exc:
        raise ArtifactError(f"artifact '{p}' is damaged ({exc.problems[0]}); rebuild it with "
                            "optc or fix its model.optc") from exc
    return module
