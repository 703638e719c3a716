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
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import torch

from optc.errors import BackendError, InputError
from optc.ir.analysis import Layer, analyze
from optc.ir.attributes import Quantization
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.ids import format_ids
from optc.outputs import atomic_directory, check_output, umask_mode

__all__ = ["FAMILIES", "PER_LAYER_FIELDS", "HEADS", "Family", "family_of", "modeling_source",
           "modeling_file_name", "export_hf", "hf_config", "is_optc_export", "read_config",
           "load_optc_classes", "exported_class", "load_exported"]

_log = logging.getLogger("optc")


@dataclass(frozen=True)
class Family:
    """What distinguishes one BERT-like family's classes (all are post-LN encoders)."""

    model_type: str
    """transformers' ``model_type`` of the source architecture."""
    name: str
    """Class-name stem (``Bert`` -> ``OptcBertModel``)."""
    prefix: str
    """``base_model_prefix``: the attribute holding the encoder in head classes."""
    padded_positions: bool
    """Position ids count non-padding tokens from ``pad_token_id + 1`` (RoBERTa)."""
    pooler: bool
    """The base model has a pooler (``dense -> tanh`` on the first token)."""
    classifier: str
    """Sequence-classification head: ``pooled`` (dropout + linear on the pooler output),
    ``head_tanh`` / ``head_gelu`` (``dense -> act -> out_proj`` on the first token) or
    ``pre_relu`` (``pre_classifier -> relu -> classifier`` on the first token, DistilBERT)."""
    names: dict[str, str] = field(default_factory=lambda: _BERT_NAMES)
    """Where each layer weight lives (``{layers}.{i}.{role}``), as in transformers' classes."""
    tables: dict[str, str] = field(default_factory=lambda: _BERT_TABLES)
    """Names of the embedding tables and the norm that follows them (or the final norm)."""
    pre_ln: bool = False
    """Norms before each block (GPT-2) instead of after its residual add."""
    config_names: dict[str, str] = field(default_factory=dict)
    """The family's own names for config fields (DistilBERT's ``dim``, GPT-2's ``n_embd``)."""


_BERT_NAMES = {"layers": "encoder.layer", "query": "attention.self.query",
               "key": "attention.self.key", "value": "attention.self.value",
               "out": "attention.output.dense", "att_norm": "attention.output.LayerNorm",
               "up": "intermediate.dense", "down": "output.dense", "ffn_norm": "output.LayerNorm"}
_DISTIL_NAMES = {"layers": "transformer.layer", "query": "attention.q_lin", "key": "attention.k_lin",
                 "value": "attention.v_lin", "out": "attention.out_lin", "att_norm": "sa_layer_norm",
                 "up": "ffn.lin1", "down": "ffn.lin2", "ffn_norm": "output_layer_norm"}
_GPT2_NAMES = {"layers": "h", "qkv": "attn.c_attn", "out": "attn.c_proj", "att_norm": "ln_1",
               "up": "mlp.c_fc", "down": "mlp.c_proj", "ffn_norm": "ln_2"}
_BERT_TABLES = {"word": "embeddings.word_embeddings.weight",
                "position": "embeddings.position_embeddings.weight",
                "token_type": "embeddings.token_type_embeddings.weight",
                "norm": "embeddings.LayerNorm"}
_DISTIL_TABLES = {k: v for k, v in _BERT_TABLES.items() if k != "token_type"}
_GPT2_TABLES = {"word": "wte.weight", "position": "wpe.weight", "norm": "ln_f"}
_DISTIL_CONFIG = {"hidden_size": "dim", "num_hidden_layers": "n_layers",
                  "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
                  "hidden_act": "activation"}
_GPT2_CONFIG = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                "num_attention_heads": "n_head", "intermediate_size": "n_inner",
                "hidden_act": "activation_function", "max_position_embeddings": "n_positions",
                "layer_norm_eps": "layer_norm_epsilon"}

