# @piece banner
"""The generated file of DistilBERT (see the package docstring).  # template only
# @piece docstring
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow
transformers' FAMILY_NAME classes, so the weights read like a FAMILY_NAME checkpoint with smaller
layers.
"""

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


class OptcFamilyConfig(PretrainedConfig):
    model_type = "optc-FAMILY_TYPE"
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
        # @piece per_layer_flags


# @piece per_layer


class OptcFamilyEmbeddings(nn.Module):
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


class OptcFamilyAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        # @piece attention_fields
        self.dropout_p = config.attention_dropout
        inner = self.num_heads * self.head_dim
        self.q_lin = nn.Linear(config.dim, inner)
        self.k_lin = nn.Linear(config.dim, inner)
        self.v_lin = nn.Linear(config.dim, inner)
        self.out_lin = nn.Linear(inner, config.dim)

    def forward(self, hidden_states, mask, output_attentions=False):
        # @piece attention_shape
        q = self.q_lin(hidden_states).view(shape).transpose(1, 2)
        k = self.k_lin(hidden_states).view(shape).transpose(1, 2)
        v = self.v_lin(hidden_states).view(shape).transpose(1, 2)
        # @piece attention
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.out_lin(context), probs


# @piece bias


class OptcFamilyHeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.out_lin = OptcFamilyBias(config.dim)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.out_lin.bias, None


class OptcFamilyFFN(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.lin1 = nn.Linear(config.dim, config.intermediate_size_per_layer[layer])
        self.lin2 = nn.Linear(config.intermediate_size_per_layer[layer], config.dim)
        self.activation = ACT2FN[config.activation]

    def forward(self, hidden_states):
        return self.dropout(self.lin2(self.activation(self.lin1(hidden_states))))


class OptcFamilyLayer(nn.Module):
    """One layer; its attention block or FFN block may be absent (pruned away)."""

    def __init__(self, config, layer):
        super().__init__()
        self.attention = None
        if config.num_attention_heads_per_layer[layer] > 0:
            self.attention = OptcFamilyAttention(config, layer)
        elif config.attention_bias_only_per_layer[layer]:
            self.attention = OptcFamilyHeadlessAttention(config)
        if self.attention is not None:
            self.sa_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        if config.intermediate_size_per_layer[layer] > 0:
            self.ffn = OptcFamilyFFN(config, layer)
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


class OptcFamilyTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(OptcFamilyLayer(config, i) for i in range(config.n_layers))


class OptcFamilyPreTrainedModel(PreTrainedModel):
    config_class = OptcFamilyConfig
    base_model_prefix = "FAMILY_PREFIX"
    _supports_sdpa = True

    # @piece init_weights

    # @piece options


class OptcFamilyModel(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = OptcFamilyEmbeddings(config)
        self.transformer = OptcFamilyTransformer(config)
        self.post_init()

    # @piece input_embeddings

    def forward(self, input_ids, attention_mask=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        # @piece options_call
        # @piece default_mask
        mask = attention_mask[:, None, None, :].bool()  # [batch, 1, 1, seq]: which keys to attend
        hidden_states = self.embeddings(input_ids)
        # @piece collect
        for layer in self.transformer.layer:
            hidden_states, probs = layer(hidden_states, mask, output_attentions)
            # @piece collect_layer
        out = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden,
                              attentions=all_attentions)
        return out if return_dict else out.to_tuple()


class OptcFamilyForSequenceClassification(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.FAMILY_PREFIX = OptcFamilyModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        pooled = F.relu(self.pre_classifier(outputs.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        # @piece sequence_loss


class OptcFamilyForTokenClassification(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.FAMILY_PREFIX = OptcFamilyModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        # @piece token_loss


class OptcFamilyForQuestionAnswering(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.FAMILY_PREFIX = OptcFamilyModel(config)
        self.qa_outputs = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.qa_dropout)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, output_attentions,
                                  output_hidden_states, return_dict=True)
        logits = self.qa_outputs(self.dropout(outputs.last_hidden_state))
        start_logits, end_logits = logits.split(1, dim=-1)
        # @piece qa_loss
