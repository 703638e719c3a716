"""Tiny random-weight DeBERTa-v2/v3 encoders and their captured IR, shared by the frontend and
structural-pass tests of disentangled attention."""

from __future__ import annotations

import copy
import functools

import torch

import optc
from optc.ir import Module

DEBERTA_V3 = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                  pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32,
                  share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                  type_vocab_size=0)
"""DeBERTa-v3's defaults at hidden 32: c2p and p2c from the layer's own query/key projections
(share_att_key), log-bucketed relative positions (16 buckets, span 16), layer-normed relative
embeddings, no absolute positions."""

VARIANTS = {
    "v3": {},
    "separate": {"share_att_key": False},
    "c2p": {"pos_att_type": ["c2p"], "share_att_key": False},
    "linear-positions": {"position_buckets": -1, "max_relative_positions": 8,
                         "norm_rel_ebd": "none", "position_biased_input": True},
}
"""Config overrides: v3; separate pos_key_proj/pos_query_proj (DeBERTa-v2); c2p only (its
own pos_key_proj); unbucketed relative positions clamped to a span of 8, absolute positions."""


def deberta_model(variant: str = "v3") -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    return tf.DebertaV2Model(tf.DebertaV2Config(**{**DEBERTA_V3, **VARIANTS[variant]})).eval()


@functools.cache
def deberta_captured(variant: str = "v3") -> tuple[torch.nn.Module, Module]:
    """The model and its captured IR, captured once per session: clone before mutating."""
    model = deberta_model(variant)
    return model, optc.capture(model)


def deberta_inputs(batch: int = 3, seq: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids with right padding in every other row (padded query rows attend uniformly
    in DeBERTa, so they are compared too)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, DEBERTA_V3["vocab_size"], (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(0, batch, 2):
        mask[row, seq - 1 - row % (seq - 2):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hf_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {"last_hidden_state": model(**inputs).last_hidden_state}


def hf_silenced(model: torch.nn.Module, heads: dict[int, list[int]] | None = None,
                neurons: dict[int, list[int]] | None = None) -> torch.nn.Module:
    """A copy of ``model`` whose ``heads`` (layer -> heads) and FFN ``neurons`` contribute
    nothing: their output-projection columns are zero, every other weight is kept, so a model
    with those units removed must compute the same outputs."""
    copy_ = copy.deepcopy(model)
    dim = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for i, hs in (heads or {}).items():
            dense = copy_.encoder.layer[i].attention.output.dense.weight
            for h in hs:
                dense[:, h * dim:(h + 1) * dim] = 0
        for i, ns in (neurons or {}).items():
            copy_.encoder.layer[i].output.dense.weight[:, ns] = 0
    return copy_.eval()


def hf_without_layers(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    copy_ = copy.deepcopy(model)
    copy_.encoder.layer = torch.nn.ModuleList(x for i, x in enumerate(copy_.encoder.layer) if i not in drop)
    return copy_.eval()
