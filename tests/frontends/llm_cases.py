"""Tiny random-weight decoder LLMs (Llama, Mistral, Phi-3, Gemma, Qwen2; the parallel
attention+FFN families Phi, GPT-NeoX, Falcon, GPT-J) and their captured IR,
shared by the decoder tests of frontends, passes and backends."""

from __future__ import annotations

import copy
import functools

import torch

import optc
from optc.ir import Module

LLM_FAMILIES = ("llama", "mistral", "phi3", "gemma", "qwen2")
"""Decoder families with grouped-query attention, rotary embeddings, RMSNorm and a gated FFN."""

LLM_ONNX_FAMILIES = ("mistral", "gemma")
"""The families whose lowered graphs differ, for tests that check every family on eager and
TorchScript and ONNX on these (an export is tens of seconds): Mistral's graph has every op of
Llama's, Phi-3's and Qwen2's, which are the same (grouped-query attention traced with its mask
as a bias, rotary, rms_norm, silu; Phi-3's fused projections are separate linears once raised,
Qwen2's q/k/v biases plain linear biases), plus its sliding-window mask; Gemma's adds the Gelu
lowering and a head_dim other than hidden / heads."""


def on_backends(families: tuple[str, ...], onnx: tuple[str, ...]) -> list[tuple[str, str]]:
    """(family, backend) pairs: every family on eager and TorchScript, ``onnx`` on ONNX."""
    return [(f, b) for f in families for b in ("eager", "torchscript")] + [(f, "onnx") for f in onnx]

COMMON = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
              use_cache=False)

SHAPES = {
    "llama": (4, 2, 8),
    "mistral": (4, 2, 8),
    "phi3": (4, 2, 8),
    "gemma": (4, 2, 16),
    "qwen2": (4, 2, 8),
}
"""(query heads, kv heads, head_dim) of each family's tiny config."""


MODERNBERT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
                  local_attention=4)
"""ModernBERT: fused Wqkv, rotary, GeGLU, pre-LN without the first layer's attention norm,
alternating global and sliding-window (local) attention; 3 layers so both kinds appear."""


def modernbert_model() -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    model = tf.ModernBertModel(tf.ModernBertConfig(**MODERNBERT)).eval()
    model.config._attn_implementation = "sdpa"
    return model


@functools.cache
def modernbert_captured() -> tuple[torch.nn.Module, Module]:
    model = modernbert_model()
    return model, optc.capture(model)


def t5_encoder_model() -> torch.nn.Module:
    """A T5 encoder: relative position bias (computed in layer 0, added to every layer's
    scores as a per-head mask), no score scaling, RMSNorm without a bias, ReLU FFN."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                         use_cache=False)
    return tf.T5EncoderModel(config).eval()


@functools.cache
def t5_captured() -> tuple[torch.nn.Module, Module]:
    model = t5_encoder_model()
    return model, optc.capture(model)


def bart_model() -> torch.nn.Module:
    """A BART encoder-decoder (post-LN; decoder layers: causal self-attention, cross-attention
    on the encoder output, FFN); its decoder needs sequences of at least 3 tokens."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BartConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_position_embeddings=64, use_cache=False)
    return tf.BartModel(config).eval()


@functools.cache
def bart_captured() -> tuple[torch.nn.Module, Module]:
    model = bart_model()
    return model, optc.capture(model)


PARALLEL_FAMILIES = ("phi", "gpt_neox", "falcon", "falcon_40b", "gptj")
"""Decoders whose layers add attention and FFN in parallel: ``x + attn(ln(x)) + ffn(ln(x))``."""

PARALLEL_SHAPES = {
    "phi": (4, 4, 8),
    "gpt_neox": (4, 4, 8),
    "falcon": (4, 1, 8),
    "falcon_40b": (4, 2, 8),
    "gptj": (4, 4, 8),
}
"""(query heads, kv heads, head_dim) of each parallel family's tiny config."""

PARALLEL_ONNX_FAMILIES = ("gpt_neox", "falcon", "gptj")
"""The parallel families whose lowered graphs differ (see :data:`LLM_ONNX_FAMILIES`): GPT-NeoX's
has every op of Phi's (fused MultiHeadAttention, layer_norm, Gelu, partial rotary) with one
LayerNorm per branch; Falcon's multi-query attention is traced with its mask as a bias (as
Falcon-40B's grouped one); GPT-J has the interleaved rotary (repeat_interleave, split)."""


