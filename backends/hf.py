"""Hugging Face backend: a directory that ``transformers`` loads, with per-layer sizes.

    export_hf(module, "out")      # config.json, model.safetensors, tokenizer, modeling_optc_<family>.py

The directory loads with ``AutoModel*.from_pretrained(out, trust_remote_code=True)`` on a machine
without optc: ``config.json`` holds the source architecture's fields plus per-layer sizes
(:data:`PER_LAYER_FIELDS`) and an ``auto_map`` to the generated modeling file, which defines
one config class and one class per model head (``Optc<Family>Model``,
``...ForSequenceClassification``, ``...ForQuestionAnswering``, ``...ForTokenClassification``)
in plain PyTorch with the module and parameter names of the transformers classes.

What is written comes from the IR: per-layer head counts, head sizes, FFN widths and top-k
(hard attention) from the structure analysis, layer weights by their role in it (q/k/v/output
projections, FFN up/down, norms), renumbered so dropped layers leave no gap; the embeddings,
pooler and task head by their captured names. The family comes from
``module.meta["source"]["model_type"]``.

Families (:data:`FAMILIES`): BERT, RoBERTa, XLM-R, ELECTRA (one template, BERT names),
DistilBERT and GPT-2 (base model only: pre-LN, causal, Conv1D weights), each of the last two
with its own template and config field names (``dim``/``n_layers``, ``n_embd``/``n_layer``).

Refused with one line (:class:`~optc.errors.BackendError`): other families, heads other than
base / sequence / token classification / question answering (GPT-2: other than base), quantized or non-float weights (int8 has no
representation in the generated file: export those with ``--backend onnx``), attention that
is causal or scaled other than ``1/sqrt(head_dim)``, and parameters the family's classes have
no place for. Sparse weights are written dense, with their zeros. The CLI's self-check loads
the directory with the generated classes and compares every output with the eager IR.

Reading back: the modeling file depends only on the family, so optc recognizes its own file by
comparing it byte for byte with :func:`modeling_source` (see :func:`load_optc_classes`).

Split by concern: the refusals live in :mod:`optc.backends.hf_checks`, the reading back in
:mod:`optc.backends.hf_load`, the generated file's sources in :mod:`optc.backends.hf_templates`
(rendered by :mod:`optc.backends.hf_families`); this module collects the weights and config
and writes the directory, and re-exports the public names of the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from optc.backends.hf_checks import (
    block_norm,
    check_attention,
    check_expressed,
    check_weights,
    family_of,
    head_of,
    headless_residue,
    refuse,
)
from optc.backends.hf_families import (
    FAMILIES,
    HEADS,
    Family,
    family_heads,
    modeling_file_name,
    modeling_source,
)
from optc.backends.hf_load import (
    exported_class,
    is_optc_export,
    load_exported,
    load_optc_classes,
    read_config,
    restore_stable_ids,
)
from optc.backends.st_format import (
    PoolingDeclaration,
    declared_pooling,
    source_max_seq_length,
    write_st_files,
)
from optc.errors import BackendError, InputError
from optc.ir.analysis import Layer, analyze
from optc.ir.core import Module, Node, Parameter
from optc.ir.ids import format_ids
from optc.outputs import atomic_directory, check_output, umask_mode

__all__ = ["FAMILIES", "PER_LAYER_FIELDS", "HEADS", "Family", "family_of", "family_heads",
           "modeling_source",
           "modeling_file_name", "export_hf", "hf_config", "is_optc_export", "read_config",
           "load_optc_classes", "exported_class", "load_exported", "restore_stable_ids",
           "hf_refusal", "sentence_pooling"]

_log = logging.getLogger("optc")

PER_LAYER_FIELDS = {
    "num_attention_heads_per_layer": "attention heads of each layer (0: no attention block)",
    "attention_head_size_per_layer": "size of each head, per layer",
    "intermediate_size_per_layer": "FFN neurons of each layer (0: no FFN block)",
    "attention_topk_per_layer": "null: softmax attention; k: hard attention, each query keeps "
                                "its k highest probabilities after the softmax (ties too)",
    "attention_topk_renormalize_per_layer": "hard attention rescales the kept probabilities "
                                            "to sum to 1",
    "attention_bias_only_per_layer": "a layer whose heads were all pruned still adds the output "
                                     "bias of its attention (and its norm, post-LN)",
}
"""config.json fields that give each layer its own size (one entry per remaining layer)."""

_ACTIVATIONS = {("gelu", "none"): "gelu", ("gelu", "tanh"): "gelu_pytorch_tanh",
                ("relu", None): "relu", ("silu", None): "silu"}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
"""Captured buffers the generated classes compute instead of storing."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model")
_CONFIG_DROP = ("architectures", "auto_map", "model_type", "transformers_version", "_name_or_path",
                "torch_dtype", "dtype", "quantization_config", "optc", "num_labels")
