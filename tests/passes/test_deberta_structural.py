"""prune-heads, prune-neurons and drop-layers on DeBERTa-v2/v3 (disentangled attention): removed
heads take their rows of the position projections with them (shared with the query/key
projections in v3, which stay shared), and the pruned model equals the Hugging Face model with
those heads/neurons silenced, or with those layers deleted, on every backend."""

from __future__ import annotations

import pytest
import torch

from optc.backends.differential import run_backend
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import assert_backends_agree, assert_refused_unchanged
from optc.tests.frontends.deberta_cases import (
    deberta_captured,
    deberta_inputs,
    hf_outputs,
    hf_silenced,
    hf_without_layers,
)


def assert_outputs_equal(got, expected, atol: float = 1e-5) -> None:
    assert set(got) == set(expected)
    for name in expected:
        diff = (got[name] - expected[name]).abs().max().item()
        assert diff <= atol, f"output {name} differs by {diff:.3g}"


@pytest.mark.parametrize("variant", ["v3", "separate"])
def test_heads_and_neurons_removed_equal_hf_with_them_silenced(variant: str, backend: str) -> None:
    """Heads 0:1, 1:0 and 1:3 and neurons 0:5, 1:0, 1:63 go. Only their output columns are
    zero in the reference, so the remaining heads' position terms must read the right rows
    of the (sliced) position tables."""
    model, base = deberta_captured(variant)
    module = base.clone()
    PassManager("prune-heads{heads=0:1,1:0,1:3},prune-neurons{neurons=0:5,1:0,1:63},dce").run(module)
    assert not collect_problems(module)
    layers = analyze(module).layers
    a0, a1 = layers[0].attention, layers[1].attention
    assert (a0.num_heads, a1.num_heads) == (3, 2) and (a0.head_ids, a1.head_ids) == ([0, 2, 3], [1, 2])
    assert a0.position.attr("num_heads") == 3 and a1.position.outputs[0].tensor_type.shape[1] == 2
    assert (layers[0].ffn.width, layers[1].ffn.width) == (63, 62)
    for att in (a0, a1):
        width = att.num_heads * 8
        assert att.pos_query.outputs[0].tensor_type.shape[-1] == width
        assert att.pos_key.args[1].data.shape == (width, 32)
        if variant == "v3":  # still one parameter, read by the content and position projections
            assert att.pos_query.args[1] is att.query.args[1] and att.pos_key.arg(2) is att.key.arg(2)
    if variant == "v3":
        assert "encoder.layer.1.attention.self.query_proj.weight" in module.params
        assert set(module.params) <= set(base.params)  # sliced in place, no copies
    want = hf_outputs(hf_silenced(model, {0: [1], 1: [0, 3]}, {0: [5], 1: [0, 63]}), deberta_inputs())
    assert_outputs_equal(run_backend(module, backend, deberta_inputs()), want)


def test_separate_position_weights_follow_their_heads() -> None:
    model, base = deberta_captured("separate")
    module = base.clone()
    PassManager("prune-heads{heads=0:2}").run(module)
    att = analyze(module).layers[0].attention
    hf = model.encoder.layer[0].attention.self
    keep = [*range(0, 16), *range(24, 32)]
    assert torch.equal(att.pos_key.args[1].data, hf.pos_key_proj.weight.detach()[keep])
    assert torch.equal(att.pos_query.arg(2).data, hf.pos_query_proj.bias.detach()[keep])
    assert torch.equal(att.query.args[1].data, hf.query_proj.weight.detach()[keep])


@pytest.mark.parametrize("drop", [0, 1])
def test_drop_layer_equals_hf_with_layer_deleted(drop: int, backend: str) -> None:
    model, base = deberta_captured("v3")
    module = base.clone()
    report = PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert report.records[0].modified
    assert [x.id for x in analyze(module).layers] == [1 - drop]
    assert not any(n.startswith(f"encoder.layer.{drop}.") for n in module.params)
    assert sum(n.op == "disentangled_bias" for n in module.graph) == 1
    inputs = deberta_inputs(2, 12)
    assert_outputs_equal(run_backend(module, backend, inputs),
                         hf_outputs(hf_without_layers(model, [drop]), inputs))


def test_every_head_of_a_layer_removes_its_attention_and_bias() -> None:
    model, base = deberta_captured("v3")
    module = base.clone()
    PassManager("prune-heads{heads=1:0,1:1,1:2,1:3},dce").run(module)
    layers = analyze(module).layers
    assert layers[1].attention is None and layers[1].ffn is not None
    assert sum(n.op == "disentangled_bias" for n in module.graph) == 1
    assert "encoder.layer.1.attention.self.key_proj.weight" not in module.params
    want = hf_outputs(hf_silenced(model, {1: [0, 1, 2, 3]}), deberta_inputs())
    assert_outputs_equal(run_backend(module, "eager", deberta_inputs()), want)


def test_amount_pipeline_backends_agree() -> None:
    model, base = deberta_captured("v3")
    module = base.clone()
    report = PassManager("drop-layers{strategy=top,count=1},prune-heads{amount=0.5},"
                         "prune-neurons{amount=0.5},dce").run(module)
    assert [r.modified for r in report.records[:3]] == [True, True, True]
    (layer,) = analyze(module).layers
    assert layer.attention.num_heads == 2 and layer.ffn.width == 32
    assert layer.attention.position.attr("num_heads") == 2
    assert_backends_agree(module, deberta_inputs())


def test_missing_head_is_refused_and_ir_unchanged() -> None:
    _, base = deberta_captured("v3")
    module = base.clone()
    assert_refused_unchanged(module, "prune-heads{heads=0:4}", "head 0:4 does not exist")