FAMILIES = {
    "bert": Family("bert", "Bert", "bert", False, True, "pooled"),
    "roberta": Family("roberta", "Roberta", "roberta", True, True, "head_tanh"),
    "xlm-roberta": Family("xlm-roberta", "XLMRoberta", "roberta", True, True, "head_tanh"),
    "electra": Family("electra", "Electra", "electra", False, False, "head_gelu"),
    "distilbert": Family("distilbert", "DistilBert", "distilbert", False, False, "pre_relu",
                         _DISTIL_NAMES, _DISTIL_TABLES, config_names=_DISTIL_CONFIG),
    "gpt2": Family("gpt2", "GPT2", "transformer", False, False, "none", _GPT2_NAMES,
                   _GPT2_TABLES, pre_ln=True, config_names=_GPT2_CONFIG),
}
"""Source architectures the generated modeling file supports, by ``model_type``."""

HEADS = {
    "Model": ("AutoModel", ("last_hidden_state",)),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", ("logits",)),
    "ForTokenClassification": ("AutoModelForTokenClassification", ("logits",)),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
}
"""Class suffix -> (transformers auto class, outputs the IR must have)."""

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


def modeling_file_name(family: Family) -> str:
    return f"modeling_optc_{family.model_type.replace('-', '_')}.py"


