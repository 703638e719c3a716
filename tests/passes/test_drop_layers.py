"""drop-layers: equal to the Hugging Face model with layers deleted, strategies, blocks, errors;
and the issue's done-when pipeline on every encoder family."""

from __future__ import annotations

import copy

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.errors import PassError, PipelineSpecError
from optc.ir import collect_problems, print_module
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.passes import PassManager, parse_pipeline
from optc.passes.drop_layers import DropLayers, choose_layers
from optc.tests.conftest import (
    TINY,
    assert_backends_agree,
    assert_outputs_equal,
    assert_refused_unchanged,
    token_inputs,
)
from optc.tests.frontends.hf_cases import captured


def layer_list_owner(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The submodule holding the layer ModuleList and the list's attribute name."""
    if hasattr(model, "encoder"):
        return model.encoder, "layer"
    if hasattr(model, "transformer"):
        return model.transformer, "layer"
    return model, "h"  # GPT-2


def hf_without_layers(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    """A deep copy of ``model`` with layers ``drop`` deleted from its layer list."""
    copy_ = copy.deepcopy(model)
    owner, attr = layer_list_owner(copy_)
    layers = getattr(owner, attr)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    setattr(owner, attr, torch.nn.ModuleList(kept))
    copy_.config.num_hidden_layers = len(kept)  # n_layers / n_layer through attribute_map
    return copy_.eval()


def hf_outputs(model: torch.nn.Module, inputs, names) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model(**inputs)
    return {name: out[name] for name in names}


@pytest.fixture(scope="module")
def bert4():
    """A 4-layer tiny BERT and its capture, for the strategies."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(**{**TINY, "num_hidden_layers": 4})).eval()
    model.config._attn_implementation = "sdpa"
    return model, optc.capture(model), token_inputs(model, 3, 7)


# -- choose_layers ----------------------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "count", "layers", "expected"), [
    ("top", 0, 6, []),
    ("top", 2, 6, [4, 5]),
    ("top", 6, 6, [0, 1, 2, 3, 4, 5]),
    ("bottom", 2, 6, [0, 1]),
    ("bottom", 4, 12, [0, 1, 2, 3]),
    ("alternate", 1, 6, [5]),
    ("alternate", 2, 6, [3, 5]),
    ("alternate", 3, 6, [1, 3, 5]),
    ("alternate", 4, 12, [5, 7, 9, 11]),
    ("alternate", 6, 12, [1, 3, 5, 7, 9, 11]),
    ("symmetric", 2, 6, [2, 3]),
    ("symmetric", 4, 6, [1, 2, 3, 4]),
    ("symmetric", 3, 6, [1, 2, 3]),
    ("symmetric", 4, 12, [4, 5, 6, 7]),
    ("symmetric", 6, 12, [3, 4, 5, 6, 7, 8]),
    ("top", 4, 12, [8, 9, 10, 11]),
])
def test_choose_layers(strategy: str, count: int, layers: int, expected: list[int]) -> None:
    assert choose_layers(strategy, count, layers) == expected


def test_choose_layers_by_contribution_drops_the_most_similar() -> None:
    similarity = [0.5, 0.9, 0.1, 0.95, 0.7, 0.2]
    assert choose_layers("contribution", 2, 6, similarity) == [1, 3]
    assert choose_layers("contribution", 3, 6, similarity) == [1, 3, 4]


@pytest.mark.parametrize(("args", "message"), [
    (("top", 7, 6), "cannot drop 7 layers: the model has 6"),
    (("alternate", 4, 6), "alternate dropping removes at most 3 of 6 layers"),
    (("sideways", 1, 6), "unknown strategy"),
])
def test_choose_layers_refuses(args, message: str) -> None:
    with pytest.raises(PassError, match=message):
        choose_layers(*args)


# -- exactness against Hugging Face -----------------------------------------------------------
def test_drop_layer_equals_hf_with_layer_deleted_on_every_backend(bert, backend: str) -> None:
    model, base, inputs = bert
    module = base.clone()
    PassManager("drop-layers{layers=0}").run(module)
    expected = hf_outputs(hf_without_layers(model, [0]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "xlm-roberta", "gpt2"])
@pytest.mark.parametrize("drop", [0, 1])
def test_drop_layer_equals_hf_with_layer_deleted(family: str, drop: int) -> None:
    model, base = captured(family)
    inputs = token_inputs(model, 3, 7)
    module = base.clone()
    PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert len(analyze(module).layers) == 1
    expected = hf_outputs(hf_without_layers(model, [drop]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


@pytest.mark.parametrize(("strategy", "count", "expected"), [
    ("top", 2, [2, 3]),
    ("bottom", 1, [0]),
    ("alternate", 2, [1, 3]),
    ("symmetric", 2, [1, 2]),
    ("top", 4, [0, 1, 2, 3]),
])
def test_strategies_drop_exactly(bert4, strategy: str, count: int, expected: list[int]) -> None:
    model, base, inputs = bert4
    module = base.clone()
    report = PassManager(f"drop-layers{{strategy={strategy},count={count}}}").run(module)
    assert report.records[0].stats["layers"] == ",".join(map(str, expected))
    assert len(analyze(module).layers) == 4 - count
    kept_params = {n for n in module.params if n.startswith("encoder.layer.")}
    assert {int(n.split(".")[2]) for n in kept_params} == set(range(4)) - set(expected)
    reference = hf_outputs(hf_without_layers(model, expected), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), reference)


def test_drop_non_adjacent_explicit_layers(bert4) -> None:
    model, base, inputs = bert4
    module = base.clone()
    PassManager("drop-layers{layers=2,0}").run(module)
    reference = hf_outputs(hf_without_layers(model, [0, 2]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), reference)


class _NoAttention(torch.nn.Module):
    """Stands in for BertAttention: the hidden states pass through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


def test_drop_attention_block_only(bert) -> None:
    model, base, inputs = bert
    module = base.clone()
    report = PassManager("drop-layers{layers=1,blocks=attention}").run(module)
    assert report.records[0].stats["blocks_removed"] == 1
    layers = analyze(module).layers
    assert [(la.attention is not None, la.ffn is not None) for la in layers] == [(True, True), (False, True)]
    assert not any(n.startswith("encoder.layer.1.attention.") for n in module.params)
    assert any(n.startswith("encoder.layer.1.intermediate.") for n in module.params)
    hf = copy.deepcopy(model)
    hf.encoder.layer[1].attention = _NoAttention()
    expected = hf_outputs(hf, inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
    assert_backends_agree(module, inputs, backends=("eager", "torchscript"))


def test_drop_ffn_block_only(bert) -> None:
    model, base, inputs = bert
    module = base.clone()
    report = PassManager("drop-layers{layers=0,blocks=ffn}").run(module)
    assert report.records[0].stats["blocks_removed"] == 1
    layers = analyze(module).layers
    assert [(la.attention is not None, la.ffn is not None) for la in layers] == [
        (True, False), (True, True)]
    assert not any(n.startswith(("encoder.layer.0.intermediate.", "encoder.layer.0.output."))
                   for n in module.params)
    assert any(n.startswith("encoder.layer.0.attention.") for n in module.params)
    hf = copy.deepcopy(model)
    hf.encoder.layer[0].feed_forward_chunk = lambda attention_output: attention_output
    expected = hf_outputs(hf, inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


def _zero(module: Module, value) -> None:
    module.params[value.name].data = torch.zeros_like(value.data)


@pytest.mark.parametrize("drop", [0, 1])
def test_gpt2_drop_layer_with_zeroed_residual_branches_is_exact(drop: int) -> None:
    """Pre-LN: a layer whose attention and FFN add nothing to the stream is the identity."""
    model, base = captured("gpt2")
    inputs = token_inputs(model, 3, 7)
    module = base.clone()
    layer = analyze(module).layers[drop]
    for lin in (layer.attention.output, layer.ffn.down):
        assert lin.args[1].name.startswith(f"h.{drop}.")
        _zero(module, lin.args[1])
        _zero(module, lin.arg(2))
    expected = run_backend(module, "eager", inputs)
    report = PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert report.records[0].modified is True
    assert not any(n.startswith(f"h.{drop}.") for n in module.params)
    assert "ln_f.weight" in module.params
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


# -- stats and no-ops -------------------------------------------------------------------------
def test_stats(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before, nodes = module.num_parameters(), len(module.graph)
    result = DropLayers(layers=(1,)).run(module)
    assert result.modified is True
    assert result.stats["layers"] == "1"
    assert result.stats["blocks_removed"] == 2
    assert result.stats["params_removed"] == before - module.num_parameters()
    assert result.stats["params_removed"] == sum(
        p.data.numel() for n, p in base.params.items() if n.startswith("encoder.layer.1."))
    assert result.stats["nodes_removed"] == nodes - len(module.graph) > 0
    assert collect_problems(module) == []


def test_count_zero_is_a_no_op_twice(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    for _ in range(2):
        report = PassManager("drop-layers{strategy=top,count=0}").run(module)
        assert report.records[0].modified is False
        assert report.records[0].stats["layers"] == "-"
        assert report.records[0].stats["params_removed"] == 0
        assert print_module(module) == text


def test_contribution_with_count_zero_needs_no_data(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    report = PassManager("drop-layers{strategy=contribution,count=0}").run(module)
    assert report.records[0].modified is False


def test_dropping_twice_refers_to_current_layers(bert4) -> None:
    _, base, _ = bert4
    module = base.clone()
    PassManager("drop-layers{layers=3},drop-layers{layers=2}").run(module)
    remaining = {int(n.split(".")[2]) for n in module.params if n.startswith("encoder.layer.")}
    assert remaining == {0, 1}


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "message"), [
    ("drop-layers{layers=2}", "layer 2 does not exist; the model has layers 0..1"),
    ("drop-layers{layers=0,5}", "layer 5 does not exist"),
    ("drop-layers{strategy=top,count=3}", "cannot drop 3 layers: the model has 2"),
    ("drop-layers{strategy=alternate,count=2}", "alternate dropping removes at most 1 of 2 layers"),
])
def test_refused_and_ir_unchanged(bert, spec: str, message: str) -> None:
    _, base, _ = bert
    assert_refused_unchanged(base.clone(), spec, message)


def test_contribution_without_data_names_the_data_option(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    with pytest.raises(PassError, match="--data") as info:
        PassManager("drop-layers{strategy=contribution,count=1}").run(module)
    assert "drop-layers{strategy=contribution} needs calibration data" in str(info.value)
    assert print_module(module) == text


@pytest.mark.parametrize(("spec", "message"), [
    ("drop-layers", "either strategy=... with count=N, or layers=i,j"),
    ("drop-layers{strategy=top,count=1,layers=0}", "either strategy=... with count=N, or layers=i,j"),
    ("drop-layers{strategy=top,count=-1}", "count must be >= 0"),
    ("drop-layers{layers=-1}", "layers must be >= 0"),
    ("drop-layers{strategy=middle,count=1}", "strategy"),
    ("drop-layers{layers=0,blocks=mlp}", "blocks"),
])
def test_bad_options_are_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec)


# -- the done-when pipeline -------------------------------------------------------------------
DONE_WHEN = "drop-layers{strategy=top,count=1},prune-heads{amount=0.5},prune-neurons{amount=0.5},dce"


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "xlm-roberta"])
def test_done_when_pipeline(family: str) -> None:
    model, base = captured(family)
    module = base.clone()
    before = module.num_parameters()
    report = PassManager(DONE_WHEN).run(module)
    assert [r.modified for r in report.records[:3]] == [True, True, True]
    (layer,) = analyze(module).layers
    assert layer.attention.num_heads == 2 and layer.ffn.width == 64
    assert module.num_parameters() < before
    assert_backends_agree(module, token_inputs(model, 3, 7))
