"""The ``onnx-st`` backend: a sentence-transformers directory whose model is optc's ONNX file.

    export_st_onnx(module, "out")   # onnx/model.onnx, config.json, tokenizer, pooling files

``SentenceTransformer("out", backend="onnx")`` loads it and encodes with it (on a machine
without optc, through optimum-onnx and ONNX Runtime). What sentence-transformers' ONNX backend
needs, and where this writer puts it:

- ``onnx/model.onnx``: the file it looks for when no ``file_name`` is given (it searches
  ``model.onnx`` at the root, then ``onnx/model.onnx``). It is the file ``--backend onnx``
  writes (same lowering, fused attention, int8 as standard ONNX quantized ops), so fp32, int8
  and pruned models (per-layer head counts and FFN widths) all load. Its inputs are the IR's
  token inputs (``input_ids``, ``attention_mask``, ``token_type_ids`` where the model has
  them): optimum's ``ORTModelForFeatureExtraction`` feeds the tokenizer's tensors by those
  names. Its first output is ``last_hidden_state`` (the token states), the name optimum reads
  (it falls back to the first output); other outputs (BERT's ``pooler_output``) stay and are
  ignored. A model whose outputs are no token states (a task head: ``logits``) is refused.
- ``config.json``: sentence-transformers reads it with transformers' ``AutoConfig`` before
  optimum opens the ONNX file, so it is the source checkpoint's config (its ``model_type``:
  ``bert``, ``mpnet``, ...), with ``num_hidden_layers`` set to the layers left, the head count
  and FFN width set where every layer has the same, and the per-layer sizes in
  ``num_attention_heads_per_layer`` / ``attention_head_size_per_layer`` /
  ``intermediate_size_per_layer`` (the hf backend's names; transformers keeps unknown keys as
  attributes). No weights file sits beside it: the config describes the ONNX file and cannot
  be loaded as a PyTorch model by mistake. ``config["optc"]`` records the format, the ONNX
  file, the source and the task (``optc eval`` and ``--force`` recognize the directory by it).
- the tokenizer's files, copied from the recorded tokenizer directory (refused without one:
  sentence-transformers cannot tokenize without them);
- ``modules.json``, ``1_Pooling/config.json``, ``2_Normalize/`` and
  ``sentence_bert_config.json`` (:func:`~optc.backends.st_format.write_st_files`) with the
  pooling the module records or its source declares, else mean (sentence-transformers' own
  default for a plain model).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from optc.backends.hf_families import FAMILIES
from optc.backends.model_inputs import seq_range
from optc.backends.onnx import export_onnx
from optc.backends.record import TOKENIZER_FILES
from optc.backends.st_format import (
    PoolingDeclaration,
    declared_pooling,
    source_directories,
    source_max_seq_length,
    write_st_files,
)
from optc.errors import BackendError, InputError
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.outputs import atomic_directory, check_output

__all__ = ["ONNX_FILE", "TOKEN_STATES", "FORMAT", "export_st_onnx", "st_onnx_config",
           "st_onnx_pooling", "st_onnx_refusal", "st_onnx_file"]

ONNX_FILE = "onnx/model.onnx"
"""Where sentence-transformers' ONNX backend finds the model without a ``file_name``."""
TOKEN_STATES = "last_hidden_state"
"""The output optimum's ``ORTModelForFeatureExtraction`` reads as the token states."""
FORMAT = "onnx-st"
"""``config["optc"]["format"]`` of a directory this backend wrote."""
_CONFIG_DROP = ("auto_map", "_name_or_path", "transformers_version", "quantization_config",
                "optc", "torch_dtype", "dtype")
"""Source config keys never copied (they describe the source checkpoint's files)."""


def _refuse(message: str) -> BackendError:
    return BackendError(f"onnx-st backend: {message}")


def _tokenizer_dir(module: Module) -> Path | None:
    ref = (module.meta.get("source") or {}).get("tokenizer")
    path = Path(str(ref)) if ref else None
    return path if path is not None and path.is_dir() else None


def _source_config(module: Module) -> dict[str, Any]:
    """The source checkpoint's ``config.json`` (model directory first), or {}."""
    for directory in source_directories(module.meta):
        path = directory / "config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(config, dict):
                return config
    return {}


def _check_module(module: Module) -> tuple[int, Path]:
    """Refuse what sentence-transformers cannot encode with; (the token states' width, the
    tokenizer directory)."""
    outputs = module.graph.outputs
    if TOKEN_STATES not in outputs:
        raise _refuse(f"sentence-transformers pools the token states ('{TOKEN_STATES}'), and "
                      f"this model outputs {', '.join(outputs) or 'nothing'} (a task head): "
                      "write it with --backend onnx, or load the base model (--head base)")
    shape = outputs[TOKEN_STATES].tensor_type.shape
    if len(shape) != 3 or not isinstance(shape[-1], int):
        raise _refuse(f"'{TOKEN_STATES}' has shape {tuple(shape)}, not (batch, seq, width)")
    tokenizer = _tokenizer_dir(module)
    if tokenizer is None:
        raise _refuse("no tokenizer directory is recorded (meta source.tokenizer), and "
                      "sentence-transformers needs the tokenizer's files in the directory")
    return int(shape[-1]), tokenizer


