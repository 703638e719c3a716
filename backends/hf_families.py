"""The families the Hugging Face backend writes, and the modeling file it writes for each.

Data apart from logic (:mod:`optc.backends.hf` turns the IR into config.json and weights): each
:class:`Family` says where transformers' classes keep each weight, and :func:`modeling_source`
gives the exact text of the generated modeling file (plain PyTorch, no optc import), rendered
from the template modules of :mod:`optc.backends.hf_templates`; it depends only on the family,
so that optc can recognize its own file byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optc.backends.hf_templates import render

__all__ = ["Family", "FAMILIES", "HEADS", "family_heads", "modeling_file_name", "modeling_source"]

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
    template: str = "bert"
    """The module of :mod:`optc.backends.hf_templates` its modeling file is written from."""


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
                         _DISTIL_NAMES, _DISTIL_TABLES, config_names=_DISTIL_CONFIG,
                         template="distilbert"),
    "gpt2": Family("gpt2", "GPT2", "transformer", False, False, "none", _GPT2_NAMES,
                   _GPT2_TABLES, pre_ln=True, config_names=_GPT2_CONFIG, template="gpt2"),
}
"""Source architectures the generated modeling file supports, by ``model_type``."""

HEADS = {
    "Model": ("AutoModel", ("last_hidden_state",)),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", ("logits",)),
    "ForTokenClassification": ("AutoModelForTokenClassification", ("logits",)),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
}
"""Class suffix -> (transformers auto class, outputs the IR must have)."""

def modeling_file_name(family: Family) -> str:
    return f"modeling_optc_{family.model_type.replace('-', '_')}.py"



def family_heads(family: Family) -> tuple[str, ...]:
    """Class suffixes the family's generated file defines (GPT-2: the base model only)."""
    return ("Model",) if family.pre_ln else tuple(HEADS)


# -- the generated modeling file --------------------------------------------------------------
_TEMPLATE_WORDS = {
    "bert": {"FAMILY_UNIT": "layer", "FAMILY_FFN": "FFN", "LINEAR_TYPES": "nn.Linear"},
    "distilbert": {"FAMILY_UNIT": "layer", "FAMILY_FFN": "FFN", "LINEAR_TYPES": "nn.Linear"},
    "gpt2": {"FAMILY_UNIT": "block", "FAMILY_FFN": "MLP", "LINEAR_TYPES": "(nn.Linear, Conv1D)"},
}
"""Words each template module (:mod:`optc.backends.hf_templates`) fills in the same way for
every family it serves."""

_HEAD_ACTIVATION = {"head_tanh": "torch.tanh", "head_gelu": "F.gelu"}


def modeling_source(family: Family) -> str:
    """The modeling file optc writes for ``family`` (the same bytes for every model of it)."""
    names = {"FAMILY_TYPE": family.model_type, "FAMILY_PREFIX": family.prefix,
             **_TEMPLATE_WORDS[family.template]}
    if family.template != "bert":
        return render(family.template, family.name, names)
    pooled = family.classifier == "pooled"
    padded = family.padded_positions
    electra = family.model_type == "electra"
    names.update(PAD_TOKEN_ID=str(int(padded)), ADD_POOLING_LAYER=str(family.pooler),
                 SEQ_POOLER=str(pooled), HEAD_ACTIVATION=_HEAD_ACTIVATION.get(family.classifier, ""))
    variants = {
        "position_table": "position_table_padded" if padded else "position_table",
        "position_ids": "position_ids_padded" if padded else "position_ids",
        "project_init": "project_init" if electra else None,
        "project_call": "project_call" if electra else None,
        "head_class": None if pooled else "head_class",
        "classifier_init": "classifier_init" if pooled else "classifier_init_head",
        "classifier_call": "classifier_call" if pooled else "classifier_call_head",
    }
    return render("bert", family.name, names, variants)
