"""What an ONNX or TorchScript output carries besides the model: its task and its tokenizer.

An optc artifact keeps the module's ``meta`` (task, source, tokenizer) in its IR text; the
single-file backends write the same facts into the file, so that ``optc eval OUT --data D``
needs nothing else:

- ONNX: ``metadata_props`` (ONNX Runtime reads and ignores them) ``optc.json`` (the record
  below, JSON), and for other readers one key per fact: ``optc.task`` (the task spec that
  ``get_task`` accepts, e.g. ``text-classification{text_column=review,labels=neg,pos}``),
  ``optc.labels`` (JSON list), ``optc.max_length``, ``optc.pooling``, ``optc.tokenizer`` (the
  tokenizer's source path or id); ``optc.tokenizer_files`` holds the tokenizer's files.
- TorchScript: the extra files ``optc.json`` (the record) and ``optc/tokenizer_files.json``
  (``torch.jit.load(path, _extra_files={"optc.json": ""})`` reads them).

The record is ``{"format": "optc-output", "version": 1, "task": meta["task"] or null,
"tokenizer": source path or id or null, "source": the source model}``; ``meta["task"]`` holds
the spec (``spec``), labels, metric, pooling and the max length it was fine-tuned with
(``max_length``). The tokenizer files (``tokenizer.json``, ``vocab.txt``, ...) are copied from
the recorded tokenizer directory into the file itself, as JSON ``{name: {"text": ...}}`` (or
``{"base64": ...}`` for binary files such as sentencepiece models), so the output stays one
self-contained file; a tokenizer recorded by hub id only is recorded by id.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optc.errors import InputError
from optc.ir.core import Module

__all__ = ["RECORD_KEY", "TOKENIZER_KEY", "TORCHSCRIPT_TOKENIZER_FILE", "TOKENIZER_FILES",
           "OutputRecord", "output_record", "onnx_metadata", "torchscript_extra_files",
           "read_onnx_record", "load_torchscript"]

RECORD_KEY = "optc.json"
"""ONNX ``metadata_props`` key and TorchScript extra file holding the record (JSON)."""
TOKENIZER_KEY = "optc.tokenizer_files"
"""ONNX ``metadata_props`` key holding the tokenizer's files (JSON)."""
TORCHSCRIPT_TOKENIZER_FILE = "optc/tokenizer_files.json"
"""TorchScript extra file holding the tokenizer's files (JSON)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")
"""Files copied from a tokenizer directory (those that exist)."""
_FORMAT, _VERSION = "optc-output", 1


@dataclass
class OutputRecord:
    """What an ONNX or TorchScript file records (empty for files optc did not write)."""

    task: dict[str, Any] | None = None
    """``meta["task"]`` of the module it came from: ``spec``, labels, ``max_length``, ..."""
    tokenizer: str | None = None
    """The tokenizer's source path or id, as the module recorded it."""
    source: Any = None
    """The source model the module was captured from."""
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    """The tokenizer's files, by name (empty: only ``tokenizer`` is known)."""

    @property
    def meta(self) -> dict[str, Any]:
        """A module ``meta`` with the recorded task and tokenizer (what ``task_from_meta`` and
        ``trained_max_length`` read)."""
        meta: dict[str, Any] = {"source": {"tokenizer": self.tokenizer}}
        if self.task is not None:
            meta["task"] = self.task
        return meta

    def write_tokenizer(self, directory: str | os.PathLike) -> Path | None:
        """Write the recorded tokenizer files into ``directory``; None when none are recorded."""
        if not self.tokenizer_files:
            return None
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name, data in self.tokenizer_files.items():
            (target / name).write_bytes(data)
        return target


def output_record(module: Module) -> dict[str, Any]:
    """The record an ONNX or TorchScript output of ``module`` carries (JSON-ready)."""
    source = module.meta.get("source")
    tokenizer = source.get("tokenizer") if isinstance(source, dict) else None
    task = module.meta.get("task")
    return {"format": _FORMAT, "version": _VERSION,
            "task": task if isinstance(task, dict) else None,
            "tokenizer": str(tokenizer) if tokenizer else None,
            "source": source.get("model") if isinstance(source, dict) else source}


