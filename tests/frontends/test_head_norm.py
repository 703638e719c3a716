"""Per-head query/key norms (Qwen3's RMSNorm on [B, S, H, D], a LayerNorm on the transposed
[B, H, S, D] split as hand-written models put it): regrouped into the norm with ``head_dim`` on
the projection, the attention raised in every layer, numbers unchanged on every backend, and
heads, kv groups and layers removed exactly; the kernels against per-head normalization."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optc
from optc.backends.differential import run_backend
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.ir.ops.norm import layer_norm, rms_norm
from optc.passes import PassManager
from optc.tests.conftest import assert_outputs_equal, zero_slices
from optc.tests.frontends.llm_cases import hf_outputs, hf_without_layers, llm_inputs


@functools.cache
def qwen3() -> tuple[nn.Module, optc.Module]:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = transformers.Qwen3Model(config).eval()
    for name, p in model.named_parameters():  # norm weights away from 1, so a wrong head shows
        if "norm" in name:
            p.data = 1 + 0.5 * torch.randn_like(p)
    return model, optc.capture(model)


class _HeadLayerNormLayer(nn.Module):
    """Research-code attention with a LayerNorm (weight and bias) on each head of q and k after
    the transpose, fused qkv, SDPA; post-norm residual and a GELU FFN."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm, self.k_norm = nn.LayerNorm(self.dim), nn.LayerNorm(self.dim)
        self.out = nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 64), nn.Linear(64, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, self.dim).transpose(1, 2) for t in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        att = F.scaled_dot_product_attention(q, k, v)
        x = self.ln1(x + self.out(att.transpose(1, 2).reshape(b, s, d)))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class _HeadLayerNormModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.layers = nn.ModuleList(_HeadLayerNormLayer() for _ in range(2))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return x


@functools.cache
def hand_written() -> tuple[nn.Module, optc.Module]:
    torch.manual_seed(1)
    model = _HeadLayerNormModel().eval()
    for layer in model.layers:
        for norm in (layer.q_norm, layer.k_norm):
            norm.weight.data, norm.bias.data = 1 + torch.randn(8), torch.randn(8)
    ids = torch.randint(0, 50, (2, 6))
    seq = torch.export.Dim("seq", max=64)
    return model, optc.capture(model, (ids,), dynamic_shapes=[{0: torch.export.Dim("batch"), 1: seq}])


def _capture_with_seq(model: nn.Module) -> optc.Module:
    """A hand-written model of token ids, captured with a dynamic sequence length."""
    return optc.capture(model, (torch.randint(0, 50, (2, 6)),),
                        dynamic_shapes=[{1: torch.export.Dim("seq", max=64)}])


def _assert_equals_model(module: optc.Module, model: nn.Module, inputs, backends=("eager",)) -> None:
    with torch.no_grad():
        want = model(inputs["input_0"])
    for backend in backends:
        (got,) = run_backend(module, backend, inputs).values()
        assert torch.allclose(got, want, atol=1e-5), backend


def _assert_head_removed_exactly(module: optc.Module, inputs, layer: int, head: int) -> None:
    """Removing ``head`` of ``layer`` equals zeroing its slices, and leaves one head fewer."""
    pruned = module.clone()
    before = analyze(pruned).layers[layer].attention.num_heads
    zero_slices(pruned, analyze(pruned).layers[layer].attention.head_slices(head))
    expected = run_backend(pruned, "eager", inputs)
    PassManager(f"prune-heads{{heads={layer}:{head}}},dce").run(pruned)
    assert analyze(pruned).layers[layer].attention.num_heads == before - 1
    assert_outputs_equal(run_backend(pruned, "eager", inputs), expected)


def _ids(batch: int = 3, seq: int = 7) -> dict[str, torch.Tensor]:
    return {"input_0": torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(2))}


# -- the kernels -----------------------------------------------------------------------------
def test_grouped_kernels_normalize_each_head() -> None:
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    x = torch.randn(2, 5, 4 * 8)
    ref = Qwen3RMSNorm(8, eps=1e-6)
    ref.weight.data = torch.randn(8)
    want = ref(x.view(2, 5, 4, 8)).reshape(2, 5, 32).detach()
    assert torch.allclose(rms_norm(x, ref.weight.data, eps=1e-6, head_dim=8), want, atol=1e-6)
    w, b = torch.randn(8), torch.randn(8)
    want = F.layer_norm(x.view(2, 5, 4, 8), [8], w, b, 1e-5).reshape(2, 5, 32)
    assert torch.allclose(layer_norm(x, w, b, normalized_shape=[8], head_dim=8), want, atol=1e-6)


