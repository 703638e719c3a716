"""Decoder LLMs (Llama, Mistral, Phi-3, Gemma, Qwen2): captured, every layer's attention and
gated FFN raised, the structure analysis's heads/neurons, and numbers equal to Hugging Face on
eager, TorchScript and ONNX; the ops they need (rms_norm, rotary, grouped-query attention)."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.frontends.raising import raise_high_level_ops
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.ir.ops.attention import attention, rotary
from optc.ir.ops.norm import rms_norm
from optc.tests.conftest import backend_runner
from optc.tests.frontends.llm_cases import (
    LLM_FAMILIES,
    LLM_ONNX_FAMILIES,
    SHAPES,
    hf_outputs,
    llm_captured,
    llm_inputs,
    llm_model,
    on_backends,
)


def max_diff(got, expected) -> float:
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
    return max((got[n].float() - expected[n].float()).abs().max().item() for n in expected)


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_every_layer_is_raised(family: str) -> None:
    model, module = llm_captured(family)
    heads, kv, dim = SHAPES[family]
    report = raise_high_level_ops(optc.capture(model, raise_ops=False))
    assert not [m for m in report.misses if "attention" in m], report.misses
    assert report.raised["attention"] == 2 and report.raised["rotary"] == 4
    assert report.raised["rms_norm"] == 5  # two per layer and the final norm
    layers = analyze(module).layers
    assert [layer.id for layer in layers] == [0, 1]
    for layer in layers:
        att, ffn = layer.attention, layer.ffn
        assert (att.num_heads, att.num_kv_heads, att.head_dim) == (heads, kv, dim)
        assert att.prunable is None and all(r is not None for r in att.rotary)
        assert att.key.args[1].data.shape[0] == kv * dim and att.query.args[1].data.shape[0] == heads * dim
        assert [n.op for n in att.norms] == ["rms_norm"] and att.residual is not None
        assert ffn.gated is not None and ffn.product is not None and ffn.width == 64
        assert ffn.activation.op == ("gelu" if family == "gemma" else "silu")
        assert [n.op for n in ffn.norms] == ["rms_norm"]
        assert att.stream_out is not None and ffn.stream_in is not None
    assert not collect_problems(module)


@pytest.mark.parametrize(("family", "backend"), on_backends(LLM_FAMILIES, LLM_ONNX_FAMILIES))
def test_matches_hugging_face_on_every_backend(family: str, backend: str) -> None:
    model, module = llm_captured(family)
    run = backend_runner(module, backend)  # one export, two shapes (dynamic batch and seq)
    for batch, seq in ((3, 7), (1, 5)):
        inputs = llm_inputs(model, batch, seq)
        expected = hf_outputs(model, inputs, module.graph.outputs)
        assert max_diff(run(inputs), expected) <= 1e-5


def test_gqa_slices_and_kv_groups() -> None:
    _, module = llm_captured("llama")
    att = analyze(module).layers[0].attention
    assert att.kv_heads == [0, 0, 1, 1] and att.kv_group(1) == [2, 3]
    q, o = att.query.args[1].name, att.output.args[1].name
    k = att.key.args[1].name
    names = {(s.param, s.dim) for s in att.head_slices(3)}
    assert names == {(q, 0), (o, 1)}  # kv head 1 still serves query head 2
    kv = att.kv_slices(1)
    assert {(s.param, s.dim, s.index) for s in kv} >= {(k, 0, tuple(range(8, 16))),
                                                         (q, 0, tuple(range(24, 32)))}


def test_qwen2_qkv_biases_are_part_of_the_slices() -> None:
    _, module = llm_captured("qwen2")
    att = analyze(module).layers[1].attention
    assert all(lin.arg(2) is not None for lin in (att.query, att.key, att.value))
    assert att.output.arg(2) is None
    assert len(att.kv_slices(0)) == 4 + 2 * 2 + 2  # k/v weight+bias, 2 heads' q weight+bias, o


def test_phi3_fused_projections_are_split_into_slices_of_one_weight() -> None:
    model, module = llm_captured("phi3")
    layer = analyze(module).layers[0]
    fused = model.layers[0].self_attn.qkv_proj.weight.detach()
    att = layer.attention
    parts = [att.query.args[1].data, att.key.args[1].data, att.value.args[1].data]
    assert [p.shape[0] for p in parts] == [32, 16, 16]
    assert torch.equal(torch.cat(parts), fused)
    gate_up = model.layers[0].mlp.gate_up_proj.weight.detach()
    assert torch.equal(torch.cat([layer.ffn.up.args[1].data, layer.ffn.gated.args[1].data]), gate_up)


def test_causal_lm_directory_keeps_its_lm_head(tmp_path) -> None:
    model = llm_model("llama", causal_lm=True)
    model.save_pretrained(tmp_path, safe_serialization=True)
    module = optc.capture(tmp_path)
    assert list(module.graph.outputs) == ["logits"]
    assert module.meta["source"]["class"] == "LlamaForCausalLM"
    assert len(analyze(module).layers) == 2
    inputs = llm_inputs(model)
    expected = hf_outputs(model, inputs, ["logits"])
    assert max_diff(run_backend(module, "eager", inputs), expected) <= 1e-5


# -- the ops ---------------------------------------------------------------------------------------
def test_rms_norm_kernel_matches_llama_and_gemma() -> None:
    import transformers.models.gemma.modeling_gemma as gemma
    import transformers.models.llama.modeling_llama as llama

    x = torch.randn(2, 3, 8)
    ref = llama.LlamaRMSNorm(8, eps=1e-5)
    ref.weight.data = torch.randn(8)
    assert torch.equal(rms_norm(x, ref.weight.data, eps=1e-5), ref(x).detach())
    ref = gemma.GemmaRMSNorm(8, eps=1e-6)
    ref.weight.data = torch.randn(8)
    assert torch.equal(rms_norm(x, ref.weight.data, eps=1e-6, offset=1.0), ref(x).detach())


def test_rotary_kernel_matches_hugging_face() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(2, 5, 4 * 8), torch.randn(2, 5, 2 * 8)
    cos, sin = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    q4, k4 = q.view(2, 5, 4, 8).transpose(1, 2), k.view(2, 5, 2, 8).transpose(1, 2)
    want_q, want_k = apply_rotary_pos_emb(q4, k4, cos, sin)
    assert torch.equal(rotary(q, cos, sin, head_dim=8), want_q.transpose(1, 2).reshape(2, 5, 32))
    assert torch.equal(rotary(k, cos, sin, head_dim=8), want_k.transpose(1, 2).reshape(2, 5, 16))


def test_grouped_query_attention_kernel_reads_its_kv_head() -> None:
    q, k, v = torch.randn(2, 5, 3 * 4), torch.randn(2, 5, 2 * 4), torch.randn(2, 5, 2 * 4)
    got = attention(q, k, v, num_heads=3, head_dim=4, num_kv_heads=2, kv_heads=[0, 1, 1])
    # The same as plain attention with k/v heads repeated as the map says.
    k3 = torch.cat([k[..., 0:4], k[..., 4:8], k[..., 4:8]], -1)
    v3 = torch.cat([v[..., 0:4], v[..., 4:8], v[..., 4:8]], -1)
    want = attention(q, k3, v3, num_heads=3, head_dim=4)
    assert torch.allclose(got, want, atol=1e-6)
    regular = attention(q[..., :8], k, v, num_heads=2, head_dim=4, num_kv_heads=2)
    assert torch.allclose(regular, attention(q[..., :8], k, v, num_heads=2, head_dim=4), atol=0)


def test_verifier_names_a_bad_kv_map() -> None:
    _, base = llm_captured("llama")
    module = base.clone()
    node = analyze(module).layers[0].attention.node
    node.set_attr("kv_heads", [0, 0, 0, 0])
    problems = " ".join(collect_problems(module))
    assert "leaves kv heads unused" in problems
    node.set_attr("kv_heads", [0, 0, 2, 1])
    assert "must name a kv head in 0..1" in " ".join(collect_problems(module))


# -- ModernBERT (an encoder with fused Wqkv, rotary, GeGLU, local/global attention) --------------
def test_modernbert_every_layer_is_raised_and_matches_hf(backend: str) -> None:
    from optc.tests.frontends.llm_cases import modernbert_captured

    model, module = modernbert_captured()
    layers = analyze(module).layers
    assert len(layers) == 3
    for layer in layers:
        att, ffn = layer.attention, layer.ffn
        assert (att.num_heads, att.head_dim, att.num_kv_heads) == (4, 8, 4) and all(att.rotary)
        assert att.prunable is None and ffn.gated is not None and ffn.width == 64
    fused = model.layers[1].attn.Wqkv.weight.detach()
    att = layers[1].attention
    assert torch.equal(torch.cat([att.query.args[1].data, att.key.args[1].data,
                                  att.value.args[1].data]), fused)
    assert layers[0].attention.norms == [] and [n.op for n in layers[1].attention.norms] == ["layer_norm"]
    inputs = llm_inputs(model, 3, 9)  # longer than the local window of 4
    expected = hf_outputs(model, inputs, module.graph.outputs)
    assert max_diff(run_backend(module, backend, inputs), expected) <= 1e-5


# -- T5 encoder: relative position bias as a per-head additive mask -------------------------------
def test_t5_encoder_raises_with_a_per_head_bias_and_matches_hf(backend: str) -> None:
    from optc.tests.frontends.llm_cases import t5_captured

    model, module = t5_captured()
    layers = analyze(module).layers
    assert len(layers) == 2
    for layer in layers:
        att = layer.attention
        assert (att.num_heads, att.head_dim, att.node.attr("scale")) == (4, 8, 1.0)
        bias = att.node.arg(3)
        assert bias.tensor_type.rank == 4 and bias.tensor_type.shape[1] == 4  # one plane per head
        assert [n.op for n in att.norms] == ["rms_norm"] and layer.ffn.activation.op == "relu"
    inputs = llm_inputs(model)
    expected = hf_outputs(model, inputs, module.graph.outputs)
    assert max_diff(run_backend(module, backend, inputs), expected) <= 1e-5


def test_eager_attention_implementation_is_raised_like_sdpa() -> None:
    """attn_implementation="eager": matmul, scale, additive mask, softmax (in f32) and the
    repeated kv heads become the same grouped-query attention as SDPA."""
    model = llm_model("llama")
    model.config._attn_implementation = "eager"
    module = optc.capture(model)
    layers = analyze(module).layers
    assert [(x.attention.num_heads, x.attention.num_kv_heads) for x in layers] == [(4, 2), (4, 2)]
    inputs = llm_inputs(model)
    assert max_diff(run_backend(module, "eager", inputs),
                    hf_outputs(model, inputs, module.graph.outputs)) <= 1e-5


def test_layers_say_what_was_raised() -> None:
    from optc.tests.frontends.hf_cases import captured

    _, module = llm_captured("llama")
    assert [x.raised() for x in analyze(module).layers] == [
        "attention 4 heads (2 kv, rotary, mask) + gated FFN 64 (silu), pre-norm rms_norm"] * 2
    _, bert = captured("bert")
    assert analyze(bert).layers[0].raised() == \
        "attention 4 heads (mask) + FFN 128 (gelu), post-norm layer_norm"
    pruned = module.clone()
    from optc.passes import PassManager

    PassManager("prune-heads{heads=0:0,0:1,0:2,0:3}").run(pruned)
    assert analyze(pruned).layers[0].raised() == "no attention + gated FFN 64 (silu), pre-norm rms_norm"


# -- BART: encoder and decoder, cross-attention ---------------------------------------------------
def test_bart_layers_and_cross_attention_and_backends(backend: str) -> None:
    from optc.tests.frontends.llm_cases import bart_captured

    model, module = bart_captured()
    seq = module.dims["seq"]
    assert (seq.min, seq.max) == (3, 64)  # the bound the decoder needs, found by the capture
    layers = analyze(module).layers
    assert [x.id for x in layers] == [0, 1, 2, 3]
    assert [x.cross_attention is not None for x in layers] == [False, False, True, True]
    for layer in layers:
        assert layer.attention.num_heads == 4 and layer.ffn.width == 64
        assert [n.op for n in layer.attention.norms] == ["layer_norm"]
    cross = layers[2].cross_attention
    assert cross.key.args[0] is not cross.query.args[0]
    inputs = llm_inputs(model)
    expected = hf_outputs(model, inputs, module.graph.outputs)
    assert set(expected) == {"last_hidden_state", "encoder_last_hidden_state"}
    assert max_diff(run_backend(module, backend, inputs), expected) <= 1e-5


def test_partial_rotary_is_raised_and_heads_prune_exactly(backend: str) -> None:
    """partial_rotary_factor=0.5: rotary on the first 4 of each head's 8 features, the rest
    concatenated back unrotated; one ``rotary`` op with 4-wide tables."""
    from optc.passes import PassManager
    from optc.tests.conftest import scale_param_slice

    model = llm_model("phi3", partial_rotary_factor=0.5)
    module = optc.capture(model)
    layers = analyze(module).layers
    assert all(x.attention is not None and all(x.attention.rotary) for x in layers)
    assert layers[0].attention.rotary[0].args[1].tensor_type.shape[-1] == 4
    inputs = llm_inputs(model)
    if backend != "onnx":  # ONNX runs the pruned module below: one export of the same lowering
        assert max_diff(run_backend(module, backend, inputs),
                        hf_outputs(model, inputs, module.graph.outputs)) <= 1e-5
    for s in layers[1].attention.head_slices(2):
        scale_param_slice(module, s.param, s.dim, list(s.index))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:2}").run(module)
    assert analyze(module).layers[1].attention.kv_heads == [0, 0, 1]
    assert max_diff(run_backend(module, backend, inputs), expected) <= 1e-5


def test_interleaved_rotary_kernel_matches_gptj() -> None:
    """rotary(interleaved=True) is GPT-J's rotate_every_two, on the first rot features of each
    head, with tables that repeat each frequency twice in a row (TorchScript and ONNX: the
    GPT-J family tests in tests/passes/test_parallel_blocks.py)."""
    from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb as gptj_rotary

    from optc.ir.ops.attention import ROTARY

    x = torch.randn(2, 5, 3 * 8)
    sin, cos = torch.randn(1, 5, 2), torch.randn(1, 5, 2)  # rot = 4 of head_dim 8
    heads = x.view(2, 5, 3, 8)
    want = torch.cat([gptj_rotary(heads[..., :4], sin, cos), heads[..., 4:]], -1).reshape(2, 5, 24)
    tables = [t.repeat_interleave(2, -1) for t in (cos, sin)]
    assert torch.equal(rotary(x, *tables, head_dim=8, interleaved=True), want)
    assert not torch.allclose(rotary(x, *tables, head_dim=8), want)  # rotate_half differs
    assert ROTARY.attrs["interleaved"].default is False  # existing rotary nodes keep rotate_half