"""Source config keys never copied (they describe the source checkpoint, not the export)."""

WEIGHTS_FILE = "model.safetensors"


# -- from the IR to config + weights ----------------------------------------------------------
def _tensor(value: Any, size: int) -> torch.Tensor:
    """A parameter operand's tensor; zeros for an absent bias."""
    return value.data if isinstance(value, Parameter) else torch.zeros(size)


class _Collector:
    """Gathers the weights under their transformers names and the per-layer sizes."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()
        self.eps: set[float] = set()
        self.acts: set[str] = set()
        self.heads: list[int] = []
        self.head_dims: list[int] = []
        self.ffn: list[int] = []
        self.topk: list[int | None] = []
        self.renormalize: list[bool] = []
        self.bias_only: list[bool] = []
        self.head_ids: list[str] = []
        self.neuron_ids: list[str] = []
        self.nodes: set[Node] = set()
        """The layers' high-level nodes that the generated classes compute."""

    def put(self, name: str, value: Any, size: int = 0) -> None:
        if isinstance(value, Parameter):
            self.used.add(value.name)
        self.weights[name] = _tensor(value, size)

    def linear(self, node: Node, name: str) -> None:
        self.nodes.add(node)
        self.put(f"{name}.weight", node.args[1])
        self.put(f"{name}.bias", node.arg(2), int(node.args[1].data.shape[0]))

    def norm(self, node: Node, name: str) -> None:
        self.nodes.add(node)
        self.put(f"{name}.weight", node.args[1])
        self.put(f"{name}.bias", node.arg(2), int(node.args[1].data.shape[0]))
        self.eps.add(float(node.attr("eps", 1e-5)))

    def conv1d(self, nodes: list[Node], name: str) -> None:
        """GPT-2's Conv1D: the linears' weights stacked by rows, transposed to [in, out]."""
        weights = [n.args[1].data for n in nodes]
        self.nodes.update(nodes)
        for n in nodes:
            self.used.update(v.name for v in n.inputs if isinstance(v, Parameter))
        self.weights[f"{name}.weight"] = torch.cat(weights).t()
        self.weights[f"{name}.bias"] = torch.cat([_tensor(n.arg(2), int(w.shape[0]))
                                                  for n, w in zip(nodes, weights, strict=True)])

    def layer(self, layer: Layer, index: int, prefix: str, family: Family) -> None:
        names = family.names
        base = f"{prefix}{names['layers']}.{index}"
        where = f"layer {index} (id {layer.id})"
        att, ffn = layer.attention, layer.ffn
        self.bias_only.append(False)
        if att is None:
            residue = headless_residue(ffn, family.pre_ln) if ffn is not None else None
            if residue is not None:
                bias, norm = residue
                self.bias_only[-1] = True
                self.put(f"{base}.{names['out']}.bias", bias)
                if norm is not None:
                    self.norm(norm, f"{base}.{names['att_norm']}")
            self.heads.append(0)
            self.head_dims.append(0)
            self.topk.append(None)
            self.renormalize.append(False)
            self.head_ids.append("")
        else:
            node = att.node
            check_attention(att, where, family.pre_ln)
            if family.pre_ln:
                self.conv1d([att.query, att.key, att.value], f"{base}.{names['qkv']}")
                self.conv1d([att.output], f"{base}.{names['out']}")
            else:
                for lin, role in ((att.query, "query"), (att.key, "key"), (att.value, "value"),
                                  (att.output, "out")):
                    self.linear(lin, f"{base}.{names[role]}")
            self.norm(att.norms[0], f"{base}.{names['att_norm']}")
            self.nodes.add(node)
            self.heads.append(att.num_heads)
            self.head_dims.append(att.head_dim)
            hard = node.attr("kind") == "topk"
            self.topk.append(int(node.attr("topk") or 1) if hard else None)
            self.renormalize.append(bool(hard and node.attr("renormalize", False)))
            self.head_ids.append(format_ids(att.head_ids))
        if ffn is None:
            self.ffn.append(0)
            self.neuron_ids.append("")
            return
        why = block_norm(ffn, family.pre_ln)
        if why:
            raise refuse(f"{where}: the FFN block is not a BERT-style block ({why})")
        act = ffn.activation
        key = (act.op, act.attr("approximate", "none") if act.op == "gelu" else None)
        if key not in _ACTIVATIONS:
            raise refuse(f"{where}: the FFN activation {act.op} has no transformers equivalent")
        self.acts.add(_ACTIVATIONS[key])
        self.nodes.add(act)
        if family.pre_ln:
            self.conv1d([ffn.up], f"{base}.{names['up']}")
            self.conv1d([ffn.down], f"{base}.{names['down']}")
        else:
            self.linear(ffn.up, f"{base}.{names['up']}")
            self.linear(ffn.down, f"{base}.{names['down']}")
        self.norm(ffn.norms[0], f"{base}.{names['ffn_norm']}")
        self.ffn.append(ffn.width)
        self.neuron_ids.append(format_ids(ffn.neuron_ids))


