"""Pieces the generated modeling files have in common (see :func:`render`).

Each piece stands in the context it has in the generated files: a method body in a stand-in
method whose ``def`` line is template only. The family modules ask for them with
``# @piece NAME``.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

# @begin banner
# Written by optc (https://github.com/optc): plain PyTorch, no optc import. optc recognizes this
# file by its exact bytes; an edited copy still loads in transformers but not in optc.
# @end

_DOCSTRING = '''The start of each generated file's docstring.  # template only
# @begin docstring
"""FAMILY_NAME with per-layer attention heads, head sizes and FFN widths.

Each FAMILY_UNIT i has config.num_attention_heads_per_layer[i] heads of
config.attention_head_size_per_layer[i] (0 heads: no attention block) and
config.intermediate_size_per_layer[i] FAMILY_FFN neurons (0: no FAMILY_FFN block); a FAMILY_UNIT with 0 heads
and config.attention_bias_only_per_layer[i] keeps the output bias of its pruned attention;
config.attention_topk_per_layer[i] is null for softmax attention or k for hard attention:
after the softmax each query keeps its k highest probabilities (and ties), rescaled to sum to 1
# @end
'''  # template only


def _config_fields(self, attention_topk_per_layer, attention_topk_renormalize_per_layer,  # template only
                   attention_bias_only_per_layer, layers):  # template only
    # @begin per_layer_flags
    self.attention_topk_per_layer = _per_layer(attention_topk_per_layer, None, layers)
    self.attention_topk_renormalize_per_layer = _per_layer(
        attention_topk_renormalize_per_layer, False, layers)
    self.attention_bias_only_per_layer = _per_layer(attention_bias_only_per_layer, False, layers)
    # @end


# @begin per_layer
def _per_layer(values, default, layers):
    values = [default] * layers if values is None else list(values)
    if len(values) != layers:
        raise ValueError(f"a per-layer field has {len(values)} entries for {layers} layers")
    return values
# @end


def _attention_fields(self, config, layer):  # template only
    # @begin attention_fields
    self.num_heads = config.num_attention_heads_per_layer[layer]
    self.head_dim = config.attention_head_size_per_layer[layer]
    self.topk = config.attention_topk_per_layer[layer]
    self.renormalize = config.attention_topk_renormalize_per_layer[layer]
    # @end


def _attention_shape(self, hidden_states):  # template only
    # @begin attention_shape
    batch, seq = hidden_states.shape[:2]
    shape = (batch, seq, self.num_heads, self.head_dim)
    # @end
    return shape  # template only


def _attention(self, q, k, v, mask, seq, output_attentions):  # template only
    # @begin attention
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
    # @end
    return context, probs  # template only


# @begin bias
class OptcFamilyBias(nn.Module):
    """A projection with no inputs left: only its bias."""

    def __init__(self, size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(size))
# @end


class _PreTrainedModel(nn.Module):  # template only
    # @begin init_weights
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, LINEAR_TYPES):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    # @end

    # @begin options
    def _options(self, output_attentions, output_hidden_states, return_dict):
        config = self.config
        return (config.output_attentions if output_attentions is None else output_attentions,
                config.output_hidden_states if output_hidden_states is None else output_hidden_states,
                getattr(config, "return_dict", True) if return_dict is None else return_dict)
    # @end

    # @begin input_embeddings
    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value
    # @end


def _model_forward(self, input_ids, attention_mask, output_attentions,  # template only
                   output_hidden_states, return_dict):  # template only
    # @begin options_call
    output_attentions, output_hidden_states, return_dict = self._options(
        output_attentions, output_hidden_states, return_dict)
    # @end
    # @begin default_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    # @end
    hidden_states = probs = None  # template only
    # @begin collect
    all_hidden = (hidden_states,) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    # @end
    # @begin collect_layer
    if output_hidden_states:
        all_hidden += (hidden_states,)
    if output_attentions:
        all_attentions += (probs,)
    # @end


def _head_forward(self, logits, labels, outputs, return_dict,  # template only
                  SequenceClassifierOutput, TokenClassifierOutput):  # template only
    # @begin sequence_loss
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
    # @end
    # @begin token_loss
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
    out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                attentions=outputs.attentions)
    return out if self._options(None, None, return_dict)[2] else out.to_tuple()
    # @end


def _qa_forward(self, start_logits, end_logits, start_positions, end_positions,  # template only
                outputs, return_dict, QuestionAnsweringModelOutput):  # template only
    # @begin qa_loss
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
    # @end