# -- Qwen3: RMSNorm on [B, S, H, D] before the transpose and the rotary -----------------------
def test_qwen3_every_layer_is_raised_with_its_norms_on_the_projections() -> None:
    _, module = qwen3()
    layers = analyze(module).layers
    assert len(layers) == 2
    for layer in layers:
        att = layer.attention
        assert (att.num_heads, att.num_kv_heads, att.head_dim) == (4, 2, 8)
        assert att.prunable is None and all(att.rotary)
        q_ops, k_ops, v_ops = att.head_ops
        assert [n.op for n in q_ops] == [n.op for n in k_ops] == ["rms_norm", "rotary"] and v_ops == ()
        assert q_ops[0].args[0] is att.query.outputs[0] and q_ops[0].attr("head_dim") == 8
        assert "q/k norm" in layer.raised()
    assert not collect_problems(module)


def test_qwen3_matches_hugging_face_on_every_backend(backend: str) -> None:
    model, module = qwen3()
    inputs = llm_inputs(model)
    expected = hf_outputs(model, inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_qwen3_heads_and_kv_groups_removed_exactly(backend: str) -> None:
    model, base = qwen3()
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[0].attention.head_slices(1))
    for head in (2, 3):  # kv group 1 of layer 1 goes with both its query heads
        zero_slices(module, layers[1].attention.head_slices(head))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:1,1:2,1:3},dce").run(module)
    after = [x.attention for x in analyze(module).layers]
    assert [a.num_heads for a in after] == [3, 2] and after[1].num_kv_heads == 1
    assert after[1].head_ops[1][0].outputs[0].tensor_type.shape[-1] == 8  # the k norm narrowed
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_qwen3_drop_layer_equals_hf_with_the_layer_deleted() -> None:
    model, base = qwen3()
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager("drop-layers{layers=0}").run(module)
    expected = hf_outputs(hf_without_layers(model, [0]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


# -- hand-written: LayerNorm on [B, H, S, D], after the transpose ------------------------------
def test_hand_written_head_layer_norm_is_raised_and_exact(backend: str) -> None:
    model, module = hand_written()
    layers = analyze(module).layers
    assert len(layers) == 2
    for layer in layers:
        q_ops, k_ops, _ = layer.attention.head_ops
        assert [(n.op, n.attr("head_dim")) for n in q_ops + k_ops] == [("layer_norm", 8)] * 2
        assert layer.attention.prunable is None
    inputs = _ids()
    with torch.no_grad():
        want = model(inputs["input_0"])
    (got,) = run_backend(module, backend, inputs).values()
    assert torch.allclose(got, want, atol=1e-5)


def test_hand_written_head_removed_equals_the_head_zeroed() -> None:
    _, base = hand_written()
    inputs = _ids()
    module = base.clone()
    zero_slices(module, analyze(module).layers[1].attention.head_slices(0))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:0},dce").run(module)
    assert [x.attention.num_heads for x in analyze(module).layers] == [4, 3]
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


# -- what is not regrouped ---------------------------------------------------------------------
class _WholeHeadsNorm(nn.Module):
    """A LayerNorm over [heads, head_dim] of the split (every head together): not per head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.norm = nn.LayerNorm([4, 8])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, s, _ = x.shape
        q = self.norm(self.q(x).view(b, s, 4, 8)).transpose(1, 2)
        k, v = (p(x).view(b, s, 4, 8).transpose(1, 2) for p in (self.k, self.v))
        return x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, 32))


def test_a_norm_over_every_head_together_is_not_regrouped() -> None:
    torch.manual_seed(3)
    model = _WholeHeadsNorm().eval()
    module = optc.capture(model, (torch.randint(0, 50, (2, 6)),))
    assert not [n for n in module.graph if n.attr("head_dim") is not None and "norm" in n.op]
    inputs = {"input_0": torch.randint(0, 50, (2, 6))}
    with torch.no_grad():
        want = model(inputs["input_0"])
    (got,) = run_backend(module, "eager", inputs).values()
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shape", [(8,), (4,)])
def test_verifier_checks_head_dim_against_the_weight(shape: tuple[int, ...]) -> None:
    from optc.ir.ops.base import sample_module
    from optc.ir.parser import parse_module

    text = sample_module("%x : f32[2,3,12]", "%y : f32[2,3,12] = rms_norm(%x, @w, eps=1e-6, head_dim=8)",
                         f"param @w : f32[{shape[0]}]")
    problems = " ".join(collect_problems(parse_module(text)))
    assert "does not divide" in problems
    if shape != (8,):
        assert "must be a vector of head_dim" in problems


class _WeightlessRmsModel(nn.Module):
    """q/k normalized per head by a weightless RMS written with ``** -0.5``; the block's own
    RMSNorm as ``x * rsqrt(...) * w`` (hand-written forms of the norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.w = nn.Parameter(1 + torch.randn(32))
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32, bias=False) for _ in range(4))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, s, _ = x.shape
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w
        q, k, v = (p(h).view(b, s, 4, 8) for p in (self.q, self.k, self.v))
        q, k = ((t * (t.pow(2).mean(-1, keepdim=True) + 1e-6) ** -0.5).transpose(1, 2) for t in (q, k))
        att = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        return x + self.o(att.transpose(1, 2).reshape(b, s, 32))


