"""A rotary encoder (RoFormer: interleaved rotary on the [batch, heads, seq, head_dim] split,
tables built by stacking each frequency twice) is raised, equals Hugging Face, and prunes and
drops layers exactly (the ONNX/TorchScript lowering of interleaved rotary is GPT-J's, tested
with it)."""

from __future__ import annotations

import copy

import torch

import optc
from optc.frontends import raise_high_level_ops
from optc.frontends.capture import capture
from optc.tools.checks.coverage import _inputs, _model, _without_last_layer


def _diff(got, want) -> float:
    return (got["last_hidden_state"] - want.last_hidden_state).abs().max().item()


def test_roformer_is_raised_and_edits_equal_the_same_edit_of_the_model():
    model = _model("RoFormer")
    inputs = _inputs(model)
    raw = capture(model, raise_ops=False)
    report = raise_high_level_ops(raw)
    assert report.raised.get("rotary") == 4 and report.raised.get("attention") == 2
    assert not report.misses
    assert all(n.attr("interleaved") for n in raw.graph if n.op == "rotary")
    module = capture(model)
    with torch.no_grad():
        assert _diff(optc.to_eager(module)(**inputs), model(**inputs)) < 1e-5
        dropped = module.clone()
        optc.run_pipeline(dropped, "drop-layers{layers=1}")
        assert _diff(optc.to_eager(dropped)(**inputs), _without_last_layer(model)(**inputs)) < 1e-5
        pruned = module.clone()
        optc.run_pipeline(pruned, "prune-heads{heads=0:1,1:3}")
        zeroed = copy.deepcopy(model)
        for layer, head in ((0, 1), (1, 3)):
            dense = zeroed.encoder.layer[layer].attention.output.dense
            dense.weight[:, head * 8:(head + 1) * 8] = 0
        assert _diff(optc.to_eager(pruned)(**inputs), zeroed(**inputs)) < 1e-5


def test_esm_scaled_query_rotary_and_written_out_gelu_are_raised():
    """ESM scales the query before its rotary and writes gelu out with erf: the rotary is
    raised with the factor moved into the attention's scale (so prune-heads sees the query
    projection), the FFN's activation is raised to gelu, and edits equal HF's."""
    model = _model("ESM (rotary)")
    inputs = _inputs(model)
    raw = capture(model, raise_ops=False)
    report = raise_high_level_ops(raw)
    assert report.raised.get("rotary") == 4 and report.raised.get("attention") == 2
    assert report.raised.get("gelu") == 2 and not report.misses
    module = capture(model)
    with torch.no_grad():
        assert _diff(optc.to_eager(module)(**inputs), model(**inputs)) < 1e-5
        pruned = module.clone()
        optc.run_pipeline(pruned, "prune-heads{heads=0:2}")
        zeroed = copy.deepcopy(model)
        zeroed.encoder.layer[0].attention.output.dense.weight[:, 16:24] = 0
        assert _diff(optc.to_eager(pruned)(**inputs), zeroed(**inputs)) < 1e-5