def _head_params(family: Family, head: str, prefix: str) -> dict[str, bool]:
    """Non-layer parameter names of the family's ``head`` class -> whether each is required."""
    tables = family.tables
    names = {prefix + tables[t]: True for t in ("word", "position", "token_type") if t in tables}
    names.update({f"{prefix}{tables['norm']}.{p}": True for p in ("weight", "bias")})
    if family.model_type == "electra":
        names.update({f"{prefix}embeddings_project.weight": False,
                      f"{prefix}embeddings_project.bias": False})
    pooler = (head == "Model" and family.pooler) or (
        head == "ForSequenceClassification" and family.classifier == "pooled")
    if pooler:
        names.update({f"{prefix}pooler.dense.{p}": head != "Model" for p in ("weight", "bias")})
    layers = {"ForTokenClassification": ("classifier",), "ForQuestionAnswering": ("qa_outputs",),
              "ForSequenceClassification": {"pooled": ("classifier",),
                                            "pre_relu": ("pre_classifier", "classifier")}.get(
                  family.classifier, ("classifier.dense", "classifier.out_proj"))}.get(head, ())
    names.update({f"{layer}.{p}": True for layer in layers for p in ("weight", "bias")})
    return names


def _embedding_prefix(module: Module, family: Family) -> str:
    word = family.tables["word"]
    for name in module.params:
        if name == word or name.endswith("." + word):
            return name[: -len(word)]
    raise refuse(f"no word embedding table (…{word}) was found")


def _source_config(source: dict[str, Any]) -> dict[str, Any]:
    """The source checkpoint's config.json fields worth keeping (labels, dropouts, ...)."""
    ref = source.get("tokenizer") or source.get("model")
    path = Path(str(ref)) / "config.json" if ref else None
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in config.items() if k not in _CONFIG_DROP and not k.endswith("_per_layer")}


