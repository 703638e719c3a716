"""prune-heads on cross-attention (BART's decoder layers): cross heads are units of their own
(``cross_heads=layer:head``, their own stable ids), apart from the same layer's self-attention
heads; zeroed cross heads removed leave the outputs unchanged on every backend; ``amount``
ranks self, cross or all heads (``blocks=``); bad input is refused with the IR unchanged."""

from __future__ import annotations

import pytest
import torch

from optc.backends.differential import run_backend
from optc.errors import PipelineSpecError
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager, parse_pipeline
from optc.passes.support.importance import taylor_scores
from optc.tasks.batching import Batch
from optc.tests.conftest import assert_outputs_equal, assert_refused_unchanged, zero_slices
from optc.tests.frontends.llm_cases import bart_captured, llm_captured, llm_inputs, t5_captured

D = 8
"""head_dim of the tiny BART (d_model 32, 4 heads)."""


def test_zeroed_cross_and_self_heads_of_one_layer_removed_exactly(backend: str) -> None:
    """Layer 3 loses self head 1 and cross heads 1 and 3 (the same index names a different
    unit in each block); layer 2 loses cross head 0. Cross slices: q rows, k/v rows (they
    read the encoder output) and output columns."""
    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[3].attention.head_slices(1))
    for i, h in ((3, 1), (3, 3), (2, 0)):
        zero_slices(module, layers[i].cross_attention.head_slices(h))
    expected = run_backend(module, "eager", inputs)
    cross3 = layers[3].cross_attention
    kept_k = cross3.key.args[1].data[[*range(0, D), *range(2 * D, 3 * D)]].clone()
    report = PassManager("prune-heads{heads=3:1,cross_heads=3:1,3:3,2:0},dce").run(module)
    stats = report.records[0].stats
    assert stats["heads_removed"] == 4 and stats["cross_heads_removed"] == 3
    assert stats["heads_per_layer"] == "4,4,4,3"
    assert stats["cross_heads_per_layer"] == "-,-,3,2"
    assert stats["cross_attention_blocks_removed"] == "-" and stats["attention_blocks_removed"] == "-"
    assert stats["params_removed"] == 4 * (3 * (D * 32 + D) + 32 * D)
    after = analyze(module).layers
    assert [x.attention.num_heads for x in after] == [4, 4, 4, 3]
    assert after[3].attention.head_ids == [0, 2, 3]
    c2, c3 = after[2].cross_attention, after[3].cross_attention
    assert (c2.num_heads, c2.head_ids) == (3, [1, 2, 3])
    assert (c3.num_heads, c3.head_ids) == (2, [0, 2])
    assert c3.query.args[1].data.shape == (2 * D, 32) and c3.output.args[1].data.shape == (32, 2 * D)
    assert c3.key.args[1].data.shape == (2 * D, 32) and c3.value.args[2].data.shape == (2 * D,)
    assert torch.equal(c3.key.args[1].data, kept_k)  # the rows of heads 0 and 2, in order
    assert c3.key.args[0] is not c3.query.args[0]  # still reads the encoder output
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_every_cross_head_removes_the_cross_attention_block() -> None:
    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    for h in range(4):
        zero_slices(module, analyze(module).layers[2].cross_attention.head_slices(h))
    expected = run_backend(module, "eager", inputs)
    report = PassManager("prune-heads{cross_heads=2:0,2:1,2:2,2:3},dce").run(module)
    assert report.records[0].stats["cross_attention_blocks_removed"] == "2"
    assert report.records[0].stats["cross_heads_per_layer"] == "-,-,-,4"
    after = analyze(module).layers
    assert len(after) == 4 and after[2].cross_attention is None
    assert after[2].attention.num_heads == 4 and after[2].ffn is not None
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


def test_cross_attention_stays_with_its_layer_when_every_self_head_goes() -> None:
    """Without its self-attention, layer 2's cross-attention is still layer 2's (same layer
    count and ids), so cross_heads=2:h still names it afterwards."""
    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    layer = analyze(module).layers[2]
    for h in range(4):
        zero_slices(module, layer.attention.head_slices(h))
    zero_slices(module, layer.cross_attention.head_slices(2))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=2:0,2:1,2:2,2:3},prune-heads{cross_heads=2:2},dce").run(module)
    after = analyze(module).layers
    assert [x.id for x in after] == [0, 1, 2, 3]
    assert after[2].attention is None and after[2].cross_attention.num_heads == 3
    assert after[2].ffn is not None and after[3].cross_attention.num_heads == 4
    assert "cross-attention 3 heads" in after[2].raised()
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
    assert_refused_unchanged(module, "prune-heads{heads=2:0}", "layer 2 has no attention block")


def test_stable_ids_name_cross_heads_after_earlier_pruning() -> None:
    _, base = bart_captured()
    module = base.clone()
    PassManager("prune-heads{cross_heads=3:1}").run(module)
    assert_refused_unchanged(module, "prune-heads{cross_heads=3:1,ids=true}",
                             "cross-attention head id 1 is no longer in layer id 3")
    PassManager("prune-heads{cross_heads=3:2,ids=true}").run(module)
    after = analyze(module).layers[3]
    assert after.cross_attention.head_ids == [0, 3] and after.attention.head_ids == [0, 1, 2, 3]


@pytest.mark.parametrize(("blocks", "self_left", "cross_left"), [
    ("self", [3, 3, 3, 3], [4, 4]), ("cross", [4, 4, 4, 4], [3, 3]), ("all", [3, 3, 3, 3], [3, 3])])
