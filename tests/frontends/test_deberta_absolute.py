"""DeBERTa-v2 with its default config (``relative_attention=False``: no position terms, plain
scaled dot-product attention on heads flattened into the batch, scale 1/sqrt(head_dim)) is
raised to ``attention``; dropping a layer then removes its attention too and equals the Hugging
Face model with the layer deleted (it used to drop only the FFN, silently)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import backend_runner
from optc.tests.frontends.deberta_cases import deberta_inputs, hf_outputs, hf_without_layers

CONFIG = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)
"""DebertaV2Config's defaults otherwise: relative_attention=False, absolute positions."""


@functools.cache
def captured() -> tuple[torch.nn.Module, optc.Module]:
    import transformers as tf

    torch.manual_seed(0)
    model = tf.DebertaV2Model(tf.DebertaV2Config(**CONFIG)).eval()
    assert not model.config.relative_attention
    return model, optc.capture(model)


def max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(want)
    return max((got[n] - want[n]).abs().max().item() for n in want)


def test_every_layer_is_raised_without_misses() -> None:
    model, module = captured()
    report = raise_high_level_ops(optc.capture(model, raise_ops=False))
    assert not [m for m in report.misses if "attention" in m], report.misses
    assert report.raised["attention"] == 3
    layers = analyze(module).layers
    assert [x.id for x in layers] == [0, 1, 2]
    for layer in layers:
        att = layer.attention
        assert att is not None and layer.ffn is not None
        assert (att.num_heads, att.head_dim) == (4, 8) and att.prunable is None
        assert math.isclose(att.node.attr("scale"), 1 / math.sqrt(8), rel_tol=1e-6)
    assert not any(n.op == "disentangled_bias" for n in module.graph)


def test_matches_hugging_face_on_every_backend(backend: str) -> None:
    model, module = captured()
    run = backend_runner(module, backend)  # one export, three shapes
    for batch, seq in ((3, 7), (2, 40), (1, 1)):  # padded rows attend uniformly, as in HF
        inputs = deberta_inputs(batch, seq) if seq > 2 else {
            "input_ids": torch.tensor([[5]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
        assert max_diff(run(inputs), hf_outputs(model, inputs)) <= 1e-5


@pytest.mark.parametrize("drop", [[0], [1, 2]])
def test_drop_layers_equals_hf_with_the_layers_deleted(drop: list[int]) -> None:
    model, base = captured()
    module = base.clone()
    report = PassManager(f"drop-layers{{layers={','.join(map(str, drop))}}},dce").run(module)
    assert report.records[0].stats["blocks_removed"] == 2 * len(drop)
    assert len(analyze(module).layers) == 3 - len(drop)
    assert sum(n.op == "attention" for n in module.graph) == 3 - len(drop)
    inputs = deberta_inputs(3, 9)
    want = hf_outputs(hf_without_layers(model, drop), inputs)
    assert max_diff(run_backend(module, "eager", inputs), want) <= 1e-5