def hf_config(module: Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], Family]:
    """config.json content, the weights by transformers name, and the family of ``module``.

    Raises :class:`BackendError` for anything the generated classes cannot express."""
    family = family_of(module)
    head = head_of(module, family)
    check_weights(module)
    source = dict(module.meta.get("source") or {})
    task = module.meta.get("task")
    prefix = _embedding_prefix(module, family)
    if prefix not in ("", f"{family.prefix}."):
        raise refuse(f"parameters are prefixed '{prefix}', not '{family.prefix}.'")
    structure = analyze(module)
    if not structure.layers:
        raise refuse("the module has no transformer layers (nothing was raised to attention/FFN)")
    got = _Collector()
    for index, layer in enumerate(structure.layers):
        got.layer(layer, index, prefix, family)
    word = module.params[prefix + family.tables["word"]]
    first = structure.layers[0].attention or structure.layers[0].ffn
    hidden = int(first.norms[0].args[1].data.shape[0])  # the residual stream's width
    wanted = _head_params(family, head, prefix)
    buffers = {prefix + b for b in _BUFFERS}
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, param in module.params.items():
        if name in got.used or name in buffers:
            continue
        whole, _, part = name.rpartition(".part")
        if whole in wanted and part.isdigit():  # a packed projection split by raising
            parts.setdefault(whole, []).append((int(part), param.data))
            continue
        if name not in wanted:
            if param.data.dim() == 1 and any(u.op == "aten.add.Tensor" for u in param.users()):
                raise refuse(
                    f"parameter @{name} is the output bias left by a block whose units were all "
                    "pruned; the generated classes keep it only for an attention block followed "
                    "by an FFN block: keep a unit, or remove the block with "
                    "drop-layers{...,blocks=...} instead")
            raise refuse(f"parameter @{name} has no place in Optc{family.name}{head} (the "
                          "generated classes hold embeddings, layers, pooler and task head only)")
        got.put(name, param)
    check_expressed(module, got.nodes, set(wanted), f"Optc{family.name}{head}")
    for whole, pieces in parts.items():
        got.weights[whole] = torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])])
    missing = [n for n, required in wanted.items() if required and n not in got.weights]
    if missing:
        raise refuse(f"Optc{family.name}{head} needs @{missing[0]}, which the module lacks")
    emb_norm = next((n for n in module.graph if n.op == "layer_norm"
                     and n.args[1] is module.params.get(f"{prefix}{family.tables['norm']}.weight")),
                    None)
    if emb_norm is not None:
        got.eps.add(float(emb_norm.attr("eps", 1e-5)))
    if len(got.eps) > 1 or len(got.acts) > 1:
        raise refuse(f"layers differ in layer-norm eps {sorted(got.eps)} or activation "
                      f"{sorted(got.acts)}; the config holds one of each")
    padding = next((n.attr("padding_idx") for n in module.graph
                    if n.op == "embedding" and n.args[1] is word), None)

    config = _source_config(source)
    heads = [h for h in got.heads if h]
    dims = [d for d in got.head_dims if d]
    emb_size = int(word.data.shape[1])
    config.update({
        "architectures": [f"Optc{family.name}{head}"],
        "model_type": f"optc-{family.model_type}",
        "vocab_size": int(word.data.shape[0]),
        "hidden_size": hidden,
        "embedding_size": emb_size,
        "num_hidden_layers": len(structure.layers),
        "num_attention_heads": hidden // dims[0] if dims else config.get("num_attention_heads", 1),
        "intermediate_size": max(got.ffn) or config.get("intermediate_size", 0),
        "hidden_act": next(iter(got.acts), config.get("hidden_act", "gelu")),
        "max_position_embeddings": int(got.weights[prefix + family.tables["position"]].shape[0]),
        "type_vocab_size": int(got.weights.get(prefix + family.tables.get("token_type", ""),
                                               torch.empty(0)).shape[0]),
        "layer_norm_eps": next(iter(got.eps), 1e-12),
        "pad_token_id": int(padding if padding is not None else config.get("pad_token_id") or
                            (1 if family.padded_positions else 0)),
        "add_pooling_layer": f"{prefix}pooler.dense.weight" in got.weights,
        "num_attention_heads_per_layer": got.heads,
        "attention_head_size_per_layer": got.head_dims,
        "intermediate_size_per_layer": got.ffn,
        "attention_topk_per_layer": got.topk,
        "attention_topk_renormalize_per_layer": got.renormalize,
        "attention_bias_only_per_layer": got.bias_only,
    })
    if head != "Model":
        rows = {"ForQuestionAnswering": "qa_outputs.weight",
                "ForSequenceClassification": "classifier.out_proj.weight"
                if family.classifier.startswith("head_") else "classifier.weight",
                "ForTokenClassification": "classifier.weight"}[head]
        labels = int(got.weights[rows].shape[0])
        names = list(task.get("labels") or []) if isinstance(task, dict) else []
        if len(names) == labels and head == "ForSequenceClassification":  # the task's classes
            config["id2label"] = {str(i): name for i, name in enumerate(names)}
            config["label2id"] = {name: i for i, name in enumerate(names)}
        elif len(config.get("id2label") or {}) != labels:
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    if family.config_names:  # DistilBERT, GPT-2: their own names, no BERT-only fields
        for key in ("type_vocab_size", "embedding_size", "add_pooling_layer"):
            config.pop(key)
        if family.pre_ln:
            config.pop("pad_token_id")
        config.update({new: config.pop(old) for old, new in family.config_names.items()})
    file = modeling_file_name(family)
    stem = file.removesuffix(".py")
    config["auto_map"] = {"AutoConfig": f"{stem}.Optc{family.name}Config",
                          **{HEADS[suffix][0]: f"{stem}.Optc{family.name}{suffix}"
                             for suffix in family_heads(family)}}
    config["optc"] = {
        "source_model_type": family.model_type,
        "source": source.get("model"),
        "modeling_file": file,
        "modeling_sha256": hashlib.sha256(modeling_source(family).encode()).hexdigest(),
        "layer_ids": [layer.id for layer in structure.layers],
        "head_ids_per_layer": got.head_ids,
        "neuron_ids_per_layer": got.neuron_ids,
        "heads_total": sum(heads),
    }
    if isinstance(task, dict):  # the task it was fine-tuned on: optc eval reads it back
        config["optc"]["task"] = task
    return config, got.weights, family


