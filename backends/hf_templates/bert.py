# @piece banner
"""The generated file of the BERT-like families (see the package docstring).  # template only
# @piece docstring
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow transformers'
FAMILY_NAME classes, so the weights read like a FAMILY_NAME checkpoint with smaller layers.
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

PAD_TOKEN_ID = ADD_POOLING_LAYER = SEQ_POOLER = HEAD_ACTIVATION = None  # template only

class OptcFamilyConfig(PretrainedConfig):
    model_type = "optc-FAMILY_TYPE"

    def __init__(self, vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                 initializer_range=0.02, pad_token_id=PAD_TOKEN_ID, embedding_size=None,
                 classifier_dropout=None, add_pooling_layer=ADD_POOLING_LAYER,
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
        # @piece per_layer_flags


# @piece per_layer


class OptcFamilyEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.embedding_size
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, size, padding_idx=config.pad_token_id)
        # @begin position_table
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, size)
        # @end
        # @begin position_table_padded
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, size, padding_idx=config.pad_token_id)
        # @end
        # @piece position_table
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, size)
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        # @begin position_ids
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        # @end
        # @begin position_ids_padded
        # positions count the non-padding tokens, starting after pad_token_id (as RoBERTa does)
        not_pad = input_ids.ne(self.pad_token_id).int()
        position_ids = (torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad).long()
        position_ids = position_ids + self.pad_token_id
        # @end
        # @piece position_ids
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class OptcFamilySelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        # @piece attention_fields
        self.dropout_p = config.attention_probs_dropout_prob
        inner = self.num_heads * self.head_dim
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)

    def forward(self, hidden_states, mask, output_attentions=False):
        # @piece attention_shape
        q = self.query(hidden_states).view(shape).transpose(1, 2)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        # @piece attention
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return context, probs


class OptcFamilySelfOutput(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        inner = config.num_attention_heads_per_layer[layer] * config.attention_head_size_per_layer[layer]
        self.dense = nn.Linear(inner, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context, residual):
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class OptcFamilyAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.self = OptcFamilySelfAttention(config, layer)
        self.output = OptcFamilySelfOutput(config, layer)

    def forward(self, hidden_states, mask, output_attentions=False):
        context, probs = self.self(hidden_states, mask, output_attentions)
        return self.output(context, hidden_states), probs


# @piece bias


class OptcFamilyHeadlessOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = OptcFamilyBias(config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, residual):
        return self.LayerNorm(self.dense.bias + residual)


class OptcFamilyHeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.output = OptcFamilyHeadlessOutput(config)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.output(hidden_states), None


class OptcFamilyIntermediate(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size_per_layer[layer])
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class OptcFamilyOutput(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size_per_layer[layer], config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate, residual):
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)


class OptcFamilyLayer(nn.Module):
    """One layer; its attention block or FFN block may be absent (pruned away)."""

    def __init__(self, config, layer):
        super().__init__()
        has_attention = config.num_attention_heads_per_layer[layer] > 0
        has_ffn = config.intermediate_size_per_layer[layer] > 0
        self.attention = OptcFamilyAttention(config, layer) if has_attention else None
        if not has_attention and config.attention_bias_only_per_layer[layer]:
            self.attention = OptcFamilyHeadlessAttention(config)
        self.intermediate = OptcFamilyIntermediate(config, layer) if has_ffn else None
        self.output = OptcFamilyOutput(config, layer) if has_ffn else None

    def forward(self, hidden_states, mask, output_attentions=False):
        probs = None
        if self.attention is not None:
            hidden_states, probs = self.attention(hidden_states, mask, output_attentions)
        if self.intermediate is not None:
            hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states, probs


class OptcFamilyEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(
            OptcFamilyLayer(config, i) for i in range(config.num_hidden_layers))


class OptcFamilyPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states):
        return torch.tanh(self.dense(hidden_states[:, 0]))


class OptcFamilyPreTrainedModel(PreTrainedModel):
    config_class = OptcFamilyConfig
    base_model_prefix = "FAMILY_PREFIX"
    _supports_sdpa = True

    # @piece init_weights

    # @piece options


class OptcFamilyModel(OptcFamilyPreTrainedModel):
    def __init__(self, config, add_pooling_layer=None):
        super().__init__(config)
        pooling = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.embeddings = OptcFamilyEmbeddings(config)
        # @begin project_init
        if config.embedding_size != config.hidden_size:  # embeddings narrower than the layers
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        # @end
        # @piece project_init
        self.encoder = OptcFamilyEncoder(config)
        self.pooler = OptcFamilyPooler(config) if pooling else None
        self.post_init()

    # @piece input_embeddings

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        # @piece options_call
        # @piece default_mask
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask[:, None, None, :].bool()  # [batch, 1, 1, seq]: which keys to attend
        hidden_states = self.embeddings(input_ids, token_type_ids)
        # @begin project_call
        if self.config.embedding_size != self.config.hidden_size:
            hidden_states = self.embeddings_project(hidden_states)
        # @end
        # @piece project_call
        # @piece collect
        for layer in self.encoder.layer:
            hidden_states, probs = layer(hidden_states, mask, output_attentions)
            # @piece collect_layer
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled,
                                         hidden_states=all_hidden, attentions=all_attentions)
        return out if return_dict else out.to_tuple()
# @begin head_class


class OptcFamilyClassificationHead(nn.Module):
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
# @end
# @piece head_class


class OptcFamilyForSequenceClassification(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout
        dropout = config.hidden_dropout_prob if dropout is None else dropout
        self.FAMILY_PREFIX = OptcFamilyModel(config, add_pooling_layer=SEQ_POOLER)
        # @begin classifier_init
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        # @end
        # @begin classifier_init_head
        self.classifier = OptcFamilyClassificationHead(config, HEAD_ACTIVATION)
        # @end
        # @piece classifier_init
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
        # @begin classifier_call
        logits = self.classifier(self.dropout(outputs.pooler_output))
        # @end
        # @begin classifier_call_head
        logits = self.classifier(outputs.last_hidden_state)
        # @end
        # @piece classifier_call
        # @piece sequence_loss


class OptcFamilyForTokenClassification(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = config.classifier_dropout
        self.FAMILY_PREFIX = OptcFamilyModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        # @piece token_loss


class OptcFamilyForQuestionAnswering(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.FAMILY_PREFIX = OptcFamilyModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        outputs = self.FAMILY_PREFIX(input_ids, attention_mask, token_type_ids, output_attentions,
                               output_hidden_states, return_dict=True)
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).split(1, dim=-1)
        # @piece qa_loss
