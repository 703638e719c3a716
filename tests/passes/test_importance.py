"""Importance scores: magnitude against a direct computation, Taylor/Fisher scores, layer
similarity; and the data-driven criteria on the real MiniLM with GLUE data."""

from __future__ import annotations

import math

import pytest
import torch

from optc.ir import collect_problems, print_module
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.passes import PassManager
from optc.passes.drop_layers import choose_layers
from optc.passes.support.importance import (
    head_magnitude,
    layer_similarity,
    neuron_magnitude,
    normalize_per_layer,
    taylor_scores,
)
from optc.tasks.batching import Batch, example_batches
from optc.tasks.detect import read_examples
from optc.tests.conftest import scale_param_slice, token_inputs
from optc.tests.frontends.hf_cases import captured

HEAD_DIM = 16
ATT = "encoder.layer.{}.attention."


def _replace(module: Module, suffix: str, dim: int, index: list[int]) -> None:
    """Zero ``index`` along ``dim`` of the parameter named ``[prefix.]suffix``, in a new tensor
    (a task model names its base ``bert.``)."""
    (name,) = [n for n in module.params if n == suffix or n.endswith("." + suffix)]
    scale_param_slice(module, name, dim, index)


def zero_head(module: Module, layer: int, head: int) -> None:
    rows = list(range(head * HEAD_DIM, (head + 1) * HEAD_DIM))
    for proj in ("query", "key", "value"):
        _replace(module, ATT.format(layer) + f"self.{proj}.weight", 0, rows)
        _replace(module, ATT.format(layer) + f"self.{proj}.bias", 0, rows)
    _replace(module, ATT.format(layer) + "output.dense.weight", 1, rows)


def zero_neuron(module: Module, layer: int, neuron: int) -> None:
    _replace(module, f"encoder.layer.{layer}.intermediate.dense.weight", 0, [neuron])
    _replace(module, f"encoder.layer.{layer}.intermediate.dense.bias", 0, [neuron])
    _replace(module, f"encoder.layer.{layer}.output.dense.weight", 1, [neuron])


def batches_for(model, labels: list[torch.Tensor | None], seq: int = 7) -> list[Batch]:
    out = []
    for seed, lab in enumerate(labels):
        inputs = token_inputs(model, 3, seq, seed=seed)
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        out.append(Batch(inputs, lab))
    return out


# -- magnitude --------------------------------------------------------------------------------
def test_head_magnitude_is_the_norm_of_the_head_slices() -> None:
    _, module = captured("bert")
    for layer, block in enumerate(layer.attention for layer in analyze(module).layers):
        got = head_magnitude(module, block)
        p = {k: module.params[ATT.format(layer) + k].data.double() for k in (
            "self.query.weight", "self.query.bias", "self.key.weight", "self.key.bias",
            "self.value.weight", "self.value.bias", "output.dense.weight")}
        expected = []
        for h in range(4):
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            total = sum(p[k][rows].pow(2).sum() for k in p if k.startswith("self."))
            total += p["output.dense.weight"][:, rows].pow(2).sum()
            expected.append(math.sqrt(total))
        assert got.shape == (4,)
        torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-6, atol=0)


def test_neuron_magnitude_is_the_norm_of_the_neuron_slices() -> None:
    _, module = captured("bert")
    block = analyze(module).layers[1].ffn
    up = module.params["encoder.layer.1.intermediate.dense.weight"].data.double()
    bias = module.params["encoder.layer.1.intermediate.dense.bias"].data.double()
    down = module.params["encoder.layer.1.output.dense.weight"].data.double()
    expected = torch.stack([
        (up[i].pow(2).sum() + bias[i] ** 2 + down[:, i].pow(2).sum()).sqrt() for i in range(128)])
    got = neuron_magnitude(module, block)
    assert got.shape == (128,)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=0)


def test_magnitude_of_zeroed_units_is_zero() -> None:
    _, base = captured("bert")
    module = base.clone()
    zero_head(module, 0, 2)
    zero_neuron(module, 0, 9)
    layer = analyze(module).layers[0]
    heads = head_magnitude(module, layer.attention)
    assert heads[2] == 0 and (heads[[0, 1, 3]] > 0).all()
    neurons = neuron_magnitude(module, layer.ffn)
    assert neurons[9] == 0 and (neurons > 0).sum() == 127