# -- the generated modeling file --------------------------------------------------------------
_HEADER = '''\
# Written by optc (https://github.com/optc): plain PyTorch, no optc import. optc recognizes this
# file by its exact bytes; an edited copy still loads in transformers but not in optc.
"""$Name with per-layer attention heads, head sizes and FFN widths.

Each layer i has config.num_attention_heads_per_layer[i] heads of
config.attention_head_size_per_layer[i] (0 heads: no attention block) and
config.intermediate_size_per_layer[i] FFN neurons (0: no FFN block); a layer with 0 heads
and config.attention_bias_only_per_layer[i] keeps the output bias of its pruned attention;
config.attention_topk_per_layer[i] is null for softmax attention or k for hard attention:
after the softmax each query keeps its k highest probabilities (and ties), rescaled to sum to 1
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow transformers'
$Name classes, so the weights read like a $Name checkpoint with smaller layers.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class Optc${Name}Config(PretrainedConfig):
    model_type = "optc-$model_type"

    def __init__(self, vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                 initializer_range=0.02, pad_token_id=$pad, embedding_size=None,
                 classifier_dropout=None, add_pooling_layer=$pooler,
                 num_attention_heads_per_layer=None, attention_head_size_per_layer=None,
                 intermediate_size_per_layer=None, attention_topk_per_layer=None,
                 attention_topk_renormalize_per_layer=None, attention_bias_only_per_layer=None,
                 **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.embedding_size = embedding_size or hidden_size
        self.classifier_dropout = classifier_dropout
        self.add_pooling_layer = add_pooling_layer
        layers = num_hidden_layers
        self.num_attention_heads_per_layer = _per_layer(
            num_attention_heads_per_layer, num_attention_heads, layers)
        self.attention_head_size_per_layer = _per_layer(
            attention_head_size_per_layer, hidden_size // max(1, num_attention_heads), layers)
        self.intermediate_size_per_layer = _per_layer(
            intermediate_size_per_layer, intermediate_size, layers)
        self.attention_topk_per_layer = _per_layer(attention_topk_per_layer, None, layers)
        self.attention_topk_renormalize_per_layer = _per_layer(
            attention_topk_renormalize_per_layer, False, layers)
        self.attention_bias_only_per_layer = _per_layer(attention_bias_only_per_layer, False, layers)


def _per_layer(values, default, layers):
    values = [default] * layers if values is None else list(values)
    if len(values) != layers:
        raise ValueError(f"a per-layer field has {len(values)} entries for {layers} layers")
    return values


class Optc${Name}Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.embedding_size
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, size$position_padding)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
$positions
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class Optc${Name}SelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.num_heads = config.num_attention_heads_per_layer[layer]
        self.head_dim = config.attention_head_size_per_layer[layer]
        self.topk = config.attention_topk_per_layer[layer]
        self.renormalize = config.attention_topk_renormalize_per_layer[layer]
        self.dropout_p = config.attention_probs_dropout_prob
        inner = self.num_heads * self.head_dim
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)

    def forward(self, hidden_states, mask, output_attentions=False):
        batch, seq = hidden_states.shape[:2]
        shape = (batch, seq, self.num_heads, self.head_dim)
        q = self.query(hidden_states).view(shape).transpose(1, 2)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout_p if self.training else 0.0
        hard = self.topk is not None and self.topk < seq
        probs = None
        if not hard and not output_attentions:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                     scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1)
            if hard:  # keep each query's topk highest probabilities (and ties), zero the rest
                threshold = scores.topk(self.topk, dim=-1).values[..., -1:]
                probs = probs.masked_fill(scores < threshold, 0.0)
                if self.renormalize:
                    probs = probs / probs.sum(dim=-1, keepdim=True)
            context = torch.matmul(F.dropout(probs, dropout, self.training), v)
            context = context.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # no key: zeros
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return context, probs


class Optc${Name}SelfOutput(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        inner = config.num_attention_heads_per_layer[layer] * config.attention_head_size_per_layer[layer]
        self.dense = nn.Linear(inner, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context, residual):
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class Optc${Name}Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.self = Optc${Name}SelfAttention(config, layer)
        self.output = Optc${Name}SelfOutput(config, layer)

    def forward(self, hidden_states, mask, output_attentions=False):
        context, probs = self.self(hidden_states, mask, output_attentions)
        return self.output(context, hidden_states), probs


class Optc${Name}Bias(nn.Module):
    """A projection with no inputs left: only its bias."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class Optc${Name}HeadlessOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = Optc${Name}Bias(config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, residual):
        return self.LayerNorm(self.dense.bias + residual)


class Optc${Name}HeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.output = Optc${Name}HeadlessOutput(config)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.output(hidden_states), None


class Optc${Name}Intermediate(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size_per_layer[layer])
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class Optc${Name}Output(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size_per_layer[layer], config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate, residual):
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)


class Optc${Name}Layer(nn.Module):
    """One layer; its attention block or FFN block may be absent (pruned away)."""

    def __init__(self, config, layer):
        super().__init__()
        has_attention = config.num_attention_heads_per_layer[layer] > 0
        has_ffn = config.intermediate_size_per_layer[layer] > 0
        self.attention = Optc${Name}Attention(config, layer) if has_attention else None
        if not has_attention and config.attention_bias_only_per_layer[layer]:
            self.attention = Optc${Name}HeadlessAttention(config)
        self.intermediate = Optc${Name}Intermediate(config, layer) if has_ffn else None
        self.output = Optc${Name}Output(config, layer) if has_ffn else None

    def forward(self, hidden_states, mask, output_attentions=False):
        probs = None
        if self.attention is not None:
            hidden_states, probs = self.attention(hidden_states, mask, output_attentions)
        if self.intermediate is not None:
            hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states, probs


class Optc${Name}Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(
            Optc${Name}Layer(config, i) for i in range(config.num_hidden_layers))


class Optc${Name}Pooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return torch.tanh(self.dense(hidden_states[:, 0]))


class Optc${Name}PreTrainedModel(PreTrainedModel):
    config_class = Optc${Name}Config
    base_model_prefix = "$prefix"
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _options(self, output_attentions, output_hidden_states, return_dict):
        config = self.config
        return (config.output_attentions if output_attentions is None else output_attentions,
                config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                getattr(config, "return_dict", True) if return_dict is None else return_dict)


class Optc${Name}Model(Optc${Name}PreTrainedModel):
    def __init__(self, config, add_pooling_layer=None):
        super().__init__(config)
        pooling = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.embeddings = Optc${Name}Embeddings(config)
$project_init
        self.encoder = Optc${Name}Encoder(config)
        self.pooler = Optc${Name}Pooler(config) if pooling else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        output_attentions, output_hidden_states, return_dict = self._options(
            output_attentions, output_hidden_states, return_dict)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask[:, None, None, :].bool()  # [batch, 1, 1, seq]: which keys to attend
        hidden_states = self.embeddings(input_ids, token_type_ids)
$project_call
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.encoder.layer:
            hidden_states, probs = layer(hidden_states, mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled,
                                         hidden_states=all_hidden, attentions=all_attentions)
        return out if return_dict else out.to_tuple()
'''

