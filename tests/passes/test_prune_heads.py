"""prune-heads: zeroed heads removed exactly on every backend, stats, choice of heads, errors."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.errors import PassError, PipelineSpecError
from optc.ir import collect_problems, print_module
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.passes import PassManager, parse_pipeline
from optc.passes.prune_heads import PruneHeads
from optc.passes.support.selection import select_lowest
from optc.tests.conftest import (
    assert_backends_agree,
    assert_outputs_equal,
    assert_refused_unchanged,
    scale_param_slice,
    token_inputs,
)
from optc.tests.frontends.hf_cases import captured
from optc.tools.reports.inspection import summarize

ATT = "encoder.layer.{}.attention."
HEAD_DIM = 16


def scale_bert_heads(module: Module, heads: dict[int, list[int]], factor: float = 0.0) -> None:
    """Scale the q/k/v rows and biases and the output-projection columns of BERT heads,
    found by their Hugging Face parameter names (independently of the analysis)."""
    for layer, hs in heads.items():
        rows = [h * HEAD_DIM + i for h in hs for i in range(HEAD_DIM)]
        p = ATT.format(layer)
        for proj in ("query", "key", "value"):
            scale_param_slice(module, f"{p}self.{proj}.weight", 0, rows, factor)
            scale_param_slice(module, f"{p}self.{proj}.bias", 0, rows, factor)
        scale_param_slice(module, f"{p}output.dense.weight", 1, rows, factor)


def spec_heads(heads: dict[int, list[int]]) -> str:
    return "prune-heads{heads=" + ",".join(f"{i}:{h}" for i, hs in heads.items() for h in hs) + "}"


def eager(module: Module, inputs) -> dict[str, torch.Tensor]:
    return run_backend(module, "eager", inputs)


# -- exactness ------------------------------------------------------------------------------------
def test_zeroed_heads_removed_exactly_on_every_backend(bert, backend: str) -> None:
    """Uneven removal (1 of 4 heads in layer 1) and every head of layer 0 (block removed, the
    output-projection bias stays on the residual stream)."""
    _, base, inputs = bert
    heads = {0: [0, 1, 2, 3], 1: [2]}
    module = base.clone()
    scale_bert_heads(module, heads)
    expected = eager(module, inputs)
    PassManager(spec_heads(heads)).run(module)
    layers = analyze(module).layers
    assert layers[0].attention is None and layers[0].ffn is not None
    assert layers[1].attention.num_heads == 3
    assert "encoder.layer.0.attention.output.dense.bias" in module.params
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("heads", [{0: [1]}, {0: [0, 3], 1: [1]}, {1: [0, 1, 2]}, {0: [2], 1: [0, 1, 2, 3]}])
def test_zeroed_heads_removed_exactly_per_layer_uneven(bert, heads) -> None:
    _, base, inputs = bert
    module = base.clone()
    scale_bert_heads(module, heads)
    expected = eager(module, inputs)
    report = PassManager(spec_heads(heads)).run(module)
    assert_outputs_equal(eager(module, inputs), expected)
    left = [4 - len(heads.get(i, [])) for i in range(2)]
    assert report.records[0].stats["heads_per_layer"] == ",".join(map(str, left))
    assert [layer.attention.num_heads if layer.attention else 0 for layer in analyze(module).layers] == left


def test_removed_heads_are_the_named_ones(bert) -> None:
    """The kept q/k/v rows and output columns are exactly those of the kept heads."""
    _, base, _ = bert
    module = base.clone()
    PruneHeads(heads=((1, 0), (1, 2))).run(module)
    keep = [h * HEAD_DIM + i for h in (1, 3) for i in range(HEAD_DIM)]
    att = analyze(module).layers[1].attention
    for lin, proj in ((att.query, "query"), (att.key, "key"), (att.value, "value")):
        original = base.params[ATT.format(1) + f"self.{proj}.weight"].data
        assert torch.equal(lin.args[1].data, original[keep])
        original_bias = base.params[ATT.format(1) + f"self.{proj}.bias"].data
        assert torch.equal(lin.arg(2).data, original_bias[keep])
        assert tuple(lin.outputs[0].tensor_type.shape)[-1] == 32
    out = base.params[ATT.format(1) + "output.dense.weight"].data
    assert torch.equal(att.output.args[1].data, out[:, keep])
    assert att.num_heads == 2 and att.head_dim == HEAD_DIM
    assert tuple(att.node.outputs[0].tensor_type.shape)[-1] == 32
    # layer 0 is untouched, and the original module's tensors were not edited in place
    assert torch.equal(analyze(module).layers[0].attention.query.args[1].data,
                       base.params[ATT.format(0) + "self.query.weight"].data)
    assert base.params[ATT.format(1) + "self.query.weight"].data.shape == (64, 64)


# -- stats ------------------------------------------------------------------------------------------
def test_stats_for_partial_removal(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneHeads(heads=((0, 1), (1, 0), (1, 3))).run(module)
    assert result.modified is True
    per_head = 3 * (HEAD_DIM * 64 + HEAD_DIM) + 64 * HEAD_DIM
    assert result.stats == {
        "heads_removed": 3,
        "heads_per_layer": "3,2",
        "layer_ids": "0,1",
        "attention_blocks_removed": "-",
        "params_removed": 3 * per_head,
        "nodes_removed": 0,
    }
    assert before - module.num_parameters() == 3 * per_head
    assert collect_problems(module) == []


def test_params_removed_matches_measured_drop_when_a_block_is_removed(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneHeads(heads=tuple((0, h) for h in range(4))).run(module)
    assert result.stats["params_removed"] == before - module.num_parameters()


def test_stats_when_every_head_of_a_layer_goes(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneHeads(heads=tuple((0, h) for h in range(4))).run(module)
    assert result.modified is True
    assert result.stats["heads_removed"] == 4
    assert result.stats["heads_per_layer"] == "0,4"
    assert result.stats["attention_blocks_removed"] == "0"
    assert result.stats["nodes_removed"] == 5  # q, k, v, attention, output projection
    # q/k/v weights and biases and the output weight are gone; the output bias stays
    assert before - module.num_parameters() == 3 * (64 * 64 + 64) + 64 * 64
    gone = [n for n in base.params if n not in module.params]
    assert sorted(gone) == sorted(
        [ATT.format(0) + f"self.{p}.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")]
        + [ATT.format(0) + "output.dense.weight"])


def test_amount_zero_is_a_no_op_twice(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    for _ in range(2):
        report = PassManager("prune-heads{amount=0}").run(module)
        assert report.records[0].modified is False
        assert report.records[0].stats["heads_removed"] == 0
        assert report.records[0].stats["params_removed"] == 0
        assert print_module(module) == text


def test_pipeline_is_verified_after_the_pass(bert, monkeypatch) -> None:
    """A head removal that forgot to update num_heads is caught right after the pass."""
    import optc.passes.prune_heads as prune_heads
    from optc.errors import VerificationError

    _, base, _ = bert
    original = prune_heads.remove_heads

    def forgetful(module, block, heads):  # noqa: ANN001, ANN202
        before = block.num_heads
        original(module, block, heads)
        block.node.set_attr("num_heads", before)

    monkeypatch.setattr(prune_heads, "remove_heads", forgetful)
    with pytest.raises(VerificationError, match=r"after pass 'prune-heads\{amount=0.5\}'.*num_heads"):
        PassManager("prune-heads{amount=0.5},dce", verify=True).run(base.clone())
    monkeypatch.setattr(prune_heads, "remove_heads", original)
    module = base.clone()
    assert PassManager("prune-heads{amount=0.5},dce").run(module).records[0].modified
    assert collect_problems(module) == []


# -- amount and criterion ---------------------------------------------------------------------
def test_per_layer_amount_removes_the_same_number_in_every_layer(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    report = PassManager("prune-heads{amount=0.5,per_layer=true}").run(module)
    assert report.records[0].stats["heads_removed"] == 4
    assert report.records[0].stats["heads_per_layer"] == "2,2"


def test_global_amount_can_remove_unevenly(bert) -> None:
    """Layer 0 has three tiny heads and one large one; layer 1 is uniform. Scores are
    normalized per layer, so globally the three tiny heads go first, then one of layer 1."""
    _, base, _ = bert
    module = base.clone()
    scale_bert_heads(module, {0: [0, 2, 3]}, 1e-3)
    glob = module.clone()
    report = PassManager("prune-heads{amount=0.5}").run(glob)
    assert report.records[0].stats["heads_removed"] == 4
    assert report.records[0].stats["heads_per_layer"] == "1,3"
    per_layer = module.clone()
    report = PassManager("prune-heads{amount=0.5,per_layer=true}").run(per_layer)
    assert report.records[0].stats["heads_per_layer"] == "2,2"


def test_magnitude_picks_the_lowest_norm_heads(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    scale_bert_heads(module, {0: [0, 3], 1: [1]}, 1e-3)
    reference = module.clone()
    report = PassManager("prune-heads{amount=0.375}").run(module)  # round(0.375 * 8) = 3
    assert report.records[0].stats["heads_per_layer"] == "2,3"
    layers = analyze(module).layers
    for i, kept in ((0, (1, 2)), (1, (0, 2, 3))):
        rows = [h * HEAD_DIM + j for h in kept for j in range(HEAD_DIM)]
        original = reference.params[ATT.format(i) + "self.query.weight"].data
        assert torch.equal(layers[i].attention.query.args[1].data, original[rows])


def test_select_lowest_global_and_per_layer() -> None:
    scores = {0: torch.tensor([0.1, 0.9, 0.2, 0.8]), 1: torch.tensor([0.5, 0.6, 0.05, 0.7])}
    assert select_lowest(scores, 0.5, per_layer=False) == {0: {0, 2}, 1: {0, 2}}
    assert select_lowest(scores, 0.25, per_layer=False) == {0: {0}, 1: {2}}
    assert select_lowest(scores, 0.25, per_layer=True) == {0: {0}, 1: {2}}
    assert select_lowest(scores, 0.75, per_layer=True) == {0: {0, 2, 3}, 1: {0, 1, 2}}
    assert select_lowest(scores, 0.0, per_layer=False) == {0: set(), 1: set()}
    assert select_lowest(scores, 1.0, per_layer=False) == {0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}}


def test_amount_one_removes_every_head_and_backends_agree(bert) -> None:
    _, base, inputs = bert
    module = base.clone()
    report = PassManager("prune-heads{amount=1.0},dce").run(module)
    assert report.records[0].stats["heads_per_layer"] == "0,0"
    assert report.records[0].stats["attention_blocks_removed"] == "0,1"
    assert not any(n.op == "attention" for n in module.graph)
    assert_backends_agree(module, inputs, backends=("eager", "torchscript"))


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "message"), [
    ("prune-heads{heads=0:4}", "head 0:4 does not exist; layer 0 has 4 heads"),
    ("prune-heads{heads=0:1,2:0}", "layer 2 does not exist; the model has layers 0..1"),
])
def test_missing_head_or_layer_is_refused_and_ir_unchanged(bert, spec: str, message: str) -> None:
    _, base, _ = bert
    assert_refused_unchanged(base.clone(), spec, message)


def test_head_of_a_removed_attention_block_is_refused(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    PruneHeads(heads=tuple((0, h) for h in range(4))).run(module)
    text = print_module(module)
    with pytest.raises(PassError, match="layer 0 has no attention block"):
        PassManager("prune-heads{heads=0:1}").run(module)
    assert print_module(module) == text


@pytest.mark.parametrize(("spec", "message"), [
    ("prune-heads{amount=-0.5}", r"amount must be in \[0, 1\], got -0.5"),
    ("prune-heads{amount=1.5}", r"amount must be in \[0, 1\], got 1.5"),
    ("prune-heads{heads=0:1,amount=0.5}", "either heads=layer:head,... or amount=F"),
    ("prune-heads", "either heads=layer:head,... or amount=F"),
    ("prune-heads{amount=0.5,samples=0}", "samples >= 1"),
    ("prune-heads{amount=0.5,criterion=random}", "criterion"),
])
def test_bad_options_are_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec)


def test_taylor_without_data_names_the_data_option(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    with pytest.raises(PassError, match="--data") as info:
        PassManager("prune-heads{amount=0.5,criterion=taylor}").run(module)
    assert "prune-heads{criterion=taylor} needs calibration data" in str(info.value)
    assert info.value.exit_code == 3  # the InputError's code: bad input
    assert print_module(module) == text


def test_uses_data_only_for_taylor_amount() -> None:
    assert PruneHeads(amount=0.5, criterion="taylor").uses_data
    assert not PruneHeads(amount=0.5).uses_data
    assert not PruneHeads(heads=((0, 1),), criterion="taylor").uses_data


# -- artifacts --------------------------------------------------------------------------------------
def test_pruned_module_saves_and_loads_with_its_shapes(bert, tmp_path) -> None:
    _, base, inputs = bert
    module = base.clone()
    PassManager("prune-heads{heads=0:0,0:1,0:2,0:3,1:1},prune-neurons{neurons=1:0,1:5,1:7}").run(module)
    expected = eager(module, inputs)
    optc.save(module, tmp_path / "out")
    loaded = optc.load(tmp_path / "out")
    info = summarize(loaded.ir)
    assert [(x["heads"], x["ffn"]) for x in info["layers"]] == [(0, 128), (3, 125)]
    assert info["parameters"] == module.num_parameters()
    with torch.inference_mode():
        got = loaded(**inputs)
    assert_outputs_equal(got, expected, atol=0.0)


def test_gpt2_pre_ln_zeroed_heads_and_neurons_removed_exactly() -> None:
    """Split q/k/v of a Conv1D attention; every head of layer 1 goes, so its pre-norm ln_1
    becomes dead and is removed while the output-projection bias stays on the stream."""
    model, base = captured("gpt2")
    inputs = token_inputs(model, 3, 7)
    module = base.clone()
    layers = analyze(module).layers
    units = [layers[0].attention.head_slices(h) for h in (1, 2)]
    units += [layers[1].attention.head_slices(h) for h in range(4)]
    units += [layers[0].ffn.neuron_slices(n) for n in (0, 100, 255)]
    for slices in units:
        for s in slices:
            scale_param_slice(module, s.param, s.dim, list(s.index))
    expected = eager(module, inputs)
    PassManager("prune-heads{heads=0:1,0:2,1:0,1:1,1:2,1:3},"
                "prune-neurons{neurons=0:0,0:100,0:255},dce").run(module)
    assert [(la.attention.num_heads if la.attention else 0, la.ffn.width)
            for la in analyze(module).layers] == [(2, 253), (0, 256)]
    assert "h.1.ln_1.weight" not in module.params and "h.1.attn.c_proj.bias" in module.params
    assert_outputs_equal(eager(module, inputs), expected)
