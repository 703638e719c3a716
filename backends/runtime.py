"""Load any backend's output as one callable, with the task and tokenizer it records.

    loaded = open_output("model.onnx", threads=2)    # or an artifact directory, a .pt file
    outputs = loaded.model(**inputs)                  # {"last_hidden_state": ...} / {"logits": ...}
    tokenizer = loaded.tokenizer()                    # the recorded one, or tokenizer=...

Every optc output records its task and tokenizer (:mod:`optc.backends.record`): an artifact in
its IR's meta, an ``.onnx`` file in its ``metadata_props``, a TorchScript ``.pt`` file in its
extra files (the tokenizer's files travel inside both). :func:`open_output` reads any of them
(or takes an IR :class:`~optc.ir.core.Module` or a compiled :class:`EagerModule`) into a
:class:`LoadedOutput`: the model with the eager backend's calling convention (named int64
tensors in, a dict of tensors out), its input names and the recorded ``meta``.

Running a list of texts through it (tokenize, sort by length, pad each batch to its longest
row, pool, put back in input order) is :class:`optc.tasks.runtime.Runner`, one layer up, as it
uses the task layer's batching and pooling.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optc.artifacts import is_artifact, load_module
from optc.backends.eager import EagerModule, to_eager
from optc.backends.onnx import OnnxModule
from optc.backends.record import OutputRecord, load_torchscript, read_onnx_record
from optc.errors import InputError
from optc.frontends.huggingface import load_tokenizer
from optc.ir.core import Module

__all__ = ["LoadedOutput", "OUTPUT_KINDS", "output_kind", "open_output", "open_onnx"]

OUTPUT_KINDS = ("artifact", "onnx", "torchscript", "module")
"""What :func:`open_output` loads: an optc artifact directory, an ``.onnx`` file, a TorchScript
file (``.pt``, ``.ts``, ``.jit``), or an in-memory IR module / compiled module."""

_TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".jit")


@dataclass
class LoadedOutput:
    """A backend's output, loaded: the model, what it takes and what it records."""

    kind: str
    """One of :data:`OUTPUT_KINDS`."""
    model: Callable[..., Any]
    """Called with named int64 tensors (``input_ids``, ``attention_mask``, ...), returns a dict of
    tensors (``last_hidden_state``, ``logits``, ...)."""
    input_names: tuple[str, ...]
    """The model's inputs, in its order."""
    meta: dict[str, Any]
    """The recorded ``meta``: ``task`` (spec, labels, max length, pooling) and ``source``
    (with the tokenizer's path or id)."""
    where: str
    """The path it was loaded from (or ``<module>``), for messages."""
    record: OutputRecord | None = None
    """ONNX and TorchScript: the record the file carries (its tokenizer's files included)."""

    def tokenizer(self, ref: str | os.PathLike | Any | None = None) -> Any:
        """``ref`` (a tokenizer object, or a directory or id to load one from), else the
        tokenizer files the output carries, else the tokenizer path or id it records. Raises
        :class:`InputError` when none is known or it does not load."""
        if ref is not None and not isinstance(ref, (str, os.PathLike)):
            return ref  # a tokenizer object
        if ref is None and self.record is not None and self.record.tokenizer_files:
            with tempfile.TemporaryDirectory(prefix="optc-tokenizer-") as tmp:
                try:
                    return load_tokenizer(self.record.write_tokenizer(tmp))
                except InputError as exc:
                    raise InputError(f"the tokenizer recorded in {self.where} does not load "
                                     f"({str(exc).split(': pass')[0]}): pass tokenizer=DIR"
                                     ) from None
        if ref is None:
            source = self.meta.get("source")
            ref = source.get("tokenizer") if isinstance(source, dict) else None
        if ref is None:
            raise InputError(f"{self.where} records no tokenizer: pass tokenizer=DIR (the model "
                             "directory or a tokenizer directory)")
        return load_tokenizer(ref)

    @property
    def max_length(self) -> int | None:
        """The token limit the model was fine-tuned with (``meta["task"]["max_length"]``), or
        None when it records none."""
        task = self.meta.get("task")
        value = task.get("max_length") if isinstance(task, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else None


def output_kind(path: str | os.PathLike) -> str | None:
    """``artifact``, ``onnx`` or ``torchscript`` for a path :func:`open_output` loads, else None."""
    p = Path(path)
    if is_artifact(p):
        return "artifact"
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix in _TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    return None


def open_output(target: str | os.PathLike | Module | EagerModule,
                threads: int | None = None) -> LoadedOutput:
    """Load ``target`` (see :data:`OUTPUT_KINDS`) on the CPU. ``threads``: ONNX Runtime's
    intra-op threads for ``.onnx`` files; for the torch backends it sets torch's (process-wide)
    thread count. A path that is none of these, or does not load, is an :class:`InputError`."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InputError(f"threads must be a positive integer, not {threads!r}")
    if isinstance(target, (Module, EagerModule)):
        eager = target if isinstance(target, EagerModule) else to_eager(target)
        _torch_threads(threads)
        return LoadedOutput("module", eager, tuple(v.name for v in eager.ir.graph.inputs),
                            eager.ir.meta, "<module>")
    where = f"'{target}'"
    kind = output_kind(target)
    if kind is None:
        raise InputError(f"{where} is not an optc output: give an artifact directory, an .onnx "
                         f"file or a TorchScript file ({', '.join(_TORCHSCRIPT_SUFFIXES)})")
    if not Path(target).exists():
        raise InputError(f"{where} does not exist")
    if kind == "artifact":
        module = load_module(target)
        eager = to_eager(module, module.meta.get("sparse_kernel", "dense"))
        _torch_threads(threads)
        return LoadedOutput(kind, eager, tuple(v.name for v in module.graph.inputs),
                            module.meta, where)
    if kind == "onnx":
        runner, record = open_onnx(target, threads)
        return LoadedOutput(kind, runner, tuple(runner.input_names), record.meta, where, record)
    scripted, record = load_torchscript(target)
    scripted.eval()
    _torch_threads(threads)
    names = tuple(a.name for a in scripted.forward.schema.arguments[1:])
    return LoadedOutput(kind, scripted, names, record.meta, where, record)


def open_onnx(target: str | os.PathLike, threads: int | None = None) -> tuple[OnnxModule, Any]:
    """(ONNX Runtime session, the record optc wrote in its metadata) of the ``.onnx`` file
    ``target``; a file ONNX Runtime cannot load is one :class:`InputError` line."""
    where = f"'{target}'"
    try:
        runner = OnnxModule(target, threads=threads)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load ONNX model {where}: {first}") from None
    return runner, read_onnx_record(runner.session.get_modelmeta().custom_metadata_map, where)


def _torch_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
