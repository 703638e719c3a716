"""Attention as research code writes it, raised by structure: hand-written PyTorch blocks
(fused qkv chunked or split + SDPA; einsum scores with a ``masked_fill`` padding mask; a decoder
with rotate-half rotary, grouped kv ``repeat_interleave``, causal ``masked_fill``, SwiGLU and
RMSNorm). Each is captured from a plain ``nn.Module``, raised in every layer, exact against the
model, pruned and dropped exactly, and agreed on by every backend."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optc
from optc.backends.differential import check_backends
from optc.ir.analysis import analyze

D, H = 32, 4
DH = D // H


class FusedBlock(nn.Module):
    """qkv = Linear(d, 3d), ``.chunk(3, -1)`` or ``.split(d, -1)``, SDPA with a padding mask,
    ``transpose(1, 2).reshape(b, s, d)``, post- or pre-LayerNorm, GELU MLP."""

    def __init__(self, pre: bool, split: bool) -> None:
        super().__init__()
        self.pre, self.split = pre, split
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def attn(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.split(d, dim=-1) if self.split else qkv.chunk(3, dim=-1)
        q, k, v = (t.view(b, s, H, d // H).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(b, s, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln1(x), mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.mlp(x))


class EinsumBlock(nn.Module):
    """``einsum("bhqd,bhkd->bhqk") * scale``, ``masked_fill(~mask, fill)``, softmax,
    ``einsum("bhqk,bhkd->bhqd")``; post-LayerNorm GELU MLP."""

    def __init__(self, fill: float) -> None:
        super().__init__()
        self.fill = fill
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, H, DH).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * DH ** -0.5
        scores = scores.masked_fill(~mask[:, None, None, :], self.fill)
        o = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
        x = self.ln1(x + self.o(o.transpose(1, 2).reshape(b, s, d)))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class DecoderBlock(nn.Module):
    """Pre-RMSNorm decoder: rotate-half rotary computed in forward, 2 kv heads expanded by
    ``repeat_interleave``, causal & padding mask by ``masked_fill(finfo.min)``, SwiGLU."""

    KV = 2

    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)
        self.k, self.v = (nn.Linear(D, self.KV * DH, bias=False) for _ in range(2))
        self.n1, self.n2 = RMSNorm(), RMSNorm()
        self.gate, self.up = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, 3 * D, bias=False)
        self.down = nn.Linear(3 * D, D, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, DH, 2).float() / DH),
                             persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, s, H, DH).transpose(1, 2)
        k = self.k(h).view(b, s, self.KV, DH).transpose(1, 2)
        v = self.v(h).view(b, s, self.KV, DH).transpose(1, 2)
        freqs = torch.outer(torch.arange(s, device=x.device).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = (t.repeat_interleave(H // self.KV, dim=1) for t in (k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(DH)
        allowed = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()[None, None] \
            & mask[:, None, None, :]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        o = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(o)
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Stack(nn.Module):
    def __init__(self, make) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([make() for _ in range(2)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


CASES = {
    "fused-chunk-post-ln": lambda: FusedBlock(pre=False, split=False),
    "fused-split-pre-ln": lambda: FusedBlock(pre=True, split=True),
    "einsum-inf": lambda: EinsumBlock(float("-inf")),
    "einsum-finfo-min": lambda: EinsumBlock(torch.finfo(torch.float32).min),
    "decoder-rotary-gqa": DecoderBlock,
}


def _inputs(batch: int = 2, seq: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[1, seq - 2:] = False
    return {"x": torch.randn(batch, seq, D, generator=gen), "mask": mask}


def _capture(model: nn.Module) -> optc.Module:
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}
    return optc.capture(model, _inputs(), dynamic_shapes=[dims, dims])


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model = Stack(CASES[request.param]).eval()
    return request.param, model, _capture(model)


def _error(module: optc.Module, model: nn.Module, **shape: int) -> float:
    inputs = _inputs(**shape)
    with torch.no_grad():
        want = model(**inputs)
    got = optc.to_eager(module)(**inputs)["output"]
    return (got - want).abs().max().item()


def _output_projection(block: nn.Module) -> nn.Linear:
    return getattr(block, "out", None) or block.o


def test_every_layer_is_raised_and_exact(case) -> None:
    name, model, module = case
    layers = analyze(module).layers
    assert len(layers) == 2 and all(x.attention and x.ffn for x in layers), name
    assert all(x.attention.residual is not None for x in layers)
    heads = [x.attention.node.attr("num_heads") for x in layers]
    assert heads == [H, H]
    if name.startswith("decoder"):
        assert all(x.attention.num_kv_heads == 2 and x.attention.rotary != (None, None)
                   and x.ffn.gated is not None for x in layers)
    assert _error(module, model) <= 1e-5
    assert _error(module, model, batch=3, seq=11) <= 1e-5  # dynamic batch and sequence


def test_pruned_head_equals_zeroed_output_columns(case) -> None:
    name, model, module = case
    pruned = module.clone()
    report = optc.run_pipeline(pruned, "prune-heads{heads=0:1},dce")
    assert report.records[0].stats["heads_removed"] == 1
    assert [x.attention.node.attr("num_heads") for x in analyze(pruned).layers] == [H - 1, H]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        _output_projection(zeroed.layers[0]).weight[:, DH:2 * DH] = 0
    assert _error(pruned, zeroed) <= 1e-5
    check_backends(pruned, _inputs(), backends=("eager", "torchscript", "onnx"))


def test_dropped_layer_equals_the_model_without_it(case) -> None:
    name, model, module = case
    dropped = module.clone()
    optc.run_pipeline(dropped, "drop-layers{layers=0},dce")
    shorter = copy.deepcopy(model)
    shorter.layers = nn.ModuleList([shorter.layers[1]])
    assert len(analyze(dropped).layers) == 1
    assert _error(dropped, shorter) <= 1e-5


def test_backends_agree(case) -> None:
    _, _, module = case
    check_backends(module, _inputs(), backends=("eager", "torchscript", "onnx"))


def test_a_small_finite_fill_is_refused_with_the_reason() -> None:
    """``masked_fill(-1e9)`` is not ``+ where(mask, -1e9, 0)`` on rows with every key masked
    (uniform in the model, not after adding): left alone, with the reason."""
    module = optc.capture(Stack(lambda: EinsumBlock(-1e9)).eval(), _inputs(), raise_ops=False)
    report = optc.frontends.raise_high_level_ops(module)
    assert "attention" not in report.raised
    assert any("masked_fill with -1000000000.0 is not an additive term exactly" in m
               for m in report.misses)


@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float32).min])
def test_a_sample_with_every_key_masked_matches_the_model(fill: float) -> None:
    """-inf: the model's softmax is NaN on rows without a key, and so is the raised model
    (not the attention op's 0); finfo.min: the model averages every value, as raised."""
    model = Stack(lambda: EinsumBlock(fill)).eval()
    module = _capture(model)
    assert all(x.attention for x in analyze(module).layers)
    inputs = _inputs()
    inputs["mask"][1] = False
    with torch.no_grad():
        want = model(**inputs)
    got = optc.to_eager(module)(**inputs)["output"]
    assert torch.equal(got.isnan(), want.isnan())
    assert want.isnan().any() == (fill == float("-inf"))
    assert (got - want).nan_to_num().abs().max().item() <= 1e-5


def test_inspect_shows_unraised_attention_as_unknown_not_pruned() -> None:
    """A layer whose attention stayed ATen shows heads '?' in `optc inspect`, not 0 (which
    reads as 'every head pruned'), and says so under the table."""
    from optc.tools.reports.inspection import format_summary, summarize

    info = summarize(optc.capture(Stack(lambda: EinsumBlock(-1e9)).eval(), _inputs()), seq=8)
    assert info["layers"] and not any(x["attention_raised"] for x in info["layers"])
    text = format_summary(info)
    assert "heads ?: attention that was not raised" in text
    table = text[text.index("\nlayer "):].splitlines()
    assert all(row.split()[1] == "?" for row in table[2:4]), table
    raised = summarize(_capture(Stack(CASES["einsum-inf"]).eval()), seq=8)
    assert all(x["attention_raised"] and x["heads"] > 0 for x in raised["layers"])
    assert "heads ?" not in format_summary(raised)
