# @piece banner
"""The generated file of GPT-2 (see the package docstring).  # template only
# @piece docstring
when config.attention_topk_renormalize_per_layer[i]. Module and parameter names follow
transformers' FAMILY_NAME classes (Conv1D weights are [in, out]), so the weights read like a FAMILY_NAME
checkpoint with smaller blocks.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput


class OptcFamilyConfig(PretrainedConfig):
    model_type = "optc-FAMILY_TYPE"
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
        # @piece per_layer_flags


# @piece per_layer


class Conv1D(nn.Module):
    """transformers' GPT2 projection: y = x @ weight + bias, weight [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(x.size()[:-1] + (self.nf,))


class OptcFamilyAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        # @piece attention_fields
        self.dropout_p = config.attn_pdrop
        self.inner = self.num_heads * self.head_dim
        self.c_attn = Conv1D(3 * self.inner, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, self.inner)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, mask, output_attentions=False):
        # @piece attention_shape
        q, k, v = self.c_attn(hidden_states).split(self.inner, dim=2)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        # @piece attention
        context = context.transpose(1, 2).reshape(batch, seq, self.inner)
        return self.resid_dropout(self.c_proj(context)), probs


# @piece bias


class OptcFamilyHeadlessAttention(nn.Module):
    """An attention block whose heads were all pruned: it still adds its output bias."""

    def __init__(self, config):
        super().__init__()
        self.c_proj = OptcFamilyBias(config.n_embd)

    def forward(self, hidden_states, mask, output_attentions=False):
        return self.c_proj.bias, None


class OptcFamilyMLP(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        width = config.intermediate_size_per_layer[layer]
        self.c_fc = Conv1D(width, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, width)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class OptcFamilyBlock(nn.Module):
    """One pre-LN block; its attention or MLP may be absent (pruned away)."""

    def __init__(self, config, layer):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = self.attn = None
        if config.num_attention_heads_per_layer[layer] > 0:
            self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
            self.attn = OptcFamilyAttention(config, layer)
        elif config.attention_bias_only_per_layer[layer]:
            self.attn = OptcFamilyHeadlessAttention(config)
        if config.intermediate_size_per_layer[layer] > 0:
            self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
            self.mlp = OptcFamilyMLP(config, layer)
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


class OptcFamilyPreTrainedModel(PreTrainedModel):
    config_class = OptcFamilyConfig
    base_model_prefix = "FAMILY_PREFIX"
    _supports_sdpa = True

    # @piece init_weights


class OptcFamilyModel(OptcFamilyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(OptcFamilyBlock(config, i) for i in range(config.n_layer))
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
        # @piece default_mask
        positions = torch.arange(seq, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]  # [query, key]: no look-ahead
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()
        hidden_states = self.drop(self.wte(input_ids) + self.wpe(positions.unsqueeze(0)))
        # @piece collect
        for block in self.h:
            hidden_states, probs = block(hidden_states, mask, output_attentions)
            # @piece collect_layer
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:  # as transformers: the last entry is after the final norm
            all_hidden = all_hidden[:-1] + (hidden_states,)
        out = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden,
                              attentions=all_attentions)
        return out if return_dict else out.to_tuple()