def test_per_layer_amount_ranks_the_chosen_blocks(blocks: str, self_left, cross_left) -> None:
    model, base = bart_captured()
    module = base.clone()
    report = PassManager(f"prune-heads{{amount=0.25,per_layer=true,blocks={blocks}}}").run(module)
    after = analyze(module).layers
    assert [x.attention.num_heads for x in after] == self_left
    assert [x.cross_attention.num_heads for x in after[2:]] == cross_left
    assert report.records[0].stats["cross_heads_removed"] == 8 - sum(cross_left)


def test_global_amount_compares_self_and_cross_heads() -> None:
    """A zeroed cross head (and a near-zero one) scores lowest among all 24 heads, so amount
    = 2/24 removes exactly those; blocks=self ranks (and removes) self heads only."""
    from optc.tests.conftest import scale_param_slice

    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[3].cross_attention.head_slices(2))
    for s in layers[2].cross_attention.head_slices(1):
        scale_param_slice(module, s.param, s.dim, list(s.index), 1e-3)
    pruned = module.clone()
    report = PassManager(f"prune-heads{{amount={2 / 24}}}").run(pruned)
    assert report.records[0].stats["cross_heads_removed"] == 2
    after = analyze(pruned).layers
    assert after[2].cross_attention.head_ids == [0, 2, 3] and after[3].cross_attention.head_ids == [0, 1, 3]
    assert [x.attention.num_heads for x in after] == [4, 4, 4, 4]
    assert_outputs_equal(run_backend(pruned, "eager", inputs), run_backend(module, "eager", inputs),
                         atol=1e-2)
    only_self = module.clone()
    PassManager(f"prune-heads{{amount={2 / 24},blocks=self}}").run(only_self)
    assert [x.cross_attention.num_heads for x in analyze(only_self).layers[2:]] == [4, 4]
    # amount is a fraction of the heads ranked: round(2/24 * 16) = 1 self head
    assert sum(x.attention.num_heads for x in analyze(only_self).layers) == 15


def test_taylor_scores_cross_heads_and_amount_picks_the_zeroed_one(monkeypatch) -> None:
    """Cross heads get Taylor scores of their own, keyed (layer, "cross"); a zeroed one scores
    0, and prune-heads{criterion=taylor,blocks=cross} removes it."""
    from optc.passes.support.calibration import CalibrationOptions

    model, base = bart_captured()
    module = base.clone()
    zero_slices(module, analyze(module).layers[2].cross_attention.head_slices(3))
    batches = [Batch(llm_inputs(model, seed=s), None) for s in (0, 1)]
    heads, _ = taylor_scores(module, batches, heads=True, neurons=False)
    assert set(heads) == {0, 1, 2, 3, (2, "cross"), (3, "cross")}
    assert heads[(2, "cross")].shape == (4,) and heads[(2, "cross")][3] == 0
    assert (heads[(2, "cross")][:3] > 0).all() and (heads[(3, "cross")] > 0).all()
    monkeypatch.setattr(CalibrationOptions, "calibration", lambda *args, **kwargs: batches)
    report = PassManager(f"prune-heads{{amount={1 / 8},blocks=cross,criterion=taylor,data=x}}").run(module)
    assert report.records[0].stats["cross_heads_removed"] == 1
    assert analyze(module).layers[2].cross_attention.head_ids == [0, 1, 2]


@pytest.mark.parametrize(("spec", "message"), [
    ("prune-heads{cross_heads=2:4}",
     "cross-attention head 2:4 does not exist; layer 2 has 4 cross-attention heads"),
    ("prune-heads{cross_heads=0:1}",
     "layer 0 has no cross-attention block (layers with cross-attention: 2, 3)"),
    ("prune-heads{cross_heads=7:0}", "layer 7 does not exist; the model has layers 0..3"),
    ("prune-heads{heads=2:1,cross_heads=3:9}", "cross-attention head 3:9 does not exist"),
])
def test_bad_cross_heads_are_refused_and_ir_unchanged(spec: str, message: str) -> None:
    _, base = bart_captured()
    module = base.clone()
    assert_refused_unchanged(module, spec, message)


@pytest.mark.parametrize("spec", ["prune-heads{cross_heads=0:1}", "prune-heads{amount=0.5,blocks=cross}"])
@pytest.mark.parametrize("model", ["t5", "llama"])
def test_cross_heads_on_a_model_without_cross_attention_are_refused(spec: str, model: str) -> None:
    _, base = t5_captured() if model == "t5" else llm_captured("llama")
    module = base.clone()
    assert_refused_unchanged(module, spec, "the model has no cross-attention")
    assert "heads=layer:head" in _refusal(module, spec)


def _refusal(module, spec: str) -> str:
    from optc.errors import PassError

    with pytest.raises(PassError) as info:
        PassManager(spec).run(module)
    return str(info.value)


def test_blocks_without_amount_is_a_spec_error() -> None:
    with pytest.raises(PipelineSpecError, match="blocks=cross chooses which heads amount=F ranks"):
        parse_pipeline("prune-heads{heads=0:1,blocks=cross}")
    with pytest.raises(PipelineSpecError, match="choose one of self, cross, all"):
        parse_pipeline("prune-heads{amount=0.5,blocks=decoder}")
    (p,) = parse_pipeline("prune-heads{cross_heads=2:1,3:0}")
    assert p.cross_heads == ((2, 1), (3, 0)) and p.spec() == "prune-heads{cross_heads=2:1,3:0}"


def test_optc_passes_help_names_cross_heads_and_blocks() -> None:
    from optc.tools.cli.main import describe_passes

    (entry,) = [x for x in describe_passes() if x["name"] == "prune-heads"]
    options = {o["name"]: o for o in entry["options"]}
    assert "cross-attention heads" in options["cross_heads"]["doc"]
    assert options["blocks"]["type"] == "self|cross|all" and options["blocks"]["default"] == "all"
