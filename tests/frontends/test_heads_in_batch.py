"""Attention on heads flattened into the batch, raised by structure: BLOOM computes its scores
as ``baddbmm(alibi, q, k^T, alpha=1/sqrt(d))`` on [batch*heads, seq, head_dim] tensors (q, k, v
from one fused projection viewed as [batch, seq, heads, 3, head_dim]), views them back to
[batch, heads, q, k], adds the mask, and multiplies ``bmm(view(probs), v)``. The raised
``attention`` takes the ALiBi as the head axis of its additive bias, so prune-heads slices the
fused projection's rows and the bias planes of the heads it removes."""

from __future__ import annotations

import copy

import pytest
import torch

import optc
from optc.backends.differential import check_backends, run_backend
from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import analyze

HEADS, HEAD = 4, 8


@pytest.fixture(scope="module")
def bloom():
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BloomConfig(vocab_size=120, hidden_size=HEADS * HEAD, n_layer=2, n_head=HEADS,
                            use_cache=False)
    model = tf.BloomModel(config).eval()
    return model, optc.capture(model)


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 7), generator=gen)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _error(module, reference, backend: str = "eager") -> float:
    inputs = _inputs()
    with torch.inference_mode():
        want = reference(**inputs).last_hidden_state
    got = run_backend(module, backend, inputs)["last_hidden_state"]
    keep = inputs["attention_mask"].bool()
    return (got - want)[keep].abs().max().item()


def test_every_layer_is_raised_with_the_alibi_as_a_per_head_bias(bloom) -> None:
    _, module = bloom
    layers = analyze(module).layers
    assert len(layers) == 2 and all(x.attention and x.ffn for x in layers)
    assert raise_high_level_ops(module.clone()).misses == []
    for layer in layers:
        att = layer.attention
        assert (att.node.attr("num_heads"), att.node.attr("head_dim")) == (HEADS, HEAD)
        assert att.node.attr("scale") == pytest.approx(HEAD ** -0.5)
        assert att.prunable is None
        # q, k and v are rows of the fused projection, each its own linear
        assert len({id(att.query), id(att.key), id(att.value)}) == 3
        # the bias is the ALiBi ([batch*heads, 1, k] viewed per head) plus the padding mask
        assert att.node.arg(3).tensor_type.shape[1] == HEADS
    assert not any(n.op in ("aten.bmm.default", "aten.baddbmm.default") for n in module.graph)


@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_outputs_equal_hugging_face(bloom, backend) -> None:
    model, module = bloom
    assert _error(module, model, backend) <= 1e-5


def test_pruned_head_equals_zeroed_output_columns(bloom) -> None:
    model, module = bloom
    pruned = module.clone()
    report = optc.run_pipeline(pruned, "prune-heads{heads=0:1,1:3},dce")
    assert report.records[0].stats["heads_removed"] == 2
    layers = analyze(pruned).layers
    assert [x.attention.node.attr("num_heads") for x in layers] == [HEADS - 1, HEADS - 1]
    assert [x.attention.node.arg(3).tensor_type.shape[1] for x in layers] == [HEADS - 1] * 2
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in ((0, 1), (1, 3)):
            zeroed.h[layer].self_attention.dense.weight[:, head * HEAD:(head + 1) * HEAD] = 0
    assert _error(pruned, zeroed) <= 1e-5
    check_backends(pruned, _inputs(), backends=("eager", "torchscript", "onnx"))