_POSITIONS = {
    False: '''\
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)''',
    True: '''\
        # positions count the non-padding tokens, starting after pad_token_id (as RoBERTa does)
        not_pad = input_ids.ne(self.pad_token_id).int()
        position_ids = (torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad).long()
        position_ids = position_ids + self.pad_token_id''',
}

_PROJECT = (
    '''\
        if config.embedding_size != config.hidden_size:  # embeddings narrower than the layers
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)''',
    '''\
        if self.config.embedding_size != self.config.hidden_size:
            hidden_states = self.embeddings_project(hidden_states)''',
)

_CLASSIFIER = {
    "pooled": ('''\
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)''', '''\
        logits = self.classifier(self.dropout(outputs.pooler_output))'''),
    "head_tanh": ('''\
        self.classifier = Optc${Name}ClassificationHead(config, torch.tanh)''', '''\
        logits = self.classifier(outputs.last_hidden_state)'''),
    "head_gelu": ('''\
        self.classifier = Optc${Name}ClassificationHead(config, F.gelu)''', '''\
        logits = self.classifier(outputs.last_hidden_state)'''),
}

_HEAD_CLASS = '''

class Optc${Name}ClassificationHead(nn.Module):
    """dense -> activation -> out_proj on the first token."""

    def __init__(self, config, activation):
        super().__init__()
        dropout = config.classifier_dropout
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.activation = activation
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states):
        x = self.activation(self.dense(self.dropout(hidden_states[:, 0])))
        return self.out_proj(self.dropout(x))
'''

_HEADS = '''

class Optc${Name}ForSequenceClassification(Optc${Name}PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout
        dropout = config.hidden_dropout_prob if dropout is None else dropout
        self.$prefix = Optc${Name}Model(config, add_pooling_layer=$seq_pooler)
$classifier_init
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.$prefix(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
$classifier_call
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            elif labels.dtype in (torch.long, torch.int):
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()


class Optc${Name}ForTokenClassification(Optc${Name}PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout
        self.$prefix = Optc${Name}Model(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.$prefix(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()


class Optc${Name}ForQuestionAnswering(Optc${Name}PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.$prefix = Optc${Name}Model(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        outputs = self.$prefix(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start = F.cross_entropy(start_logits, start_positions.clamp(0, ignored),
                                    ignore_index=ignored)
            end = F.cross_entropy(end_logits, end_positions.clamp(0, ignored), ignore_index=ignored)
            loss = (start + end) / 2
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits,
                                           end_logits=end_logits,
                                           hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()
'''


