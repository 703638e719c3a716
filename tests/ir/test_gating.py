"""ir/gating: gates of ones change nothing, and zero gates compute what the structural edits
they stand for compute (prune-heads, prune-neurons, removing a block), on a tiny random BERT
and a grouped-query SwiGLU decoder."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.eager import to_eager
from optc.errors import IRError
from optc.ir.analysis import analyze
from optc.ir.gating import gate_name, insert_gate, insert_gates, site, sites
from optc.passes.prune_heads import PruneHeads
from optc.passes.prune_neurons import PruneNeurons
from optc.search.candidates import remove_block_keep_norm
from optc.tests.conftest import token_inputs
from optc.tests.frontends.hf_cases import captured
from optc.tests.frontends.llm_cases import llm_captured, llm_inputs

OUT = "last_hidden_state"


def _case(family: str):
    """(module, inputs) of a session-cached capture; clone the module before gating it."""
    if family == "bert":
        model, module = captured("bert")
        return module, token_inputs(model, 3, 7)
    model, module = llm_captured(family)  # 4 query heads over 2 kv heads, SwiGLU FFN
    return module, llm_inputs(model)


@pytest.fixture(scope="module", params=["bert", "llama"])
def case(request):
    module, inputs = _case(request.param)
    with torch.no_grad():
        plain = to_eager(module)(**inputs)[OUT]
    gated = module.clone()
    gates = insert_gates(gated, sites(analyze(gated), ("head", "neuron", "attention", "ffn")))
    return module, inputs, plain, gated, gates, to_eager(gated)


def _run(runner, inputs, gates, closed: dict[str, set[int]] | None = None) -> torch.Tensor:
    closed = closed or {}
    with torch.no_grad():
        return runner(**inputs, **{g.name: g.values(closed.get(g.name, ()))
                                   for g in gates})[OUT]


def test_gates_describe_their_sites_and_verify(case) -> None:
    module, _, _, gated, gates, _ = case
    optc.verify(gated)
    structure = analyze(module)
    layers = len(structure.layers)
    assert [(g.site.kind, g.site.layer) for g in gates] == \
        [(k, i) for i in range(layers) for k in ("head", "neuron", "attention", "ffn")]
    for g in gates:
        layer = structure.layers[g.site.layer]
        assert g.name == gate_name(g.site.kind, g.site.layer) == f"__{g.site.kind}_gate_{g.site.layer}"
        assert g.input.tensor_type.shape == (g.site.units,) and g.site.layer_id == layer.id
        assert g.site.value.users() == [g.mul] and g.mul.outputs[0].users()
        if g.site.kind == "head":
            assert (g.site.units, g.site.columns) == (layer.attention.num_heads,
                                                      layer.attention.head_dim)
            assert g.site.unit_ids == tuple(layer.attention.head_ids)
        elif g.site.kind == "neuron":
            assert g.site.units == layer.ffn.width and g.site.unit_ids == tuple(layer.ffn.neuron_ids)
        else:
            assert g.site.units == 1 and g.site.unit_ids == ()
    assert len(module.graph.inputs) + len(gates) == len(gated.graph.inputs)  # module unchanged


def test_gates_of_ones_reproduce_the_ungated_output_exactly(case) -> None:
    _, inputs, plain, _, gates, runner = case
    assert torch.equal(_run(runner, inputs, gates), plain)


@pytest.mark.parametrize("layer,heads", [(0, {1}), (1, {0, 3})])
def test_a_zero_head_gate_equals_prune_heads(case, layer, heads) -> None:
    module, inputs, plain, _, gates, runner = case
    got = _run(runner, inputs, gates, {gate_name("head", layer): heads})
    pruned = module.clone()
    PruneHeads(heads=tuple((layer, h) for h in sorted(heads))).run(pruned)
    assert analyze(pruned).layers[layer].attention.num_heads == 4 - len(heads)
    with torch.no_grad():
        want = to_eager(pruned)(**inputs)[OUT]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the gate changed something


def test_a_zero_neuron_gate_equals_prune_neurons(case) -> None:
    module, inputs, plain, _, gates, runner = case
    removed = {0: {0, 5, 17}, 1: set(range(0, 40, 3))}
    got = _run(runner, inputs, gates, {gate_name("neuron", i): u for i, u in removed.items()})
    pruned = module.clone()
    PruneNeurons(neurons=tuple((i, n) for i, u in removed.items() for n in sorted(u))).run(pruned)
    with torch.no_grad():
        want = to_eager(pruned)(**inputs)[OUT]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["attention", "ffn"])
def test_a_zero_block_gate_equals_removing_the_block(case, kind) -> None:
    module, inputs, _, _, gates, runner = case
    got = _run(runner, inputs, gates, {gate_name(kind, 1): {0}})
    removed = module.clone()
    layer = analyze(removed).layers[1]
    remove_block_keep_norm(removed, layer.attention if kind == "attention" else layer.ffn)
    with torch.no_grad():
        want = to_eager(removed)(**inputs)[OUT]
    assert torch.equal(got, want)  # x + 0 * branch == x: the same floats


def test_per_example_gates_close_a_head_for_one_example_only() -> None:
    module, inputs = _case("bert")
    gated = module.clone()
    where = site(analyze(gated).layers[1], "head")
    gate = insert_gate(gated, where, "g", per_example=True)
    assert gate.input.tensor_type.shape == (where.value.tensor_type.shape[0], 4)
    optc.verify(gated)
    values = gate.values(batch=3)
    values[1, 2] = 0.0
    with torch.no_grad():
        got = to_eager(gated)(**inputs, g=values)[OUT]
        plain = to_eager(module)(**inputs)[OUT]
    pruned = module.clone()
    PruneHeads(heads=((1, 2),)).run(pruned)
    with torch.no_grad():
        want = to_eager(pruned)(**inputs)[OUT]
    assert torch.equal(got[[0, 2]], plain[[0, 2]])
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)
    with pytest.raises(IRError, match="per example"):
        gate.values()


def test_a_layer_without_the_block_has_no_site_and_unknown_kinds_are_refused() -> None:
    module, _ = _case("bert")
    pruned = module.clone()
    PruneNeurons(neurons=tuple((0, n) for n in range(128))).run(pruned)  # the FFN goes
    layer = analyze(pruned).layers[0]
    assert layer.ffn is None and site(layer, "neuron") is None and site(layer, "ffn") is None
    assert site(layer, "cross_head") is None
    with pytest.raises(IRError, match="unknown gate kind 'heads'"):
        site(layer, "heads")  # type: ignore[arg-type]
