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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import torch

from optc.backends.hf_families import (
    FAMILIES,
    HEADS,
    Family,
    family_heads,
    modeling_file_name,
    modeling_source,
)
from optc.backends.st_format import (
    PoolingDeclaration,
    declared_pooling,
    source_max_seq_length,
    write_st_files,
)
from optc.errors import BackendError, InputError, OptcError
from optc.ir.analysis import Layer, analyze, set_unit_ids
from optc.ir.attributes import Quantization
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.ids import format_ids, parse_ids
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
def _refuse(message: str) -> BackendError:
    return BackendError(f"hf backend: {message}")


def family_of(module: Module) -> Family:
    """The :class:`Family` of the module's source architecture; refuses others."""
    model_type = str((module.meta.get("source") or {}).get("model_type") or "")
    family = FAMILIES.get(model_type.removeprefix("optc-"))
    if family is None:
        what = f"'{model_type}' models" if model_type else "models of unknown architecture"
        raise _refuse(f"{what} are not supported yet (supported: {', '.join(FAMILIES)}); "
                      "export with --backend eager, torchscript or onnx")
    return family


def _head(module: Module, family: Family) -> str:
    cls = str((module.meta.get("source") or {}).get("class") or "")
    outputs = set(module.graph.outputs)
    for suffix in family_heads(family):
        needs = HEADS[suffix][1]
        if cls.endswith(suffix) and set(needs) <= outputs:
            return suffix
    raise _refuse(f"the {cls or 'model'} head (outputs {', '.join(sorted(outputs))}) is not "
                  f"supported for {family.model_type}; supported: "
                  f"{', '.join('*' + s for s in family_heads(family))}")


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
            residue = _headless(ffn, family.pre_ln) if ffn is not None else None
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
            why = att.prunable or _block_norm(att, family.pre_ln)
            if why:
                raise _refuse(f"{where}: the attention block is not a BERT-style block ({why})")
            if node.attr("int8") is not None:
                raise _refuse(f"{where}: int8 attention matmuls (quantize targets=matmuls) have "
                              "no transformers equivalent; export with --backend onnx or "
                              "torchscript")
            if node.attr("causal"):
                raise _refuse(f"{where}: causal attention has no place in a bidirectional encoder")
            scale = node.attr("scale")
            if scale is not None and not math.isclose(scale, att.head_dim ** -0.5, rel_tol=1e-6):
                raise _refuse(f"{where}: attention scale {scale:g} is not 1/sqrt(head_dim)")
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
            if hard and node.attr("topk_fraction") is not None:
                raise _refuse(f"{where}: hard attention with fraction={node.attr('topk_fraction')} "
                              "(ceil(fraction x keys) kept per row) has no field in the Hugging "
                              "Face config, which holds a fixed k: use hard-attention{k=N}, or "
                              "--backend onnx, torchscript or eager")
            self.topk.append(int(node.attr("topk") or 1) if hard else None)
            self.renormalize.append(bool(hard and node.attr("renormalize", False)))
            self.head_ids.append(format_ids(att.head_ids))
        if ffn is None:
            self.ffn.append(0)
            self.neuron_ids.append("")
            return
        why = _block_norm(ffn, family.pre_ln)
        if why:
            raise _refuse(f"{where}: the FFN block is not a BERT-style block ({why})")
        act = ffn.activation
        key = (act.op, act.attr("approximate", "none") if act.op == "gelu" else None)
        if key not in _ACTIVATIONS:
            raise _refuse(f"{where}: the FFN activation {act.op} has no transformers equivalent")
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


def _headless(ffn: Any, pre_ln: bool) -> tuple[Parameter, Node | None] | None:
    """What an attention block leaves when all its heads are pruned, right before ``ffn``:
    ``norm(bias + x)`` (post-LN) or ``bias + x`` (pre-LN); None when there is none."""
    value = ffn.stream_in
    norm = value.producer if isinstance(value, Value) and not pre_ln else None
    if not pre_ln:
        if norm is None or norm.op != "layer_norm":
            return None
        value = norm.args[0]
    add = value.producer if isinstance(value, Value) else None
    if add is None or add.op != "aten.add.Tensor":
        return None
    params = [a for a in add.args[:2] if isinstance(a, Parameter)]
    if len(params) != 1 or params[0].data.dim() != 1 or len(add.args) > 2 and add.args[2] != 1:
        return None
    return params[0], norm


def _block_norm(block: Any, pre_ln: bool) -> str | None:
    """Why ``block`` is not ``norm(x + f(x))`` (post-LN) or ``x + f(norm(x))`` (pre-LN)."""
    if block.residual is None:
        return "its result is not added back to the residual stream"
    if len(block.norms) != 1:
        return f"no layer norm {'before it' if pre_ln else 'right after its residual add'}"
    norm_input = block.norms[0].args[0]
    if pre_ln and norm_input is not block.stream_in:
        return "its layer norm does not read the residual stream"
    if not pre_ln and norm_input is not block.residual.outputs[0]:
        return "no layer norm right after its residual add (pre-LN?)"
    return None