_DISTIL_BODY = '''\
# Written by optc (https://github.com/optc): plain PyTorch, no optc import. optc recognizes this
# file by its exact bytes; an edited copy still loads in transformers but not in optc.
\"\"\"DistilBert with per-layer attention heads, head sizes and FFN widths.

Each layer i has config.num_attention_heads_per_layer[i] heads of
config.attention_head_size_per_layer[i] (0 heads: no attention block) and
config.intermediate_size_per_layer[i] FFN neurons (0: no FFN block); a layer with 0 heads
and config.attention_bias_only_per_layer[i] keeps the output bias of its pruned attention;
config.attention_topk_per_layer[i] is null for softmax attention or k for hard attention:
after the softmax each query keeps its k highest probabilities (and ties), rescaled to sum to 1
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow
transformers' DistilBert classes, so the weights read like a DistilBert checkpoint with smaller
layers.
\"\"\"

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class OptcDistilBertConfig(PretrainedConfig):
    model_type = "optc-distilbert"
    attribute_map = {"hidden_size": "dim", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "intermediate_size": "hidden_dim"}

    def __init__(self, vocab_size=30522, max_position_embeddings=512, sinusoidal_pos_embds=False,
                 n_layers=6, n_heads=12, dim=768, hidden_dim=3072, dropout=0.1,
                 attention_dropout=0.1, activation="gelu", initializer_range=0.02,
                 qa_dropout=0.1, seq_classif_dropout=0.2, layer_norm_eps=1e-12, pad_token_id=0,
                 num_attention_heads_per_layer=None, attention_head_size_per_layer=None,
                 intermediate_size_per_layer=None, attention_topk_per_layer=None,
                 attention_topk_renormalize_per_layer=None, attention_bias_only_per_layer=None,
                 **kwargs):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.sinusoidal_pos_embds = sinusoidal_pos_embds
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.initializer_range = initializer_range
        self.qa_dropout = qa_dropout
        self.seq_classif_dropout = seq_classif_dropout
        self.layer_norm_eps = layer_norm_eps
        layers = n_layers
        self.num_attention_heads_per_layer = _per_layer(num_attention_heads_per_layer, n_heads, layers)
        self.attention_head_size_per_layer = _per_layer(
            attention_head_size_per_layer, dim // max(1, n_heads), layers)
        self.intermediate_size_per_layer = _per_layer(intermediate_size_per_layer, hidden_dim, layers)
        self.attention_topk_per_layer = _per_layer(attention_topk_per_layer, None, layers)
        self.attention_topk_renormalize_per_layer = _per_layer(
            attention_topk_renormalize_per_layer, False, layers)
        self.attention_bias_only_per_layer = _per_layer(attention_bias_only_per_layer, False, layers)


def _per_layer(values, default, layers):
    values = [default] * layers if values is None else list(values)
    if len(values) != layers:
        raise ValueError(f"a per-layer field has {len(values)} entries for {layers} layers")
    return values


class OptcDistilBertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids):
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class OptcDistilBertAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.num_heads = config.num_attention_heads_per_layer[layer]
        self.head_dim = config.attention_head_size_per_layer[layer]
        self.topk = config.attention_topk_per_layer[layer]
        self.renormalize = config.attention_topk_renormalize_per_layer[layer]
        self.dropout_p = config.attention_dropout
        inner = self.num_heads * self.head_dim
        self.q_lin = nn.Linear(config.dim, inner)
        self.k_lin = nn.Linear(config.dim, inner)
        self.v_lin = nn.Linear(config.dim, inner)
        self.out_lin = nn.Linear(inner, config.dim)

    def forward(self, hidden_states, mask, output_attentions=False):
        batch, seq = hidden_states.shape[:2]
        shape = (batch, seq, self.num_heads, self.head_dim)
        q = self.q_lin(hidden_states).view(shape).transpose(1, 2)
        k = self.k_lin(hidden_states).view(shape).transpose(1, 2)
        v = self.v_lin(hidden_states).view(shape).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout_p if self.training else 0.0
        hard = self.topk is not None and self.topk < seq
        probs = None
        if not hard and not output_attentions:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                     scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1)
            if hard:  # keep each query's topk highest probabilities (and ties), zero the rest
                threshold = scores.topk(self.topk, dim=-1).values[..., -1:]
                probs = probs.masked_fill(scores < threshold, 0.0)
                if self.renormalize:
                    probs = probs / probs.sum(dim=-1, keepdim=True)
            context = torch.matmul(F.dropout(probs, dropout, self.training), v)
            context = context.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # no key: zeros
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.out_lin(context), probs


class OptcDistilBertBias(nn.Module):
    """A projection with no inputs left: only its bias."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class OptcDistilBertHeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.out_lin = OptcDistilBertBias(config.dim)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.out_lin.bias, None


class OptcDistilBertFFN(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.lin1 = nn.Linear(config.dim, config.intermediate_size_per_layer[layer])
        self.lin2 = nn.Linear(config.intermediate_size_per_layer[layer], config.dim)
        self.activation = ACT2FN[config.activation]

    def forward(self, hidden_states):
        return self.dropout(self.lin2(self.activation(self.lin1(hidden_states))))


class OptcDistilBertLayer(nn.Module):
    \"\"\"One layer; its attention block or FFN block may be absent (pruned away).\"\"\"

    def __init__(self, config, layer):
        super().__init__()
        self.attention = None
        if config.num_attention_heads_per_layer[layer] > 0:
            self.attention = OptcDistilBertAttention(config, layer)
        elif config.attention_bias_only_per_layer[layer]:
            self.attention = OptcDistilBertHeadlessAttention(config)
        if self.attention is not None:
            self.sa_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        if config.intermediate_size_per_layer[layer] > 0:
            self.ffn = OptcDistilBertFFN(config, layer)
            self.output_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        else:
            self.ffn = None

    def forward(self, hidden_states, mask, output_attentions=False):
        probs = None
        if self.attention is not None:
            attended, probs = self.attention(hidden_states, mask, output_attentions)
            hidden_states = self.sa_layer_norm(attended + hidden_states)
        if self.ffn is not None:
            hidden_states = self.output_layer_norm(self.ffn(hidden_states) + hidden_states)
        return hidden_states, probs


class OptcDistilBertTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(OptcDistilBertLayer(config, i) for i in range(config.n_layers))


class OptcDistilBertPreTrainedModel(PreTrainedModel):
    config_class = OptcDistilBertConfig
    base_model_prefix = "distilbert"
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _options(self, output_attentions, output_hidden_states, return_dict):
        config = self.config
        return (config.output_attentions if output_attentions is None else output_attentions,
                config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                getattr(config, "return_dict", True) if return_dict is None else return_dict)


class OptcDistilBertModel(OptcDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = OptcDistilBertEmbeddings(config)
        self.transformer = OptcDistilBertTransformer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids, attention_mask=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        output_attentions, output_hidden_states, return_dict = self._options(
            output_attentions, output_hidden_states, return_dict)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask[:, None, None, :].bool()  # [batch, 1, 1, seq]: which keys to attend
        hidden_states = self.embeddings(input_ids)
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.transformer.layer:
            hidden_states, probs = layer(hidden_states, mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        out = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden,
                              attentions=all_attentions)
        return out if return_dict else out.to_tuple()


class OptcDistilBertForSequenceClassification(OptcDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = OptcDistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.distilbert(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        pooled = F.relu(self.pre_classifier(outputs.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            elif labels.dtype in (torch.long, torch.int):
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()


class OptcDistilBertForTokenClassification(OptcDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.distilbert = OptcDistilBertModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.distilbert(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                    attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()


class OptcDistilBertForQuestionAnswering(OptcDistilBertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.distilbert = OptcDistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.qa_dropout)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.distilbert(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        logits = self.qa_outputs(self.dropout(outputs.last_hidden_state))
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start = F.cross_entropy(start_logits, start_positions.clamp(0, ignored),
                                    ignore_index=ignored)
            end = F.cross_entropy(end_logits, end_positions.clamp(0, ignored), ignore_index=ignored)
            loss = (start + end) / 2
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits,
                                           end_logits=end_logits,
                                           hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions)
        return out if self._options(None, None, return_dict)[2] else out.to_tuple()
'''

