"""Attention raised by structure with any number of additive terms on the scores:
MPNet's relative-position bias, computed once and shared by every layer, plus the padding mask
(``scores += bias`` in place, then ``+ mask``). Raised in every layer, exact against Hugging
Face, and pruned exactly: heads slice the bias planes, layers drop as in Hugging Face."""

from __future__ import annotations

import copy

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.ir.analysis import analyze

HEAD = 8


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def mpnet(request):
    """sdpa: Hugging Face builds a bool mask, which MPNet adds to the float scores (the add
    promotes it): raised with the term cast as the add did, still exact."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.MPNetConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=66)
    model = tf.MPNetModel(config)
    model.config._attn_implementation = request.param
    model.eval()
    return model, optc.capture(model)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _close(module, reference) -> float:
    inputs = _inputs()
    with torch.inference_mode():
        want = reference(**inputs).last_hidden_state
    got = optc.to_eager(module)(**inputs)["last_hidden_state"]
    keep = inputs["attention_mask"].bool()
    return (got - want)[keep].abs().max().item()


def test_every_layer_is_raised_with_the_summed_bias(mpnet) -> None:
    model, module = mpnet
    layers = analyze(module).layers
    assert len(layers) == 2 and all(x.attention and x.ffn for x in layers)
    assert [x.attention.node.attr("num_heads") for x in layers] == [4, 4]
    bias = [x.attention.node.arg(3) for x in layers]
    # each layer's operand is the shared bias plus the padding mask, a per-head [batch, 4, q, k]
    assert all(b.producer.op == "aten.add.Tensor" and b.tensor_type.shape[1] == 4 for b in bias)
    assert "add_." not in optc.print_module(module)  # the in-place add became out of place
    assert _close(module, model) <= 1e-5


def test_pruned_heads_and_neurons_equal_the_zeroed_model(mpnet) -> None:
    model, module = mpnet
    pruned = module.clone()
    report = optc.run_pipeline(pruned, "prune-heads{heads=0:1,1:0,1:2},"
                                       "prune-neurons{neurons=0:3,1:5},dce")
    assert report.records[0].stats["heads_removed"] == 3
    assert [x.attention.node.attr("num_heads") for x in analyze(pruned).layers] == [3, 2]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in ((0, 1), (1, 0), (1, 2)):
            zeroed.encoder.layer[layer].attention.attn.o.weight[:, head * HEAD:(head + 1) * HEAD] = 0
        for layer, neuron in ((0, 3), (1, 5)):
            zeroed.encoder.layer[layer].output.dense.weight[:, neuron] = 0
    assert _close(pruned, zeroed) <= 1e-5
    check_backends(pruned, _inputs(), backends=("eager", "torchscript", "onnx"))


def test_dropped_layer_equals_hugging_face_without_it(mpnet) -> None:
    model, module = mpnet
    dropped = module.clone()
    optc.run_pipeline(dropped, "drop-layers{layers=0},dce")
    shorter = copy.deepcopy(model)
    shorter.encoder.layer = torch.nn.ModuleList([shorter.encoder.layer[1]])
    assert _close(dropped, shorter) <= 1e-5
    # the position bias every layer reads survives the layer that computed it first
    assert len(analyze(dropped).layers) == 1
