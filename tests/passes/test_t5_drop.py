"""drop-layers on T5's encoder: layer 0 owns the relative-position table from which every
layer's attention bias is computed. Dropping layer 0 keeps that table (and says so in its
stats), which equals the Hugging Face model with block 0 deleted and its
``relative_attention_bias`` moved to the new first block, on every backend."""

from __future__ import annotations

import copy

import torch

from optc.backends.differential import run_backend
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import assert_outputs_equal, zero_slices
from optc.tests.frontends.llm_cases import hf_outputs, llm_inputs, t5_captured

TABLE = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def t5_without_block0(model: torch.nn.Module, move_table: bool = True) -> torch.nn.Module:
    """The Hugging Face encoder with block 0 deleted; with ``move_table``, its relative
    position table goes to the new first block (``has_relative_attention_bias=True``)."""
    reference = copy.deepcopy(model)
    first, second = reference.encoder.block
    if move_table:
        attention = second.layer[0].SelfAttention
        attention.relative_attention_bias = first.layer[0].SelfAttention.relative_attention_bias
        attention.has_relative_attention_bias = True
    reference.encoder.block = torch.nn.ModuleList([second])
    reference.config.num_layers = 1
    return reference.eval()


def test_drop_layer0_keeps_the_position_table_and_equals_hf_with_it_moved(backend: str) -> None:
    model, base = t5_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    report = PassManager("drop-layers{layers=0}").run(module)
    stats = report.records[0].stats
    assert report.records[0].modified and stats["layer_ids"] == "0" and stats["blocks_removed"] == 2
    assert stats["position_bias_kept"] == (
        f"@{TABLE} (a dropped layer's position-bias table) is kept: layer id(s) 1 compute their "
        "attention bias from it")
    assert TABLE in module.params
    assert not any(n.startswith("encoder.block.0.") and n != TABLE for n in module.params)
    assert [layer.id for layer in analyze(module).layers] == [1]
    assert not collect_problems(module)
    got = run_backend(module, backend, inputs)
    assert_outputs_equal(got, hf_outputs(t5_without_block0(model), inputs, module.graph.outputs))
    # the reference matters: deleting the block without moving its table changes the outputs
    naive = hf_outputs(t5_without_block0(model, move_table=False), inputs, module.graph.outputs)
    assert (got["last_hidden_state"] - naive["last_hidden_state"]).abs().max() > 1e-2


def test_the_table_is_not_reported_when_it_goes_or_its_layer_stays() -> None:
    """Dropping only layer 1, or only layer 0's FFN, keeps layer 0's table as layer 0's own;
    dropping both layers leaves nothing that reads it, so it goes with them."""
    _, base = t5_captured()
    for spec in ("drop-layers{layers=1}", "drop-layers{layers=0,blocks=ffn}"):
        module = base.clone()
        stats = PassManager(spec).run(module).records[0].stats
        assert "position_bias_kept" not in stats and TABLE in module.params
    module = base.clone()
    stats = PassManager("drop-layers{layers=0,1}").run(module).records[0].stats
    assert "position_bias_kept" not in stats and TABLE not in module.params


def test_heads_of_the_remaining_layer_prune_exactly_after_layer0_goes(backend: str) -> None:
    """After layer 0 is dropped, the kept bias is sliced per head with the remaining layer's
    heads (zeroed heads 0 and 3 removed: outputs unchanged)."""
    model, base = t5_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager("drop-layers{layers=0}").run(module)
    layer = analyze(module).layers[0]
    for h in (0, 3):
        zero_slices(module, layer.attention.head_slices(h))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:0,0:3},dce").run(module)
    after = analyze(module).layers[0].attention
    assert after.num_heads == 2 and after.node.arg(3).tensor_type.shape[1] == 2
    assert TABLE in module.params
    assert_outputs_equal(run_backend(module, backend, inputs), expected)