_GPT2_BODY = '''\
# Written by optc (https://github.com/optc): plain PyTorch, no optc import. optc recognizes this
# file by its exact bytes; an edited copy still loads in transformers but not in optc.
\"\"\"GPT2 with per-layer attention heads, head sizes and FFN widths.

Each block i has config.num_attention_heads_per_layer[i] heads of
config.attention_head_size_per_layer[i] (0 heads: no attention block) and
config.intermediate_size_per_layer[i] MLP neurons (0: no MLP block); a block with 0 heads
and config.attention_bias_only_per_layer[i] keeps the output bias of its pruned attention;
config.attention_topk_per_layer[i] is null for softmax attention or k for hard attention:
after the softmax each query keeps its k highest probabilities (and ties), rescaled to sum to 1
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow
transformers' GPT2 classes (Conv1D weights are [in, out]), so the weights read like a GPT2
checkpoint with smaller blocks.
\"\"\"

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput


class OptcGPT2Config(PretrainedConfig):
    model_type = "optc-gpt2"
    attribute_map = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                     "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}

    def __init__(self, vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function="gelu_pytorch_tanh", resid_pdrop=0.1,
                 embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5,
                 initializer_range=0.02, num_attention_heads_per_layer=None,
                 attention_head_size_per_layer=None, intermediate_size_per_layer=None,
                 attention_topk_per_layer=None, attention_topk_renormalize_per_layer=None,
                 attention_bias_only_per_layer=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        layers = n_layer
        self.num_attention_heads_per_layer = _per_layer(num_attention_heads_per_layer, n_head, layers)
        self.attention_head_size_per_layer = _per_layer(
            attention_head_size_per_layer, n_embd // max(1, n_head), layers)
        self.intermediate_size_per_layer = _per_layer(
            intermediate_size_per_layer, n_inner or 4 * n_embd, layers)
        self.attention_topk_per_layer = _per_layer(attention_topk_per_layer, None, layers)
        self.attention_topk_renormalize_per_layer = _per_layer(
            attention_topk_renormalize_per_layer, False, layers)
        self.attention_bias_only_per_layer = _per_layer(attention_bias_only_per_layer, False, layers)


def _per_layer(values, default, layers):
    values = [default] * layers if values is None else list(values)
    if len(values) != layers:
        raise ValueError(f"a per-layer field has {len(values)} entries for {layers} layers")
    return values


class Conv1D(nn.Module):
    \"\"\"transformers' GPT2 projection: y = x @ weight + bias, weight [in, out].\"\"\"

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


class OptcGPT2Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.num_heads = config.num_attention_heads_per_layer[layer]
        self.head_dim = config.attention_head_size_per_layer[layer]
        self.topk = config.attention_topk_per_layer[layer]
        self.renormalize = config.attention_topk_renormalize_per_layer[layer]
        self.dropout_p = config.attn_pdrop
        self.inner = self.num_heads * self.head_dim
        self.c_attn = Conv1D(3 * self.inner, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, self.inner)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, mask, output_attentions=False):
        batch, seq = hidden_states.shape[:2]
        shape = (batch, seq, self.num_heads, self.head_dim)
        q, k, v = self.c_attn(hidden_states).split(self.inner, dim=2)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout = self.dropout_p if self.training else 0.0
        hard = self.topk is not None and self.topk < seq
        probs = None
        if not hard and not output_attentions:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                     scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores, dim=-1)
            if hard:  # keep each query's topk highest probabilities (and ties), zero the rest
                threshold = scores.topk(self.topk, dim=-1).values[..., -1:]
                probs = probs.masked_fill(scores < threshold, 0.0)
                if self.renormalize:
                    probs = probs / probs.sum(dim=-1, keepdim=True)
            context = torch.matmul(F.dropout(probs, dropout, self.training), v)
            context = context.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # no key: zeros
        context = context.transpose(1, 2).reshape(batch, seq, self.inner)
        return self.resid_dropout(self.c_proj(context)), probs


class OptcGPT2Bias(nn.Module):
    """A projection with no inputs left: only its bias."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))


class OptcGPT2HeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.c_proj = OptcGPT2Bias(config.n_embd)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.c_proj.bias, None


class OptcGPT2MLP(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        width = config.intermediate_size_per_layer[layer]
        self.c_fc = Conv1D(width, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, width)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class OptcGPT2Block(nn.Module):
    \"\"\"One pre-LN block; its attention or MLP may be absent (pruned away).\"\"\"

    def __init__(self, config, layer):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = self.attn = None
        if config.num_attention_heads_per_layer[layer] > 0:
            self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
            self.attn = OptcGPT2Attention(config, layer)
        elif config.attention_bias_only_per_layer[layer]:
            self.attn = OptcGPT2HeadlessAttention(config)
        if config.intermediate_size_per_layer[layer] > 0:
            self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
            self.mlp = OptcGPT2MLP(config, layer)
        else:
            self.mlp = None

    def forward(self, hidden_states, mask, output_attentions=False):
        probs = None
        if self.attn is not None:
            normed = self.ln_1(hidden_states) if self.ln_1 is not None else hidden_states
            attended, probs = self.attn(normed, mask, output_attentions)
            hidden_states = attended + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, probs


class OptcGPT2PreTrainedModel(PreTrainedModel):
    config_class = OptcGPT2Config
    base_model_prefix = "transformer"
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class OptcGPT2Model(OptcGPT2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(OptcGPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids, attention_mask=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        return_dict = getattr(config, "return_dict", True) if return_dict is None else return_dict
        seq = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = torch.arange(seq, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]  # [query, key]: no look-ahead
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        hidden_states = self.drop(self.wte(input_ids) + self.wpe(positions.unsqueeze(0)))
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            hidden_states, probs = block(hidden_states, mask, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:  # as transformers: the last entry is after the final norm
            all_hidden = all_hidden[:-1] + (hidden_states,)
        out = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden,
                              attentions=all_attentions)
        return out if return_dict else out.to_tuple()
'''