def _tokenizer_files(module: Module) -> dict[str, dict[str, str]]:
    """The recorded tokenizer directory's files, JSON-ready (empty when it is not a directory)."""
    ref = output_record(module)["tokenizer"]
    directory = Path(ref) if ref else None
    if directory is None or not directory.is_dir():
        return {}
    files: dict[str, dict[str, str]] = {}
    for name in TOKENIZER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            files[name] = {"text": data.decode("utf-8")}
        except UnicodeDecodeError:
            files[name] = {"base64": base64.b64encode(data).decode("ascii")}
    return files


def onnx_metadata(module: Module) -> dict[str, str]:
    """The ``metadata_props`` entries recording ``module``'s task and tokenizer."""
    record = output_record(module)
    props = {RECORD_KEY: json.dumps(record, sort_keys=True)}
    task = record["task"] or {}
    flat = {"optc.task": task.get("spec"), "optc.max_length": task.get("max_length"),
            "optc.pooling": task.get("pooling"), "optc.tokenizer": record["tokenizer"]}
    if task.get("labels") is not None:
        flat["optc.labels"] = json.dumps(task["labels"])
    props.update({k: str(v) for k, v in flat.items() if v is not None})
    files = _tokenizer_files(module)
    if files:
        props[TOKENIZER_KEY] = json.dumps(files, sort_keys=True)
    return props


def torchscript_extra_files(module: Module) -> dict[str, bytes]:
    """The ``_extra_files`` recording ``module``'s task and tokenizer."""
    extra = {RECORD_KEY: json.dumps(output_record(module), sort_keys=True).encode()}
    files = _tokenizer_files(module)
    if files:
        extra[TORCHSCRIPT_TOKENIZER_FILE] = json.dumps(files, sort_keys=True).encode()
    return extra


def _parse(where: str, record_text: str | bytes, files_text: str | bytes) -> OutputRecord:
    if not record_text:
        return OutputRecord()
    try:
        record = json.loads(record_text)
        files = json.loads(files_text) if files_text else {}
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError(f"format is {record.get('format') if isinstance(record, dict) else record!r}")
        if int(record.get("version", 0)) > _VERSION:
            raise InputError(f"{where} was written by a newer optc (record version "
                             f"{record['version']}); upgrade optc")
        decoded = {str(name): (entry["text"].encode("utf-8") if "text" in entry
                               else base64.b64decode(entry["base64"]))
                   for name, entry in files.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{where} has a damaged optc record ({exc}); write it again with "
                         "optc") from None
    for name in decoded:
        if name not in TOKENIZER_FILES:
            raise InputError(f"{where} records an unexpected tokenizer file '{name}'; write it "
                             "again with optc")
    task = record.get("task")
    tokenizer = record.get("tokenizer")
    return OutputRecord(task=task if isinstance(task, dict) else None,
                        tokenizer=str(tokenizer) if tokenizer else None,
                        source=record.get("source"), tokenizer_files=decoded)


def read_onnx_record(metadata: dict[str, str], where: str = "the ONNX file") -> OutputRecord:
    """The record in an ONNX model's ``metadata_props`` (e.g. ONNX Runtime's
    ``session.get_modelmeta().custom_metadata_map``)."""
    return _parse(where, metadata.get(RECORD_KEY, ""), metadata.get(TOKENIZER_KEY, ""))


def load_torchscript(path: str | os.PathLike) -> tuple[Any, OutputRecord]:
    """A TorchScript file loaded on the CPU, and the record it carries."""
    import torch

    extra = {RECORD_KEY: "", TORCHSCRIPT_TOKENIZER_FILE: ""}
    try:
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError subclasses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load TorchScript file '{path}': {first}") from None
    return scripted, _parse(f"'{path}'", extra[RECORD_KEY], extra[TORCHSCRIPT_TOKENIZER_FILE])
