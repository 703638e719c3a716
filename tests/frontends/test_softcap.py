"""Attention with soft-capped scores (Gemma 2: ``softmax(c * tanh(scale * QK^T / c) + mask)``):
raised to ``attention{softcap=c}`` in every layer, equal to Hugging Face on every backend, heads
and layers removed exactly; the kernel against the formula; int8 attention matmuls refused."""

from __future__ import annotations

import functools

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.errors import PassError
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.ir.ops.attention import attention
from optc.passes import PassManager
from optc.tests.conftest import assert_outputs_equal, zero_slices
from optc.tests.frontends.llm_cases import hf_outputs, hf_without_layers, llm_inputs


@functools.cache
def gemma2() -> tuple[torch.nn.Module, optc.Module]:
    import transformers

    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        attn_logit_softcapping=0.5, final_logit_softcapping=None, sliding_window=4)
    model = transformers.Gemma2Model(config).eval()
    return model, optc.capture(model)


def test_the_kernel_caps_the_scaled_scores() -> None:
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    got = attention(q, k, v, mask, num_heads=2, head_dim=4, softcap=0.5)
    qh, kh, vh = (t.view(2, 5, 2, 4).transpose(1, 2) for t in (q, k, v))
    scores = 0.5 * torch.tanh(qh @ kh.transpose(-1, -2) / 2 / 0.5)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    want = (probs @ vh).transpose(1, 2).reshape(2, 5, 8)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, attention(q, k, v, mask, num_heads=2, head_dim=4), atol=1e-3)


def test_every_layer_is_raised_with_its_cap() -> None:
    _, module = gemma2()
    layers = analyze(module).layers
    assert len(layers) == 2
    for layer in layers:
        att = layer.attention
        assert att.node.attr("softcap") == 0.5 and att.prunable is None and all(att.rotary)
        assert "softcap 0.5" in layer.raised()
    assert not collect_problems(module)


def test_matches_hugging_face_on_every_backend(backend: str) -> None:
    model, module = gemma2()
    inputs = llm_inputs(model, 3, 9)  # longer than the sliding window of 4
    expected = hf_outputs(model, inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_heads_and_layers_removed_exactly() -> None:
    model, base = gemma2()
    inputs = llm_inputs(model)
    module = base.clone()
    zero_slices(module, analyze(module).layers[0].attention.head_slices(3))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:3},dce").run(module)
    assert analyze(module).layers[0].attention.num_heads == 3
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
    dropped = base.clone()
    PassManager("drop-layers{layers=1}").run(dropped)
    want = hf_outputs(hf_without_layers(model, [1]), inputs, dropped.graph.outputs)
    assert_outputs_equal(run_backend(dropped, "eager", inputs), want)


def test_int8_attention_matmuls_are_refused_in_one_line() -> None:
    _, base = gemma2()
    with pytest.raises(PassError, match="soft-caps its scores"):
        PassManager("quantize{targets=matmuls}").run(base.clone())


def test_every_head_removed_through_the_sandwich_norm_leaves_the_stream() -> None:
    """Gemma 2 normalizes the attention's result before its residual add (x + norm(attn)):
    the analysis finds the add through that norm, and with no bias and an RMS norm, a layer
    without heads adds norm(0) = 0."""
    model, base = gemma2()
    inputs = llm_inputs(model)
    module = base.clone()
    att = analyze(module).layers[1].attention
    assert [n.op for n in att.branch_norms] == ["rms_norm"] and att.residual is not None
    for head in range(4):
        zero_slices(module, analyze(module).layers[1].attention.head_slices(head))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:0,1:1,1:2,1:3},dce").run(module)
    assert analyze(module).layers[1].attention is None
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
