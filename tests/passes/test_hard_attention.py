"""hard-attention: top-k after the softmax, not renormalized by default; exact soft attention
when k >= the key length; eager, TorchScript and ONNX agree with padding."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends, run_backend
from optc.errors import PassError, PipelineSpecError
from optc.ir.ops.attention import attention
from optc.ir.parser import parse_module
from optc.ir.printer import print_module
from optc.passes.hard_attention import HardAttention
from optc.tests.conftest import assert_outputs_equal, backend_runner, token_inputs

SEQ = 7


def _attention_nodes(module):
    return [n for n in module.graph if n.op == "attention"]


def test_sets_kind_and_k_prints_parses_and_is_idempotent(bert):
    _, base, _ = bert
    module = base.clone()
    report = optc.run_pipeline(module, "hard-attention{k=3,layers=1}")
    first, second = _attention_nodes(module)
    assert first.attr("kind", "softmax") == "softmax"
    assert second.attr("kind") == "topk" and second.attr("topk") == 3
    assert report.records[0].modified
    assert report.records[0].stats["layers"] == "1"
    text = print_module(module)
    assert 'kind="topk", topk=3' in text
    weights = {n: p.data for n, p in module.params.items()}
    assert print_module(parse_module(text, weights)) == text
    again = optc.run_pipeline(module, "hard-attention{k=3,layers=1}")
    assert not again.records[0].modified and print_module(module) == text
    optc.run_pipeline(module, "hard-attention{k=2,renormalize=true}")
    assert all(n.attr("renormalize") is True and n.attr("topk") == 2
               for n in _attention_nodes(module))


def test_bad_options_and_layers_are_typed_errors(bert):
    _, base, _ = bert
    module = base.clone()
    with pytest.raises(PipelineSpecError, match="k must be an integer >= 1"):
        optc.run_pipeline(module, "hard-attention{k=0}")
    with pytest.raises(PipelineSpecError, match="k must be an integer >= 1"):
        HardAttention(k=-3)
    before = print_module(module)
    with pytest.raises(PassError, match="layer 5 does not exist"):
        optc.run_pipeline(module, "hard-attention{layers=5}")
    assert print_module(module) == before


def _reference(q, k, v, mask, topk, renormalize):
    """Top-k after the softmax, written plainly (one row at a time)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1)
    out = torch.zeros_like(probs)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in probs.shape[:-1]]):
        row = probs[tuple(idx)]
        keep = row.topk(min(topk, row.numel())).indices
        kept = torch.zeros_like(row)
        kept[keep] = row[keep]
        out[tuple(idx)] = kept / kept.sum() if renormalize else kept
    return out @ v


@pytest.mark.parametrize("renormalize", [False, True])
def test_kernel_keeps_top_k_probabilities_after_softmax(renormalize):
    gen = torch.Generator().manual_seed(0)
    b, s, h, d = 2, 6, 2, 4
    q, k, v = (torch.randn(b, s, h * d, generator=gen) for _ in range(3))
    mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
    mask[1, ..., 4:] = False
    got = attention(q, k, v, mask, num_heads=h, head_dim=d, kind="topk", topk=2,
                    renormalize=renormalize)
    split = lambda t: t.view(b, s, h, d).transpose(1, 2)  # noqa: E731
    want = _reference(split(q), split(k), split(v), mask, 2, renormalize)
    assert torch.allclose(got, want.transpose(1, 2).reshape(b, s, h * d), atol=1e-6)
    if not renormalize:  # rows keep their soft probabilities: less than the soft output's mass
        soft = attention(q, k, v, mask, num_heads=h, head_dim=d)
        assert not torch.allclose(got, soft, atol=1e-3)


def test_k_at_least_sequence_is_soft_attention_exactly(bert):
    model, base, _ = bert
    inputs = token_inputs(model, 3, SEQ)
    hard = base.clone()
    optc.run_pipeline(hard, f"hard-attention{{k={SEQ}}}")
    for backend in ("eager", "torchscript"):
        want = run_backend(base, backend, inputs)
        got = run_backend(hard, backend, inputs)
        for name in want:
            assert torch.equal(got[name], want[name]), (backend, name)
    check_backends(hard, inputs, ("eager", "torchscript"))
    onnx_hard = run_backend(hard, "onnx", inputs)  # exported once: against eager and soft ONNX
    assert_outputs_equal(onnx_hard, run_backend(hard, "eager", inputs))
    onnx_soft = run_backend(base, "onnx", inputs)["last_hidden_state"]
    assert (onnx_soft - onnx_hard["last_hidden_state"]).abs().max() <= 1e-5


@pytest.mark.parametrize("k", [1, 3])
def test_small_k_all_backends_agree_with_padding_and_other_lengths(bert, k):
    model, base, _ = bert
    module = base.clone()
    optc.run_pipeline(module, f"hard-attention{{k={k}}}")
    soft = optc.to_eager(base)(**token_inputs(model, 3, SEQ))["last_hidden_state"]
    runs = {b: backend_runner(module, b) for b in ("eager", "torchscript", "onnx")}  # one export
    for batch, seq in ((3, SEQ), (2, 12), (1, 2)):
        inputs = token_inputs(model, batch, seq, seed=seq)
        want = runs["eager"](inputs)
        assert_outputs_equal(runs["torchscript"](inputs), want, atol=1e-5)
        assert_outputs_equal(runs["onnx"](inputs), want, atol=1e-4)
    hard = optc.to_eager(module)(**token_inputs(model, 3, SEQ))["last_hidden_state"]
    assert (hard - soft).abs().max() > 1e-3  # top-k changed the numbers


def test_fraction_of_the_sequence_on_every_backend(bert):
    model, base, _ = bert
    module = base.clone()
    optc.run_pipeline(module, "hard-attention{fraction=0.3}")
    assert all(n.attr("topk_fraction") == 0.3 for n in _attention_nodes(module))
    text = print_module(module)
    assert print_module(parse_module(text, {n: p.data for n, p in module.params.items()})) == text
    for batch, seq in ((3, SEQ), (2, 12)):
        inputs = token_inputs(model, batch, seq, seed=seq)
        report = check_backends(module, inputs)
        assert report.worst("torchscript") <= 1e-5 and report.worst("onnx") <= 1e-4, report
        # ceil(0.3 * seq) keys kept: the same as an explicit k for this length
        explicit = base.clone()
        optc.run_pipeline(explicit, f"hard-attention{{k={-(-3 * seq // 10)}}}")
        got = optc.to_eager(module)(**inputs)["last_hidden_state"]
        want = optc.to_eager(explicit)(**inputs)["last_hidden_state"]
        assert torch.equal(got, want)
    with pytest.raises(PipelineSpecError, match="fraction must be in"):
        HardAttention(fraction=1.5)
