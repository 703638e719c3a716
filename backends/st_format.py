"""The sentence-transformers directory format: the pooling a model directory declares, and the
files that make a Hugging Face model directory a sentence-transformers one.

A sentence-transformers directory lists its modules in ``modules.json`` (``Transformer``,
``Pooling``, optionally ``Normalize``); the ``Pooling`` module's ``config.json`` (usually
``1_Pooling/config.json``) says how token states become one vector: ``pooling_mode_mean_tokens``,
``pooling_mode_cls_token``, ``pooling_mode_max_tokens``, ``pooling_mode_mean_sqrt_len_tokens``
(several true: their vectors are concatenated in that library's order, :data:`POOLING_MODES`);
``sentence_bert_config.json`` holds the token limit (``max_seq_length``).

- :func:`read_declaration` reads a directory's declaration (:class:`PoolingDeclaration`);
- :func:`parse_pooling_spec` / :func:`pooling_spec`: the one-line form optc records in
  ``meta["task"]["pooling"]`` for the embedding tasks (``mean+normalize``, ``cls``);
- :func:`declared_pooling`: the pooling of a module, from its recorded embedding task, else
  from its source directory;
- :func:`write_st_files`: ``modules.json``, ``1_Pooling/config.json``, ``2_Normalize/`` and
  ``sentence_bert_config.json`` next to a model written by the hf backend, so that
  ``SentenceTransformer(path, trust_remote_code=True)`` loads it with that pooling.

This module sits with the backends (below :mod:`optc.tasks`, whose
:class:`~optc.tasks.pooling.Pooling` computes the pooling and reads declarations through it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optc.errors import InputError

__all__ = ["POOLING_MODES", "POOLING_KEYS", "EMBEDDING_TASK_KINDS", "TRANSFORMER_MODULE",
           "POOLING_MODULE", "NORMALIZE_MODULE", "ST_FILES", "PoolingDeclaration",
           "read_declaration", "parse_pooling_spec", "pooling_spec", "declared_pooling",
           "source_directories", "source_max_seq_length", "write_st_files"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
"""Token poolings, in the order sentence-transformers concatenates them."""
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                "mean": "pooling_mode_mean_tokens",
                "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
"""The ``1_Pooling/config.json`` flag of each mode."""
_UNSUPPORTED_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"
POOLING_MODULE = "sentence_transformers.models.Pooling"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
EMBEDDING_TASK_KINDS = ("embedding-similarity", "embedding-agreement")
"""Task kinds scored on pooled token states (:data:`optc.tasks.EMBEDDING_KINDS`; a test keeps
the two equal): a module whose recorded task is one of them is a sentence-embedding model."""
ST_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
"""The files :func:`write_st_files` writes (and the empty ``2_Normalize/`` with ``Normalize``)."""


@dataclass(frozen=True)
class PoolingDeclaration:
    """How a model's token states become one embedding, as a directory or a record declares."""

    modes: tuple[str, ...]
    """Poolings of :data:`POOLING_MODES` whose vectors are concatenated, in that order."""
    normalize: bool
    """A ``Normalize`` module scales each embedding to unit length."""
    source: str
    """Where it was read: a Pooling config's path, ``meta["task"]``, ``default``, ..."""

    @property
    def spec(self) -> str:
        """The one-line form (:func:`pooling_spec`)."""
        return pooling_spec(self.modes, self.normalize)


def _check_modes(modes: tuple[str, ...], where: str) -> None:
    if not modes or any(m not in POOLING_MODES for m in modes) or len(set(modes)) != len(modes):
        raise InputError(f"{where}: use one of {', '.join(POOLING_MODES)} (several joined by "
                         "'+', and '+normalize' to scale to unit length)")


def parse_pooling_spec(text: str) -> tuple[tuple[str, ...], bool]:
    """(modes in :data:`POOLING_MODES` order, normalize) of ``mean``, ``cls+max``,
    ``mean+normalize``; :class:`InputError` for anything else."""
    names = [p.strip() for p in str(text).split("+")]
    normalize = "normalize" in names
    modes = tuple(n for n in names if n != "normalize")
    _check_modes(modes, f"pooling={text!r}")
    return tuple(m for m in POOLING_MODES if m in modes), normalize