_TABLE_OPS = ("embedding", "layer_norm", "linear")
"""High-level ops the generated classes compute outside the layers when they read the
embeddings', pooler's or task head's parameters."""
_HEAD_ACTIVATIONS = ("tanh", "gelu", "relu")
"""Activations the generated pooler and classification heads apply after a head linear."""


def _check_expressed(module: Module, layer_nodes: set[Node], head_params: set[str],
                     cls: str) -> None:
    """Refuse a live high-level node the generated classes do not compute (a plugin op, a norm
    or activation inserted on the residual stream, ...): writing would silently drop it."""
    live: set[Node] = set()
    stack = [v.producer for v in module.graph.outputs.values() if isinstance(v, Value)]
    while stack:
        node = stack.pop()
        if node is None or node in live:
            continue
        live.add(node)
        stack += [v.producer for v in node.inputs]

    def head_linear(value: Any) -> bool:
        producer = value.producer if isinstance(value, Value) else None
        return producer is not None and producer.op == "linear" and producer in expressed

    expressed = set(layer_nodes)
    for node in module.graph:  # in order: a head activation follows its head linear
        if node.op.startswith("aten.") or node in expressed or node not in live:
            continue
        reads_head = any(isinstance(v, Parameter) and (v.name in head_params or (  # or a part
            v.name.rpartition(".part")[0] in head_params)) for v in node.inputs)
        if (node.op in _TABLE_OPS and reads_head) or (
                node.op in _HEAD_ACTIVATIONS and head_linear(node.arg(0))):
            expressed.add(node)
            continue
        raise _refuse(f"{node!r} (op '{node.op}') has no equivalent in the generated {cls} "
                      "classes (embeddings, attention and FFN layers, pooler and task head "
                      "only), so the directory would compute without it: remove it, or write "
                      "--backend onnx, torchscript or eager")


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
    raise _refuse(f"no word embedding table (…{word}) was found")


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


def _check_weights(module: Module) -> None:
    for param in module.params.values():
        quant = [a for a in param.attrs.values() if isinstance(a, Quantization)]
        if quant or param.data.dtype in (torch.int8, torch.uint8):
            what = "quantized" if quant else str(param.data.dtype).removeprefix("torch.")
            raise _refuse(f"parameter @{param.name} is {what}; the generated modeling file has "
                          "no int8 representation: export quantized models with --backend onnx "
                          "or torchscript")


def hf_config(module: Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], Family]:
    """config.json content, the weights by transformers name, and the family of ``module``.

    Raises :class:`BackendError` for anything the generated classes cannot express."""
    family = family_of(module)
    head = _head(module, family)
    _check_weights(module)
    source = dict(module.meta.get("source") or {})
    task = module.meta.get("task")
    prefix = _embedding_prefix(module, family)
    if prefix not in ("", f"{family.prefix}."):
        raise _refuse(f"parameters are prefixed '{prefix}', not '{family.prefix}.'")
    structure = analyze(module)
    if not structure.layers:
        raise _refuse("the module has no transformer layers (nothing was raised to attention/FFN)")
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
                raise _refuse(
                    f"parameter @{name} is the output bias left by a block whose units were all "
                    "pruned; the generated classes keep it only for an attention block followed "
                    "by an FFN block: keep a unit, or remove the block with "
                    "drop-layers{...,blocks=...} instead")
            raise _refuse(f"parameter @{name} has no place in Optc{family.name}{head} (the "
                          "generated classes hold embeddings, layers, pooler and task head only)")
        got.put(name, param)
    _check_expressed(module, got.nodes, set(wanted), f"Optc{family.name}{head}")
    for whole, pieces in parts.items():
        got.weights[whole] = torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])])
    missing = [n for n, required in wanted.items() if required and n not in got.weights]
    if missing:
        raise _refuse(f"Optc{family.name}{head} needs @{missing[0]}, which the module lacks")
    emb_norm = next((n for n in module.graph if n.op == "layer_norm"
                     and n.args[1] is module.params.get(f"{prefix}{family.tables['norm']}.weight")),
                    None)
    if emb_norm is not None:
        got.eps.add(float(emb_norm.attr("eps", 1e-5)))
    if len(got.eps) > 1 or len(got.acts) > 1:
        raise _refuse(f"layers differ in layer-norm eps {sorted(got.eps)} or activation "
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
        raise _refuse(f"the model's sentence-transformers pooling is unreadable: {exc}") from None


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


# -- reading an export back -------------------------------------------------------------------
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
