"""DeBERTa-v2/v3: disentangled attention (c2p and p2c position terms, heads flattened into the
batch) raised to ``attention`` with a ``disentangled_bias`` mask, every layer found, numbers
equal to Hugging Face on eager, TorchScript and ONNX; the op's kernel against Hugging Face's."""

from __future__ import annotations

import math

import pytest
import torch

import optc
from optc.frontends.raising import raise_high_level_ops
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.ir.ops.disentangled import disentangled_bias
from optc.tests.conftest import backend_runner
from optc.tests.frontends.deberta_cases import (
    VARIANTS,
    deberta_captured,
    deberta_inputs,
    deberta_model,
    hf_outputs,
)


def max_diff(got, expected) -> float:
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
    return max((got[n] - expected[n]).abs().max().item() for n in expected)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_layer_is_raised(variant: str) -> None:
    model, module = deberta_captured(variant)
    report = raise_high_level_ops(optc.capture(model, raise_ops=False))
    assert not [m for m in report.misses if "attention" in m], report.misses
    assert report.raised["attention"] == 2
    layers = analyze(module).layers
    assert [x.id for x in layers] == [0, 1]
    terms = len(model.config.pos_att_type)
    for layer, hf in zip(layers, model.encoder.layer, strict=True):
        att, ffn = layer.attention, layer.ffn
        assert (att.num_heads, att.head_dim) == (4, 8) and att.prunable is None
        assert math.isclose(att.node.attr("scale"), 1 / math.sqrt(8 * (1 + terms)), rel_tol=1e-6)
        bias = att.position
        assert bias is not None and bias.op == "disentangled_bias" and att.node.arg(3) is bias.outputs[0]
        assert bias.attr("num_heads") == 4 and bias.attr("scale") == att.node.attr("scale")
        assert bias.attr("span") == (16 if variant != "linear-positions" else 8)
        assert bias.args[0] is att.node.args[0] and bias.args[1] is att.node.args[1]
        assert bias.arg(5) is not None and bias.arg(5).tensor_type.dtype == torch.bool
        self_att = hf.attention.self
        if model.config.share_att_key:  # the tables are projected by the query/key weights
            assert att.pos_query.args[1] is att.query.args[1] and att.pos_key.args[1] is att.key.args[1]
        else:
            assert torch.equal(att.pos_key.args[1].data, self_att.pos_key_proj.weight.detach())
            assert (att.pos_query is None) == ("p2c" not in model.config.pos_att_type)
        if att.pos_query is not None and not model.config.share_att_key:
            assert torch.equal(att.pos_query.args[1].data, self_att.pos_query_proj.weight.detach())
        assert ffn.width == 64 and ffn.activation.op == "gelu"
        assert [n.op for n in att.norms] == ["layer_norm"] and att.residual is not None
        assert "disentangled" in layer.raised()
    assert not collect_problems(module)
    assert not any(n.op.startswith("aten.add_") or n.op == "aten.gather.default" for n in module.graph)


@pytest.mark.parametrize("variant", ["v3", "separate"])
def test_matches_hugging_face_on_every_backend(variant: str, backend: str) -> None:
    model, module = deberta_captured(variant)
    run = backend_runner(module, backend)  # one export, two shapes
    for batch, seq in ((3, 7), (2, 40)):  # 40: relative positions beyond the span are clamped
        inputs = deberta_inputs(batch, seq)
        assert max_diff(run(inputs), hf_outputs(model, inputs)) <= 1e-5


@pytest.mark.parametrize("variant", ["c2p", "linear-positions"])
def test_other_variants_match_hugging_face(variant: str) -> None:
    model, module = deberta_captured(variant)
    runs = [backend_runner(module, backend) for backend in ("eager", "onnx")]  # one export
    for batch, seq in ((3, 7), (2, 21)):
        inputs = deberta_inputs(batch, seq)
        for run in runs:
            assert max_diff(run(inputs), hf_outputs(model, inputs)) <= 1e-5


def test_kernel_matches_hugging_face_bias() -> None:
    """The op on [batch, seq, heads*head_dim] operands equals Hugging Face's
    ``disentangled_attention_bias`` on heads flattened into the batch, c2p and p2c."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    model = deberta_model("separate")
    att = model.encoder.layer[0].attention.self
    batch, seq, heads, dim = 2, 11, 4, 8
    q, k = torch.randn(batch, seq, heads * dim), torch.randn(batch, seq, heads * dim)
    rel_emb = torch.randn(32, 32)

    def flat(x):
        return x.view(batch, -1, heads, dim).permute(0, 2, 1, 3).reshape(batch * heads, -1, dim)

    rel = build_relative_position(flat(q), flat(k), bucket_size=16, max_position=32)
    with torch.no_grad():
        want = att.disentangled_attention_bias(flat(q), flat(k), rel, rel_emb, 3).view(batch, heads, seq, seq)
        got = disentangled_bias(q, k, rel.unsqueeze(0), att.pos_key_proj(rel_emb), att.pos_query_proj(rel_emb),
                                num_heads=heads, head_dim=dim, span=16, scale=1 / math.sqrt(dim * 3))
    assert torch.allclose(got, want, atol=1e-5)
    mask = torch.ones(batch, 1, seq, seq, dtype=torch.bool)
    mask[0, ..., 7:] = False
    masked = disentangled_bias(q, k, rel, att.pos_key_proj(rel_emb).detach(), None, mask, num_heads=heads,
                               head_dim=dim, span=16, scale=1.0)
    assert bool((masked[0, :, :, 7:] == torch.finfo(torch.float32).min).all())
    assert bool((masked[1] > torch.finfo(torch.float32).min).all())


def test_verifier_names_a_bias_that_lost_track_of_its_heads() -> None:
    _, base = deberta_captured("v3")
    module = base.clone()
    bias = analyze(module).layers[0].attention.position
    bias.set_attr("num_heads", 2)
    problems = " ".join(collect_problems(module))
    assert "disentangled_bias query is" in problems and "slice it with the heads" in problems
    bias.set_attr("num_heads", 4)
    bias.set_attr("span", 17)
    assert "fewer than 2*span = 34" in " ".join(collect_problems(module))


def test_flops_count_both_position_terms() -> None:
    from optc.ir.analysis import node_cost

    _, module = deberta_captured("v3")
    bias = analyze(module).layers[0].attention.position
    # c2p and p2c: [batch*seq*heads*head_dim] x 32 table rows each, 2 FLOPs per multiply-add.
    assert node_cost(bias, {"batch": 2, "seq": 5})["flops"] == 2 * 2 * (2 * 5 * 32) * 32


def test_a_near_miss_says_why_and_leaves_the_layer_alone() -> None:
    """A gather index clamped to another range than the table's 2*span rows is not DeBERTa's
    c2p term: that layer stays ATen (with the reason in the report), the other is raised."""
    model = deberta_model("v3")
    module = optc.capture(model, raise_ops=False)
    clamp = next(n for n in module.graph if n.op == "aten.clamp.default")
    clamp.args = (clamp.args[0], 0, 30)
    report = raise_high_level_ops(module)
    assert report.raised["attention"] == 1
    assert any("not raised to attention: the relative positions are not clamped to [0, 31]" in m
               for m in report.misses), report.misses
    assert sum(n.op == "disentangled_bias" for n in module.graph) == 1


def test_textual_form_round_trips_an_absent_table() -> None:
    from optc.ir import print_module
    from optc.ir.parser import parse_module

    _, module = deberta_captured("c2p")  # pos_query is none
    text = print_module(module)
    assert "disentangled_bias(" in text and print_module(parse_module(text)) == text
