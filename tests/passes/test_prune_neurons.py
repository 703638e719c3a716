"""prune-neurons: zeroed neurons removed exactly on every backend, stats, choice, errors."""

from __future__ import annotations

import pytest
import torch

from optc.backends.differential import run_backend
from optc.errors import PassError, PipelineSpecError
from optc.ir import collect_problems, print_module
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.passes import PassManager, parse_pipeline
from optc.passes.prune_neurons import PruneNeurons
from optc.tests.conftest import assert_outputs_equal, assert_refused_unchanged, scale_param_slice

UP = "encoder.layer.{}.intermediate.dense."
DOWN = "encoder.layer.{}.output.dense."
WIDTH = 128


def scale_bert_neurons(module: Module, neurons: dict[int, list[int]], factor: float = 0.0) -> None:
    """Scale the up rows and biases and the down columns of BERT FFN neurons, found by their
    Hugging Face parameter names (independently of the analysis)."""
    for layer, ns in neurons.items():
        scale_param_slice(module, UP.format(layer) + "weight", 0, ns, factor)
        scale_param_slice(module, UP.format(layer) + "bias", 0, ns, factor)
        scale_param_slice(module, DOWN.format(layer) + "weight", 1, ns, factor)


def spec_neurons(neurons: dict[int, list[int]]) -> str:
    items = ",".join(f"{i}:{n}" for i, ns in neurons.items() for n in ns)
    return "prune-neurons{neurons=" + items + "}"


# -- exactness ------------------------------------------------------------------------------------
def test_zeroed_neurons_removed_exactly_on_every_backend(bert, backend: str) -> None:
    """Uneven removal in layer 0 and every neuron of layer 1 (block removed, the down
    projection's bias stays on the residual stream)."""
    _, base, inputs = bert
    neurons = {0: [0, 3, 17, 64, 127], 1: list(range(WIDTH))}
    module = base.clone()
    scale_bert_neurons(module, neurons)
    expected = run_backend(module, "eager", inputs)
    PassManager(spec_neurons(neurons)).run(module)
    layers = analyze(module).layers
    assert layers[0].ffn.width == WIDTH - 5
    assert layers[1].ffn is None and layers[1].attention is not None
    assert DOWN.format(1) + "bias" in module.params
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("neurons", [
    {0: [5]},
    {0: list(range(0, 128, 2)), 1: [1, 2, 3]},
    {0: list(range(WIDTH))},
    {1: list(range(1, WIDTH))},
])
def test_zeroed_neurons_removed_exactly_per_layer_uneven(bert, neurons) -> None:
    _, base, inputs = bert
    module = base.clone()
    scale_bert_neurons(module, neurons)
    expected = run_backend(module, "eager", inputs)
    report = PassManager(spec_neurons(neurons)).run(module)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
    left = [WIDTH - len(neurons.get(i, [])) for i in range(2)]
    assert report.records[0].stats["ffn_per_layer"] == ",".join(map(str, left))
    assert [layer.ffn.width if layer.ffn else 0 for layer in analyze(module).layers] == left