def modeling_source(family: Family) -> str:
    """The modeling file optc writes for ``family`` (the same bytes for every model of it)."""
    if family.model_type == "distilbert":
        return _DISTIL_BODY
    if family.model_type == "gpt2":
        return _GPT2_BODY
    init, call = _CLASSIFIER[family.classifier]
    electra = family.model_type == "electra"
    text = _HEADER + (_HEAD_CLASS if family.classifier != "pooled" else "") + _HEADS
    text = text.replace("$classifier_init", init).replace("$classifier_call", call)
    text = text.replace("$positions", _POSITIONS[family.padded_positions])
    text = text.replace("$project_init\n", _PROJECT[0] + "\n" if electra else "")
    text = text.replace("$project_call\n", _PROJECT[1] + "\n" if electra else "")
    return Template(text).substitute(
        Name=family.name, model_type=family.model_type, prefix=family.prefix,
        pad=1 if family.padded_positions else 0, pooler=family.pooler,
        seq_pooler=family.classifier == "pooled",
        position_padding=", padding_idx=config.pad_token_id" if family.padded_positions else "",
    )


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


def family_heads(family: Family) -> tuple[str, ...]:
    """Class suffixes the family's generated file defines (GPT-2: the base model only)."""
    return ("Model",) if family.pre_ln else tuple(HEADS)


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

    def put(self, name: str, value: Any, size: int = 0) -> None:
        if isinstance(value, Parameter):
            self.used.add(value.name)
        self.weights[name] = _tensor(value, size)

    def linear(self, node: Node, name: str) -> None:
        self.put(f"{name}.weight", node.args[1])
        self.put(f"{name}.bias", node.arg(2), int(node.args[1].data.shape[0]))

    def norm(self, node: Node, name: str) -> None:
        self.put(f"{name}.weight", node.args[1])
        self.put(f"{name}.bias", node.arg(2), int(node.args[1].data.shape[0]))
        self.eps.add(float(node.attr("eps", 1e-5)))

    def conv1d(self, nodes: list[Node], name: str) -> None:
        """GPT-2's Conv1D: the linears' weights stacked by rows, transposed to [in, out]."""
        weights = [n.args[1].data for n in nodes]
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
        why = _block_norm(ffn, family.pre_ln)
        if why:
            raise _refuse(f"{where}: the FFN block is not a BERT-style block ({why})")
        act = ffn.activation
        key = (act.op, act.attr("approximate", "none") if act.op == "gelu" else None)
        if key not in _ACTIVATIONS:
            raise _refuse(f"{where}: the FFN activation {act.op} has no transformers equivalent")
        self.acts.add(_ACTIVATIONS[key])
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
        if len(config.get("id2label") or {}) != labels:
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
    return config, got.weights, family


def _tokenizer_dir(module: Module) -> Path | None:
    ref = (module.meta.get("source") or {}).get("tokenizer")
    path = Path(str(ref)) if ref else None
    return path if path is not None and path.is_dir() else None


def export_hf(module: Module, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``module`` as a Hugging Face model directory (atomically; see the module doc)."""
    from safetensors.torch import save_file

    target = Path(path)
    check_output(target, force, kind="artifact")  # fail before any work
    config, weights, family = hf_config(module)
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
