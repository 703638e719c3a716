"""Reading back a directory the Hugging Face backend wrote (:mod:`optc.backends.hf`).

optc never runs the modeling file it finds there: it recognizes its own file byte for byte
(:func:`load_optc_classes`) and runs :func:`~optc.backends.hf_families.modeling_source`.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

from optc.backends.hf_families import FAMILIES, family_heads, modeling_file_name, modeling_source
from optc.errors import InputError, OptcError
from optc.ir.analysis import analyze, set_unit_ids
from optc.ir.core import Module
from optc.ir.ids import parse_ids

__all__ = ["is_optc_export", "load_optc_classes", "read_config", "exported_class",
           "load_exported", "restore_stable_ids"]


def is_optc_export(config: dict[str, Any]) -> bool:
    """Whether a config.json (as a dict) says the directory was written by this backend."""
    return isinstance(config.get("optc"), dict) and "modeling_file" in config["optc"]


def load_optc_classes(directory: str | os.PathLike, config: dict[str, Any]) -> types.ModuleType:
    """The classes of an exported directory, from optc's own source, never from the file.

    The modeling file must equal, byte for byte, what this optc writes for the recorded family
    (a hash in config.json proves nothing: whoever edits the file can edit the hash). Then the
    module is built from :func:`modeling_source` itself; otherwise :class:`InputError`.
    """
    meta = config.get("optc") or {}
    family = FAMILIES.get(str(meta.get("source_model_type")))
    name = str(meta.get("modeling_file"))
    if family is None or name != modeling_file_name(family):
        raise InputError(f"'{directory}' names an optc modeling file '{name}' for a family this "
                         f"optc does not write ({meta.get('source_model_type')})")
    file = Path(directory) / name
    source = modeling_source(family)
    try:
        on_disk = file.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read '{file}': {exc.strerror or exc}") from None
    if on_disk != source.encode():
        raise InputError(
            f"'{file}' differs from the modeling file this optc generates, so optc will not run "
            "it (it never runs remote code): load the model yourself (transformers, "
            "trust_remote_code=True) and pass it to optc.capture, or re-export it with this optc")
    module_name = f"optc_generated_{family.model_type.replace('-', '_')}"
    generated = sys.modules.get(module_name)
    if generated is None or getattr(generated, "__optc_source__", None) != source:
        generated = types.ModuleType(module_name)
        generated.__file__ = str(file)
        exec(compile(source, str(file), "exec"), generated.__dict__)  # noqa: S102 - optc's own code
        generated.__optc_source__ = source
        sys.modules[module_name] = generated
    return generated


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a model directory as a dict (:class:`InputError` when unreadable)."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read '{path}': {exc}") from None
    if not isinstance(config, dict):
        raise InputError(f"'{path}' is not a JSON object")
    return config


def exported_class(directory: str | os.PathLike, config: dict[str, Any],
                   suffix: str | None = None) -> type:
    """The generated class of an export for head ``suffix`` (default: the recorded one)."""
    generated = load_optc_classes(directory, config)
    family = FAMILIES[config["optc"]["source_model_type"]]
    if suffix is None:
        arch = (config.get("architectures") or [f"Optc{family.name}Model"])[0]
        suffix = str(arch).removeprefix(f"Optc{family.name}")
    if suffix not in family_heads(family):
        raise InputError(f"'{directory}': no generated {family.model_type} class for the head "
                         f"'{suffix}' (choose one of {', '.join(family_heads(family))})")
    return getattr(generated, f"Optc{family.name}{suffix}")


def load_exported(directory: str | os.PathLike) -> torch.nn.Module:
    """Load an exported directory with its generated classes (from optc's own source), in
    eval mode; what the self-check and optc's Hugging Face frontend run."""
    config = read_config(directory)
    if not is_optc_export(config):
        raise InputError(f"'{directory}' was not written by optc's hf backend (its config.json "
                         "has no 'optc' section)")
    cls = exported_class(directory, config)
    return cls.from_pretrained(str(directory), use_safetensors=True).eval()


def restore_stable_ids(module: Module, record: Any) -> bool:
    """Give a module captured from an export the stable ids its config records (``optc``:
    ``layer_ids``, ``head_ids_per_layer``, ``neuron_ids_per_layer``), so that ids keep naming
    the layers, heads and neurons of the model first captured. Returns False (and changes
    nothing) when the record does not fit the module's layers."""
    if not isinstance(record, dict):
        return False
    layers = analyze(module).layers
    ids, heads, neurons = (record.get(k) for k in ("layer_ids", "head_ids_per_layer",
                                                   "neuron_ids_per_layer"))
    if not all(isinstance(v, list) and len(v) == len(layers) for v in (ids, heads, neurons)):
        return False
    plan = []
    try:
        for layer, layer_id, head_text, neuron_text in zip(layers, ids, heads, neurons, strict=True):
            head_ids = parse_ids(head_text) if head_text else []
            neuron_ids = parse_ids(neuron_text) if neuron_text else []
            att, ffn = layer.attention, layer.ffn
            if (len(head_ids) != (att.num_heads if att else 0)
                    or len(neuron_ids) != (ffn.width if ffn else 0)):
                return False
            plan.append((layer, int(layer_id), head_ids, neuron_ids))
    except (TypeError, ValueError, OptcError):
        return False
    for layer, layer_id, head_ids, neuron_ids in plan:
        if layer.attention is not None:
            layer.attention.node.set_attr("layer", layer_id)
            set_unit_ids(layer.attention.node, "head_ids", head_ids, len(head_ids))
        if layer.ffn is not None:
            layer.ffn.up.set_attr("layer", layer_id)
            set_unit_ids(layer.ffn.up, "unit_ids", neuron_ids, len(neuron_ids))
    return True