def st_onnx_refusal(module: Module) -> str | None:
    """Why this backend cannot write ``module`` (its one-line refusal), or None when it can."""
    try:
        _check_module(module)
        st_onnx_config(module)
    except BackendError as exc:
        return str(exc)
    return None


def st_onnx_pooling(module: Module) -> PoolingDeclaration:
    """The pooling the directory declares: the module's recorded embedding task's, else its
    source directory's, else mean."""
    try:
        found = declared_pooling(module.meta)
    except InputError as exc:
        raise _refuse(f"the model's sentence-transformers pooling is unreadable: {exc}") from None
    return found or PoolingDeclaration(("mean",), False, "default")


def st_onnx_config(module: Module) -> dict[str, Any]:
    """``config.json`` of the directory (see the module doc); refuses a module whose source
    architecture is unknown (transformers' ``AutoConfig`` needs its ``model_type``)."""
    source = dict(module.meta.get("source") or {})
    config = {k: v for k, v in _source_config(module).items() if k not in _CONFIG_DROP}
    model_type = str(source.get("model_type") or config.get("model_type") or "")
    model_type = model_type.removeprefix("optc-")  # a model loaded from an optc hf export
    if not model_type:
        raise _refuse("the source architecture is unknown (no model_type in meta['source'] or "
                      "its config.json), and transformers' AutoConfig needs it to load the "
                      "directory")
    family = FAMILIES.get(model_type)
    names = family.config_names if family is not None else {}
    structure = analyze(module)
    heads = [layer.attention.num_heads if layer.attention else 0 for layer in structure.layers]
    head_dims = [layer.attention.head_dim if layer.attention else 0 for layer in structure.layers]
    widths = [layer.ffn.width if layer.ffn else 0 for layer in structure.layers]
    config["model_type"] = model_type
    if any(str(a).startswith("Optc") for a in config.get("architectures") or []):
        config.pop("architectures")  # optc's generated classes: not in this directory
    config[names.get("num_hidden_layers", "num_hidden_layers")] = len(structure.layers)
    if len(set(heads)) == 1 and heads[0]:
        config[names.get("num_attention_heads", "num_attention_heads")] = heads[0]
    if len(set(widths)) == 1 and widths[0]:
        config[names.get("intermediate_size", "intermediate_size")] = widths[0]
    config.update({"num_attention_heads_per_layer": heads,
                   "attention_head_size_per_layer": head_dims,
                   "intermediate_size_per_layer": widths})
    task = module.meta.get("task")
    config["optc"] = {"format": FORMAT, "onnx_file": ONNX_FILE, "source": source.get("model"),
                      "layer_ids": [layer.id for layer in structure.layers],
                      **({"task": task} if isinstance(task, dict) else {})}
    return config


def _max_seq_length(module: Module) -> int:
    """sentence_bert_config.json's token limit: the source's, else the length the model was
    trained with, else the longest sequence the model takes (its position table), at most 512."""
    found = source_max_seq_length(module.meta)
    if found is None:
        task = module.meta.get("task")
        found = task.get("max_length") if isinstance(task, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found <= 0:
        high = seq_range(module)[1]
        found = min(512, high) if high else 512
    return found


def export_st_onnx(module: Module, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``module`` as a sentence-transformers directory for its ONNX backend (atomically;
    see the module doc). Raises :class:`BackendError` for a model with a task head, no
    recorded tokenizer directory, or an unknown source architecture."""
    target = Path(path)
    check_output(target, force, kind="artifact")  # fail before any work
    width, tokenizer = _check_module(module)
    config = st_onnx_config(module)
    pooling = st_onnx_pooling(module)
    with atomic_directory(target, force) as tmp:
        (tmp / ONNX_FILE).parent.mkdir(parents=True)
        export_onnx(module, tmp / ONNX_FILE)
        try:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
            for name in TOKENIZER_FILES:
                if (tokenizer / name).is_file():
                    shutil.copyfile(tokenizer / name, tmp / name)
            write_st_files(tmp, pooling, width, _max_seq_length(module))
        except OSError as exc:
            raise _refuse(f"cannot write '{target}': {exc}") from None
    return target


def st_onnx_file(directory: str | os.PathLike) -> Path | None:
    """The ONNX file of a directory this backend wrote (``config["optc"]["format"]`` is
    :data:`FORMAT`), or None for anything else."""
    root = Path(directory)
    if not (root / "config.json").is_file():
        return None
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = config.get("optc") if isinstance(config, dict) else None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    name = record.get("onnx_file")
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    file = root / name
    return file if file.is_file() else None