def parallel_config(family: str, **overrides) -> object:
    """The tiny config of a parallel family: hidden 32, 2 layers, 4 heads, FFN 64. Phi:
    separate q/k/v with biases, rotary on half of each head, one LayerNorm shared by both
    branches (PhiForCausalLM, Phi-1/2); GPT-NeoX: fused query_key_value grouped per head,
    rotary on half of each head, one LayerNorm per branch (``use_parallel_residual``); Falcon
    (7B style): fused qkv with one shared key/value head (multi-query), no biases, one shared
    LayerNorm; Falcon-40B (``new_decoder_architecture``): fused qkv grouped per kv head
    ([q heads of the group, k, v] for each of 2 kv heads), one LayerNorm per branch; GPT-J: separate q/k/v without biases, interleaved ("rotate every two") rotary on
    the first 4 features of each head, one shared LayerNorm."""
    import transformers as tf

    if family == "phi":
        return tf.PhiConfig(**{**COMMON, "num_key_value_heads": 4, "partial_rotary_factor": 0.5,
                               **overrides})
    if family == "gpt_neox":
        kwargs = {k: v for k, v in COMMON.items() if k != "num_key_value_heads"}
        return tf.GPTNeoXConfig(**{**kwargs, "rotary_pct": 0.5, **overrides})
    if family == "falcon":
        return tf.FalconConfig(**{"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "ffn_hidden_size": 64,
                                  "max_position_embeddings": 64, "use_cache": False, **overrides})
    if family == "falcon_40b":
        return parallel_config("falcon", **{"new_decoder_architecture": True, "num_kv_heads": 2,
                                            **overrides})
    if family == "gptj":
        return tf.GPTJConfig(**{"vocab_size": 120, "n_embd": 32, "n_layer": 2, "n_head": 4,
                                "n_inner": 64, "rotary_dim": 4, "n_positions": 64,
                                "bos_token_id": 1, "eos_token_id": 2, "use_cache": False,
                                **overrides})
    raise ValueError(family)


def parallel_model(family: str, causal_lm: bool = False, **overrides) -> torch.nn.Module:
    """A random-weight model of a parallel family (base model or ...ForCausalLM), in eval mode."""
    return _from_config(parallel_config(family, **overrides), causal_lm)


@functools.cache
def parallel_captured(family: str) -> tuple[torch.nn.Module, Module]:
    """The base model of a parallel family and its captured IR (clone before mutating)."""
    model = parallel_model(family)
    return model, optc.capture(model)


def llm_config(family: str, **overrides) -> object:
    """The tiny config of ``family``: hidden 32, 2 layers, 4 query heads over 2 kv heads,
    intermediate 64. Mistral gets a sliding window shorter than the test sequences, Phi-3 its
    fused qkv/gate_up projections, Gemma head_dim 16 != hidden/heads, (1 + w) RMSNorm and GeGLU,
    Qwen2 q/k/v biases."""
    import transformers as tf

    kwargs = {**COMMON, **overrides}
    if family == "llama":
        return tf.LlamaConfig(**kwargs)
    if family == "mistral":
        return tf.MistralConfig(**{"sliding_window": 3, **kwargs})
    if family == "phi3":
        return tf.Phi3Config(**{"pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1, **kwargs})
    if family == "gemma":
        return tf.GemmaConfig(**{"head_dim": 16, **kwargs})
    if family == "qwen2":
        return tf.Qwen2Config(**kwargs)
    raise ValueError(family)


def llm_model(family: str, causal_lm: bool = False, **overrides) -> torch.nn.Module:
    """A random-weight model of ``family`` (the base model, or ...ForCausalLM), in eval mode."""
    return _from_config(llm_config(family, **overrides), causal_lm)


def _from_config(config: object, causal_lm: bool) -> torch.nn.Module:
    """Seeded random weights for ``config`` (base model or ...ForCausalLM), eval mode, SDPA."""
    import transformers as tf

    auto = tf.AutoModelForCausalLM if causal_lm else tf.AutoModel
    torch.manual_seed(0)
    model = auto.from_config(config).eval()
    model.config._attn_implementation = "sdpa"
    return model


@functools.cache
def llm_captured(family: str) -> tuple[torch.nn.Module, Module]:
    """The base model and its captured IR, captured once per session: clone before mutating."""
    model = llm_model(family)
    return model, optc.capture(model)


def llm_inputs(model: torch.nn.Module, batch: int = 3, seq: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with right padding in every other row (decoders attend causally, so padded
    query rows still see the real tokens before them)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(0, batch, 2):
        mask[row, seq - 1 - row % (seq - 2):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def layers_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's decoder layer owner (``model.model`` of a ...ForCausalLM)."""
    for attr in ("model", "transformer", "gpt_neox"):
        inner = getattr(model, attr, None)
        if inner is not None and (hasattr(inner, "layers") or hasattr(inner, "h")):
            return inner
    return model


def hf_without_layers(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    """A deep copy of ``model`` with decoder layers ``drop`` deleted (``layers``, or ``h``
    for Falcon)."""
    copy_ = copy.deepcopy(model)
    owner = layers_of(copy_)
    attr = "layers" if hasattr(owner, "layers") else "h"
    setattr(owner, attr, torch.nn.ModuleList(
        layer for i, layer in enumerate(getattr(owner, attr)) if i not in drop))
    for i, layer in enumerate(getattr(owner, attr)):
        if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
            layer.self_attn.layer_idx = i
    copy_.config.num_hidden_layers = len(getattr(owner, attr))
    if getattr(copy_.config, "layer_types", None):
        copy_.config.layer_types = [t for i, t in enumerate(copy_.config.layer_types) if i not in drop]
    return copy_.eval()


def hf_outputs(model: torch.nn.Module, inputs, names) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(**inputs)
    return {name: out[name] for name in names}