def hf_refusal(module: Module) -> str | None:
    """Why this backend cannot write ``module`` (its one-line refusal), or None when it can."""
    try:
        hf_config(module)
    except BackendError as exc:
        return str(exc)
    return None


def _tokenizer_dir(module: Module) -> Path | None:
    ref = (module.meta.get("source") or {}).get("tokenizer")
    path = Path(str(ref)) if ref else None
    return path if path is not None and path.is_dir() else None


def sentence_pooling(module: Module, config: dict[str, Any] | None = None,
                     ) -> PoolingDeclaration | None:
    """The pooling a sentence-transformers directory of ``module`` declares, or None when the
    export is no sentence-embedding model: a base model (no task head) whose recorded task is
    an embedding task (its recorded pooling, else its source's, else mean) or whose source
    directory declares a sentence-transformers pooling (see
    :func:`~optc.backends.st_format.declared_pooling`)."""
    config = config if config is not None else hf_config(module)[0]
    family = FAMILIES[config["optc"]["source_model_type"]]
    if config["architectures"][0] != f"Optc{family.name}Model":
        return None
    try:
        return declared_pooling(module.meta)
    except InputError as exc:
        raise refuse(f"the model's sentence-transformers pooling is unreadable: {exc}") from None


def _max_seq_length(module: Module, config: dict[str, Any], family: Family) -> int:
    """sentence_bert_config.json's token limit: the source's, else the length the model was
    trained with, else its position table (less RoBERTa's padding offset), at most 512."""
    found = source_max_seq_length(module.meta)
    if found is None:
        task = module.meta.get("task")
        found = task.get("max_length") if isinstance(task, dict) else None
    if not isinstance(found, int) or isinstance(found, bool) or found <= 0:
        positions = int(config.get(family.config_names.get("max_position_embeddings",
                                                            "max_position_embeddings"), 512))
        offset = int(config.get("pad_token_id") or 0) + 1 if family.padded_positions else 0
        found = min(512, positions - offset)
    return found


def export_hf(module: Module, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``module`` as a Hugging Face model directory (atomically; see the module doc).

    A sentence-embedding model (:func:`sentence_pooling`) also gets the sentence-transformers
    files (``modules.json``, ``1_Pooling/config.json``, ``2_Normalize/`` when it normalizes,
    ``sentence_bert_config.json``), so that ``SentenceTransformer(path,
    trust_remote_code=True)`` loads it and encodes with its pooling."""
    from safetensors.torch import save_file

    target = Path(path)
    check_output(target, force, kind="artifact")  # fail before any work
    config, weights, family = hf_config(module)
    pooling = sentence_pooling(module, config)
    tokenizer = _tokenizer_dir(module)
    if tokenizer is None:
        _log.warning("%s: no tokenizer recorded (meta source.tokenizer); the directory has none, "
                     "so pipeline() needs tokenizer=...", target)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in weights.items()}
    with atomic_directory(target, force) as tmp:
        try:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            (tmp / modeling_file_name(family)).write_text(modeling_source(family))
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            os.chmod(tmp / WEIGHTS_FILE, umask_mode(0o666))  # safetensors writes 0600
            if tokenizer is not None:
                for name in _TOKENIZER_FILES:
                    if (tokenizer / name).is_file():
                        shutil.copyfile(tokenizer / name, tmp / name)
            if pooling is not None:
                width = int(config.get(family.config_names.get("hidden_size", "hidden_size"), 0))
                write_st_files(tmp, pooling, width, _max_seq_length(module, config, family))
        except OSError as exc:
            raise BackendError(f"hf backend: cannot write '{target}': {exc}") from None
    return target