def pooling_spec(modes: tuple[str, ...], normalize: bool) -> str:
    """``mean``, ``cls+max``, ``mean+normalize``: what :func:`parse_pooling_spec` reads."""
    return "+".join((*modes, "normalize") if normalize else modes)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read '{path}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def read_declaration(directory: str | os.PathLike | None) -> PoolingDeclaration | None:
    """The pooling a sentence-transformers model directory declares (``modules.json`` and its
    ``Pooling`` module's ``config.json``; a ``Normalize`` module sets ``normalize``; no
    ``Pooling`` module: mean), or None when ``directory`` is not a directory or has no
    ``modules.json`` (plain Hugging Face models). A broken or unsupported declaration is an
    :class:`InputError` naming the file."""
    if directory is None or not Path(directory).is_dir():
        return None
    root = Path(directory)
    listing = root / "modules.json"
    if not listing.is_file():
        return None
    modules = _json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputError(f"'{listing}' must be a list of module objects (type, path)")
    types = [str(m.get("type", "")) for m in modules]
    normalize = NORMALIZE_MODULE in types
    pooler = next((m for m in modules if m.get("type") == POOLING_MODULE), None)
    if pooler is None:
        return PoolingDeclaration(("mean",), normalize, str(listing))
    config_file = root / str(pooler.get("path") or "") / "config.json"
    if not config_file.is_file():
        raise InputError(f"'{listing}' lists a Pooling module but '{config_file}' does not "
                         "exist: restore it, or pass the task option pooling=mean|cls|max")
    config = _json(config_file)
    if not isinstance(config, dict):
        raise InputError(f"'{config_file}' must be a JSON object of pooling_mode_* flags")
    unsupported = [k for k in _UNSUPPORTED_KEYS if config.get(k)]
    if unsupported:
        raise InputError(f"'{config_file}': {', '.join(unsupported)} is not supported (optc "
                         f"pools with {', '.join(POOLING_MODES)}): pass the task option pooling=...")
    modes = tuple(mode for mode in POOLING_MODES if config.get(POOLING_KEYS[mode]) is True)
    if not modes:
        raise InputError(f"'{config_file}' turns no pooling mode on (pooling_mode_mean_tokens, "
                         "pooling_mode_cls_token, ...): fix it, or pass pooling=mean|cls|max")
    return PoolingDeclaration(modes, normalize, str(config_file))


def source_directories(meta: Mapping[str, Any]) -> list[Path]:
    """The directories a module came from (``meta["source"]``: its tokenizer's, its model's)."""
    source = meta.get("source")
    if not isinstance(source, Mapping):
        return []
    found: list[Path] = []
    for key in ("tokenizer", "model"):
        ref = source.get(key)
        path = Path(str(ref)) if isinstance(ref, (str, os.PathLike)) and ref else None
        if path is not None and path.is_dir() and path not in found:
            found.append(path)
    return found


def declared_pooling(meta: Mapping[str, Any]) -> PoolingDeclaration | None:
    """The pooling of a module with this ``meta``: the one its embedding task records
    (``meta["task"]["pooling"]`` of a task of :data:`EMBEDDING_TASK_KINDS`), else the one its
    source directory declares (``modules.json``), else mean for a module whose task is an
    embedding task; None for a module that is no sentence-embedding model (no embedding task,
    no declaration)."""
    task = meta.get("task")
    embedding = isinstance(task, Mapping) and task.get("kind") in EMBEDDING_TASK_KINDS
    if embedding and task.get("pooling"):
        modes, normalize = parse_pooling_spec(str(task["pooling"]))
        return PoolingDeclaration(modes, normalize, 'meta["task"]')
    for directory in source_directories(meta):
        found = read_declaration(directory)
        if found is not None:
            return found
    return PoolingDeclaration(("mean",), False, "default") if embedding else None


def source_max_seq_length(meta: Mapping[str, Any]) -> int | None:
    """``max_seq_length`` of the source directory's ``sentence_bert_config.json``, or None."""
    for directory in source_directories(meta):
        path = directory / "sentence_bert_config.json"
        if path.is_file():
            value = _json(path)
            length = value.get("max_seq_length") if isinstance(value, dict) else None
            if isinstance(length, int) and not isinstance(length, bool) and length > 0:
                return length
    return None


def write_st_files(directory: str | os.PathLike, pooling: PoolingDeclaration, width: int,
                   max_seq_length: int) -> list[Path]:
    """Write the sentence-transformers files into the model directory ``directory``:
    ``modules.json`` (Transformer at the root, Pooling in ``1_Pooling``, Normalize in
    ``2_Normalize`` when ``pooling.normalize``), the Pooling config (``width``: the token
    states' width) and ``sentence_bert_config.json`` (``max_seq_length``, no lower-casing of
    its own: the tokenizer does what it does). Returns the files written."""
    root = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_MODULE},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_MODULE}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE_MODULE})
        (root / "2_Normalize").mkdir(exist_ok=True)
    config: dict[str, Any] = {"word_embedding_dimension": int(width)}
    config.update({POOLING_KEYS[m]: m in pooling.modes for m in POOLING_MODES})
    files = {"modules.json": modules,
             "1_Pooling/config.json": config,
             "sentence_bert_config.json": {"max_seq_length": int(max_seq_length),
                                           "do_lower_case": False}}
    written = []
    for name, value in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