def test_removed_neurons_are_the_named_ones(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    PruneNeurons(neurons=((0, 2), (0, 100), (0, 7))).run(module)
    keep = [i for i in range(WIDTH) if i not in (2, 7, 100)]
    ffn = analyze(module).layers[0].ffn
    assert torch.equal(ffn.up.args[1].data, base.params[UP.format(0) + "weight"].data[keep])
    assert torch.equal(ffn.up.arg(2).data, base.params[UP.format(0) + "bias"].data[keep])
    assert torch.equal(ffn.down.args[1].data, base.params[DOWN.format(0) + "weight"].data[:, keep])
    assert tuple(ffn.up.outputs[0].tensor_type.shape)[-1] == WIDTH - 3
    assert tuple(ffn.activation.outputs[0].tensor_type.shape)[-1] == WIDTH - 3
    assert base.params[UP.format(0) + "weight"].data.shape == (WIDTH, 64)  # not edited in place


# -- stats ------------------------------------------------------------------------------------------
def test_stats_for_partial_removal(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneNeurons(neurons=((0, 1), (1, 0), (1, 9), (1, 10))).run(module)
    assert result.modified is True
    per_neuron = 64 + 1 + 64
    assert result.stats == {
        "neurons_removed": 4,
        "ffn_per_layer": "127,125",
        "layer_ids": "0,1",
        "ffn_blocks_removed": "-",
        "params_removed": 4 * per_neuron,
        "nodes_removed": 0,
    }
    assert before - module.num_parameters() == 4 * per_neuron
    assert collect_problems(module) == []


def test_params_removed_matches_measured_drop_when_a_block_is_removed(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneNeurons(neurons=tuple((1, i) for i in range(WIDTH))).run(module)
    assert result.stats["params_removed"] == before - module.num_parameters()


def test_stats_when_every_neuron_of_a_layer_goes(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    before = module.num_parameters()
    result = PruneNeurons(neurons=tuple((1, i) for i in range(WIDTH))).run(module)
    assert result.stats["neurons_removed"] == WIDTH
    assert result.stats["ffn_per_layer"] == "128,0"
    assert result.stats["ffn_blocks_removed"] == "1"
    assert result.stats["nodes_removed"] == 3  # up, activation, down
    assert before - module.num_parameters() == 2 * 64 * WIDTH + WIDTH  # the down bias stays
    gone = sorted(n for n in base.params if n not in module.params)
    assert gone == sorted([UP.format(1) + "weight", UP.format(1) + "bias", DOWN.format(1) + "weight"])


def test_amount_zero_is_a_no_op_twice(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    for _ in range(2):
        report = PassManager("prune-neurons{amount=0}").run(module)
        assert report.records[0].modified is False
        assert report.records[0].stats["neurons_removed"] == 0
        assert print_module(module) == text


# -- amount and criterion ---------------------------------------------------------------------
def test_per_layer_amount_removes_the_same_number_in_every_layer(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    report = PassManager("prune-neurons{amount=0.25,per_layer=true}").run(module)
    assert report.records[0].stats["neurons_removed"] == 64
    assert report.records[0].stats["ffn_per_layer"] == "96,96"


def test_global_amount_can_remove_unevenly_and_picks_lowest_norm(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    tiny = list(range(0, 128, 2))  # half of layer 0 tiny
    scale_bert_neurons(module, {0: tiny}, 1e-3)
    glob = module.clone()
    report = PassManager("prune-neurons{amount=0.25}").run(glob)  # 64 of 256
    assert report.records[0].stats["ffn_per_layer"] == "64,128"
    ffn = analyze(glob).layers[0].ffn
    keep = [i for i in range(WIDTH) if i not in tiny]
    assert torch.equal(ffn.up.args[1].data, module.params[UP.format(0) + "weight"].data[keep])
    per_layer = module.clone()
    report = PassManager("prune-neurons{amount=0.25,per_layer=true}").run(per_layer)
    assert report.records[0].stats["ffn_per_layer"] == "96,96"


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "message"), [
    ("prune-neurons{neurons=0:128}", "neuron 0:128 does not exist; layer 0 has 128"),
    ("prune-neurons{neurons=3:0}", "layer 3 does not exist; the model has layers 0..1"),
])
def test_missing_neuron_or_layer_is_refused_and_ir_unchanged(bert, spec: str, message: str) -> None:
    _, base, _ = bert
    assert_refused_unchanged(base.clone(), spec, message)


@pytest.mark.parametrize(("spec", "message"), [
    ("prune-neurons{amount=-0.5}", r"amount must be in \[0, 1\], got -0.5"),
    ("prune-neurons{amount=2}", r"amount must be in \[0, 1\], got 2"),
    ("prune-neurons{neurons=0:1,amount=0.5}", "either neurons=layer:neuron,... or amount=F"),
    ("prune-neurons", "either neurons=layer:neuron,... or amount=F"),
])
def test_bad_options_are_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec)


def test_taylor_without_data_names_the_data_option(bert) -> None:
    _, base, _ = bert
    module = base.clone()
    text = print_module(module)
    with pytest.raises(PassError, match="--data"):
        PassManager("prune-neurons{amount=0.5,criterion=taylor}").run(module)
    assert print_module(module) == text