def test_normalize_per_layer() -> None:
    scores = {0: torch.tensor([3.0, 4.0]), 1: torch.tensor([0.0, 0.0])}
    normalized = normalize_per_layer(scores)
    torch.testing.assert_close(normalized[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(normalized[1], torch.zeros(2))


# -- Taylor -------------------------------------------------------------------------------------
def test_taylor_with_labels_scores_every_unit_and_zeroed_ones_get_zero() -> None:
    model, base = captured("bert", "sequence-classification")
    module = base.clone()
    zero_head(module, 0, 1)
    zero_neuron(module, 1, 5)
    text = print_module(module)
    batches = batches_for(model, [torch.tensor([0, 2, 1]), torch.tensor([1, 1, 0])])
    heads, neurons = taylor_scores(module, batches)
    assert print_module(module) == text  # gates go into a clone
    assert set(heads) == set(neurons) == {0, 1}
    for i in (0, 1):
        assert heads[i].shape == (4,) and neurons[i].shape == (128,)
    assert heads[0][1] == 0
    assert neurons[1][5] == 0
    assert (heads[0][[0, 2, 3]] > 0).all() and (heads[1] > 0).all()
    assert (neurons[1] > 0).sum() >= 120


def _scaled_head_losses(model, layer: int, head: int, factor: float, batches: list[Batch]) -> torch.Tensor:
    """Per-example cross-entropy of the HF model with one head's output scaled by ``factor``
    (its columns of the output projection scaled: the same as a gate on the head)."""
    import copy

    scaled = copy.deepcopy(model)
    dense = scaled.bert.encoder.layer[layer].attention.output.dense
    with torch.no_grad():
        dense.weight[:, head * HEAD_DIM:(head + 1) * HEAD_DIM] *= factor
    losses = []
    with torch.no_grad():
        for batch in batches:
            logits = scaled(**batch.inputs).logits
            losses.append(torch.nn.functional.cross_entropy(logits.double(), batch.labels, reduction="none"))
    return torch.cat(losses)


def test_taylor_with_labels_equals_the_mean_absolute_gate_derivative() -> None:
    """Reference: the derivative of each example's loss with respect to a head gate, by
    central finite differences on the Hugging Face model; the score is its mean |.|."""
    model, module = captured("bert", "sequence-classification")
    batches = batches_for(model, [torch.tensor([0, 2, 1]), torch.tensor([1, 1, 0])])
    heads, _ = taylor_scores(module, batches, heads=True, neurons=False)
    eps = 1e-3
    for layer, head in ((0, 2), (1, 0)):
        up = _scaled_head_losses(model, layer, head, 1 + eps, batches)
        down = _scaled_head_losses(model, layer, head, 1 - eps, batches)
        reference = ((up - down) / (2 * eps)).abs().mean()
        assert float(heads[layer][head]) == pytest.approx(float(reference), rel=2e-2, abs=1e-6)


def test_taylor_can_score_only_heads_or_only_neurons() -> None:
    model, module = captured("bert", "sequence-classification")
    batches = batches_for(model, [torch.tensor([0, 2, 1])])
    heads, neurons = taylor_scores(module, batches, heads=True, neurons=False)
    assert set(heads) == {0, 1} and neurons == {}
    heads, neurons = taylor_scores(module, batches, heads=False, neurons=True)
    assert heads == {} and set(neurons) == {0, 1}


def test_taylor_without_labels_gives_finite_fisher_scores() -> None:
    model, base = captured("bert")
    module = base.clone()
    zero_head(module, 1, 3)
    batches = batches_for(model, [None, None])
    heads, neurons = taylor_scores(module, batches)
    for scores in (*heads.values(), *neurons.values()):
        assert torch.isfinite(scores).all()
    assert heads[1][3] == 0
    assert (heads[0] > 0).all()
    # deterministic for a seed
    again, _ = taylor_scores(module, batches)
    assert all(torch.equal(heads[i], again[i]) for i in heads)


def test_taylor_without_labels_on_a_classifier_samples_from_its_logits() -> None:
    model, module = captured("bert", "sequence-classification")
    batches = batches_for(model, [None])
    heads, neurons = taylor_scores(module, batches)
    assert all(torch.isfinite(s).all() for s in (*heads.values(), *neurons.values()))
    # the Fisher score of a unit is E[(d log p(y|x) / dg)^2] with y drawn from the model: with
    # a zero-temperature model (all logits equal) nothing can be learned from the gate
    flat = module.clone()
    (classifier,) = [n for n in flat.params if n.endswith("classifier.weight")]
    flat.params[classifier].data = torch.zeros_like(flat.params[classifier].data)
    flat_heads, _ = taylor_scores(flat, batches)
    assert all(float(s.abs().max()) == 0.0 for s in flat_heads.values())
    assert any(float(s.max()) > 0 for s in heads.values())


def test_zeroed_head_of_a_classifier_is_removed_first_by_magnitude() -> None:
    model, base = captured("bert", "sequence-classification")
    module = base.clone()
    zero_head(module, 1, 0)
    report = PassManager("prune-heads{amount=0.125}").run(module)  # one head of 8
    assert report.records[0].stats["heads_per_layer"] == "4,3"
    kept = base.params["bert.encoder.layer.1.attention.self.query.weight"].data[HEAD_DIM:]
    assert torch.equal(analyze(module).layers[1].attention.query.args[1].data, kept)
    assert collect_problems(module) == []


# -- layer similarity ---------------------------------------------------------------------------
def test_layer_similarity_is_the_masked_mean_cosine_of_hidden_states() -> None:
    """Reference: Hugging Face's hidden_states[i] (layer i's input) and [i + 1] (its output),
    cosine per token, averaged over the tokens the attention mask keeps."""
    model, module = captured("bert")
    text = print_module(module)
    batches = batches_for(model, [None, None])
    sims = layer_similarity(module, batches)
    assert print_module(module) == text
    totals, counts = [0.0, 0.0], 0.0
    with torch.no_grad():
        for batch in batches:
            states = model(**batch.inputs, output_hidden_states=True).hidden_states
            mask = batch.inputs["attention_mask"].double()
            for i in (0, 1):
                cos = torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1)
                totals[i] += float((cos.double() * mask).sum())
            counts += float(mask.sum())
    assert sims == pytest.approx([t / counts for t in totals], abs=1e-5)


def test_layer_similarity_of_an_identity_layer_is_one() -> None:
    """GPT-2 (pre-LN) with layer 1's residual branches zeroed: its output is its input."""
    model, base = captured("gpt2")
    module = base.clone()
    layer = analyze(module).layers[1]
    for lin in (layer.attention.output, layer.ffn.down):
        for param in (lin.args[1], lin.arg(2)):
            module.params[param.name].data = torch.zeros_like(param.data)
    batches = [Batch(token_inputs(model, 3, 7, seed=s), None) for s in range(2)]
    sims = layer_similarity(module, batches)
    assert len(sims) == 2
    assert sims[1] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= sims[0] < 0.999
    assert choose_layers("contribution", 1, 2, sims) == [1]


# -- real data on MiniLM ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sst2(data_dir):
    path = data_dir / "glue" / "SST-2"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.slow
def test_minilm_scores_on_sst2(minilm_module, sst2) -> None:
    from optc.frontends.huggingface import load_tokenizer

    module = minilm_module.clone()
    names = [v.name for v in module.graph.inputs]
    batches = example_batches(read_examples(sst2, limit=16), load_tokenizer(None), names,
                              batch_size=8, max_length=64)
    assert sum(len(b) for b in batches) == 16
    sims = layer_similarity(module, batches)
    assert len(sims) == 6 and all(0.0 < s < 1.0 for s in sims)  # no layer is an identity
    heads, neurons = taylor_scores(module, batches[:1])
    assert set(heads) == set(neurons) == set(range(6))
    assert all(s.shape == (12,) for s in heads.values())
    assert all(s.shape == (1536,) for s in neurons.values())
    assert all(torch.isfinite(s).all() and float(s.max()) > 0 for s in (*heads.values(), *neurons.values()))


@pytest.mark.slow
def test_minilm_data_driven_passes(minilm_module, sst2) -> None:
    from optc.frontends.huggingface import load_tokenizer

    module = minilm_module.clone()
    report = PassManager(
        f"drop-layers{{strategy=contribution,count=2,data={sst2},samples=16}},"
        f"prune-heads{{amount=0.5,criterion=taylor,data={sst2},samples=16}}").run(module)
    drop, prune = (r.stats for r in report.records)
    sims = [float(s) for s in drop["similarity"].split(",")]
    assert len(sims) == 6
    chosen = [int(i) for i in drop["layers"].split(",")]
    assert chosen == choose_layers("contribution", 2, 6, sims)
    # the similarities are those of the calibration batches the pass read: the train file of
    # the task directory, never the dev set that results are reported on
    names = [v.name for v in minilm_module.graph.inputs]
    batches = example_batches(read_examples(sst2, split="train", limit=16), load_tokenizer(None),
                              names)
    expected = layer_similarity(minilm_module, batches)
    assert sims == pytest.approx(expected, abs=1e-3)
    assert prune["heads_removed"] == 24  # half of 4 layers x 12 heads
    layers = analyze(module).layers
    assert len(layers) == 4
    assert sum(layer.attention.num_heads if layer.attention else 0 for layer in layers) == 24
    assert collect_problems(module) == []
    from optc.backends.differential import run_backend

    out = run_backend(module, "eager", batches[0].inputs)
    assert torch.isfinite(out["last_hidden_state"]).all()