def test_weightless_rms_written_with_a_power_is_raised_per_head() -> None:
    torch.manual_seed(4)
    model = _WeightlessRmsModel().eval()
    module = _capture_with_seq(model)
    (layer,) = analyze(module).layers
    q_ops, k_ops, _ = layer.attention.head_ops
    assert [(n.op, n.arg(1), n.attr("head_dim")) for n in q_ops + k_ops] == [("rms_norm", None, 8)] * 2
    assert [n.op for n in layer.attention.norms] == ["rms_norm"]
    assert layer.attention.norms[0].args[1] is not None  # the block's norm keeps its weight
    inputs = _ids(2, 9)
    _assert_equals_model(module, model, inputs)
    _assert_head_removed_exactly(module, inputs, 0, 2)


class _ScaledSplitModel(nn.Module):
    """The query scaled after the split (``q = split(q_proj(x)) * d**-0.5``, SDPA with scale 1)
    and the key normalized per head then divided by a number."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.k_norm = nn.LayerNorm(8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, 4, 8).transpose(1, 2) for p in (self.q, self.k, self.v))
        q = q * 8 ** -0.5
        k = self.k_norm(k) / 1.5
        att = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return x + self.o(att.transpose(1, 2).reshape(b, s, 32))


def test_a_split_scaled_by_a_number_is_raised_and_prunes_exactly() -> None:
    torch.manual_seed(5)
    model = _ScaledSplitModel().eval()
    module = _capture_with_seq(model)
    (layer,) = analyze(module).layers
    att = layer.attention
    assert att.prunable is None and att.query is not None and att.key is not None
    assert [n.op for n in att.head_ops[1]] == ["layer_norm", "aten.div.Tensor"]
    inputs = _ids()
    _assert_equals_model(module, model, inputs, ("eager", "torchscript"))
    _assert_head_removed_exactly(module, inputs, 0, 1)


@functools.cache
def olmo2() -> tuple[nn.Module, optc.Module]:
    import transformers

    torch.manual_seed(6)
    config = transformers.Olmo2Config(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.Olmo2Model(config).eval()
    return model, optc.capture(model)


def test_a_norm_over_the_whole_projection_refuses_prune_heads_with_its_reason() -> None:
    """OLMo 2 normalizes q and k over every head together, and its blocks' results before the
    residual add (``x + norm(f(x))``): heads cannot be removed exactly (one line says why);
    the layer is still found through the branch norm and drops like Hugging Face's."""
    from optc.errors import PassError

    model, base = olmo2()
    layers = analyze(base).layers
    assert "normalized over every head together" in layers[0].attention.prunable
    assert "rms_norm on the branch" in layers[0].raised()
    with pytest.raises(PassError, match="normalized over every head together"):
        PassManager("prune-heads{heads=0:1}").run(base.clone())
    module = base.clone()
    PassManager("drop-layers{layers=0}").run(module)
    inputs = llm_inputs(model)
    expected = hf_outputs(hf_without_layers(model, [0]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
