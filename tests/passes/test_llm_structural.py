"""prune-heads, prune-neurons and drop-layers on decoder LLMs (Llama, Mistral, Phi-3, Gemma,
Qwen2): zeroed query heads, kv groups and gated-FFN neurons removed exactly, dropped pre-norm
layers equal to the Hugging Face model with those layers deleted, on every backend."""

from __future__ import annotations

import pytest
import torch

from optc.backends.differential import run_backend
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import (
    assert_backends_agree,
    assert_outputs_equal,
    assert_refused_unchanged,
    zero_slices,
)
from optc.tests.frontends.llm_cases import (
    LLM_FAMILIES,
    LLM_ONNX_FAMILIES,
    SHAPES,
    hf_outputs,
    hf_without_layers,
    llm_captured,
    llm_inputs,
    on_backends,
)


@pytest.mark.parametrize(("family", "backend"), on_backends(LLM_FAMILIES, LLM_ONNX_FAMILIES))
def test_zeroed_heads_groups_and_neurons_removed_exactly(family: str, backend: str) -> None:
    """Layer 0 loses query head 1 (its kv head still serves head 0, so the groups become
    uneven); layer 1 loses kv head 0 with its whole group (query heads 0 and 1); both lose
    gated-FFN neurons (rows of gate and up, columns of down)."""
    model, base = llm_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[0].attention.head_slices(1))
    zero_slices(module, layers[1].attention.kv_slices(0))
    for n in (0, 17, 63):
        zero_slices(module, layers[0].ffn.neuron_slices(n))
    zero_slices(module, layers[1].ffn.neuron_slices(5))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:1,1:0,1:1},"
                "prune-neurons{neurons=0:0,0:17,0:63,1:5},dce").run(module)
    heads, kv, dim = SHAPES[family]
    after = analyze(module).layers
    a0, a1 = after[0].attention, after[1].attention
    assert (a0.num_heads, a0.num_kv_heads, a0.kv_heads) == (3, 2, [0, 1, 1])
    assert (a1.num_heads, a1.num_kv_heads, a1.kv_heads) == (2, 1, [0, 0])
    assert a1.node.attr("kv_heads") is None  # a regular grouping needs no map
    assert a1.key.args[1].data.shape == (dim, 32) and a1.value.args[1].data.shape == (dim, 32)
    assert a0.query.args[1].data.shape == (3 * dim, 32) and a0.key.args[1].data.shape == (2 * dim, 32)
    assert a0.head_ids == [0, 2, 3] and a1.head_ids == [2, 3]
    f0, f1 = after[0].ffn, after[1].ffn
    assert (f0.width, f1.width) == (61, 63)
    assert f0.gated.args[1].data.shape == (61, 32) and f0.down.args[1].data.shape == (32, 61)
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("family", LLM_FAMILIES)
@pytest.mark.parametrize("drop", [0, 1])
def test_drop_layer_equals_hf_with_layer_deleted(family: str, drop: int) -> None:
    model, base = llm_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    report = PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert report.records[0].modified
    assert [layer.id for layer in analyze(module).layers] == [1 - drop]
    assert not any(n.startswith(f"layers.{drop}.") for n in module.params)
    expected = hf_outputs(hf_without_layers(model, [drop]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


def test_drop_layer_on_every_backend(backend: str) -> None:
    model, base = llm_captured("llama")
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager("drop-layers{layers=0}").run(module)
    expected = hf_outputs(hf_without_layers(model, [0]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_every_query_head_of_a_layer_removes_its_attention() -> None:
    model, base = llm_captured("llama")
    inputs = llm_inputs(model)
    module = base.clone()
    zero_slices(module, analyze(module).layers[1].attention.kv_slices(0))
    zero_slices(module, analyze(module).layers[1].attention.kv_slices(1))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:0,1:1,1:2,1:3},dce").run(module)
    layers = analyze(module).layers
    assert layers[1].attention is None and layers[1].ffn is not None
    assert "layers.1.self_attn.k_proj.weight" not in module.params
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_amount_pipeline_backends_agree(family: str) -> None:
    model, base = llm_captured(family)
    module = base.clone()
    before = module.num_parameters()
    report = PassManager("drop-layers{strategy=top,count=1},prune-heads{amount=0.5},"
                         "prune-neurons{amount=0.5},dce").run(module)
    assert [r.modified for r in report.records[:3]] == [True, True, True]
    (layer,) = analyze(module).layers
    assert layer.attention.num_heads == 2 and layer.ffn.width == 32
    assert module.num_parameters() < before
    assert_backends_agree(module, llm_inputs(model))


def test_taylor_and_magnitude_scores_cover_gated_neurons() -> None:
    from optc.passes.support.importance import neuron_magnitude

    _, base = llm_captured("llama")
    ffn = analyze(base).layers[0].ffn
    scores = neuron_magnitude(base, ffn)
    assert scores.shape == (64,) and bool((scores > 0).all())


def test_missing_kv_group_head_is_refused_and_ir_unchanged() -> None:
    _, base = llm_captured("llama")
    module = base.clone()
    assert_refused_unchanged(module, "prune-heads{heads=0:4}", "head 0:4 does not exist")
    assert torch.equal(module.params["layers.0.self_attn.k_proj.weight"].data,
                       base.params["layers.0.self_attn.k_proj.weight"].data)


def test_modernbert_prunes_and_drops_exactly(backend: str) -> None:
    from optc.tests.frontends.llm_cases import modernbert_captured

    model, base = modernbert_captured()
    inputs = llm_inputs(model, 3, 9)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[0].attention.head_slices(2))
    zero_slices(module, layers[2].ffn.neuron_slices(7))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:2},prune-neurons{neurons=2:7},dce").run(module)
    after = analyze(module).layers
    assert after[0].attention.num_heads == 3 and after[2].ffn.width == 63
    assert_outputs_equal(run_backend(module, backend, inputs), expected)
    module = base.clone()
    PassManager("drop-layers{layers=1}").run(module)
    reference = hf_without_layers(model, [1])
    assert_outputs_equal(run_backend(module, backend, inputs),
                         hf_outputs(reference, inputs, module.graph.outputs))


def test_t5_heads_removed_with_their_bias_planes(backend: str) -> None:
    """Removing heads slices the shared relative position bias per layer (heads 1 of layer 0,
    0 and 2 of layer 1: two runs of planes concatenated); dropping the last layer equals the
    Hugging Face encoder with its last block deleted."""
    import copy

    from optc.tests.frontends.llm_cases import t5_captured

    model, base = t5_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[0].attention.head_slices(1))
    for h in (0, 2):
        zero_slices(module, layers[1].attention.head_slices(h))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:1,1:0,1:2},dce").run(module)
    after = analyze(module).layers
    assert [a.attention.num_heads for a in after] == [3, 2]
    assert [a.attention.node.arg(3).tensor_type.shape[1] for a in after] == [3, 2]
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)
    module = base.clone()
    PassManager("drop-layers{layers=1}").run(module)
    reference = copy.deepcopy(model)
    reference.encoder.block = torch.nn.ModuleList([reference.encoder.block[0]])
    assert_outputs_equal(run_backend(module, backend, inputs),
                         hf_outputs(reference.eval(), inputs, module.graph.outputs))


@pytest.mark.parametrize(("drop", "owner", "index"), [(0, "encoder", 0), (3, "decoder", 1)])
def test_bart_drop_layer_equals_hf_with_layer_deleted(drop: int, owner: str, index: int) -> None:
    """A post-LN encoder layer, and a decoder layer with its self-attention, cross-attention
    and FFN, removed exactly."""
    import copy

    from optc.tests.frontends.llm_cases import bart_captured

    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert drop not in [x.id for x in analyze(module).layers]
    reference = copy.deepcopy(model)
    part = getattr(reference, owner)
    part.layers = torch.nn.ModuleList(x for i, x in enumerate(part.layers) if i != index)
    assert_outputs_equal(run_backend(module, "eager", inputs),
                         hf_outputs(reference.eval(), inputs, module.graph.outputs))


def test_bart_heads_and_neurons_removed_exactly(backend: str) -> None:
    from optc.tests.frontends.llm_cases import bart_captured

    model, base = bart_captured()
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[1].attention.head_slices(0))
    zero_slices(module, layers[3].attention.head_slices(3))
    zero_slices(module, layers[2].ffn.neuron_slices(4))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:0,3:3},prune-neurons{neurons=2:4},dce").run(module)
    after = analyze(module).layers
    assert [x.attention.num_heads for x in after] == [4, 3, 4, 3]
    assert after[3].cross_attention.num_heads == 4 and after[2].ffn.width == 63
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_weights_shared_across_layers_are_refused_but_layers_drop_exactly() -> None:
    """ALBERT: every layer reads the same weights; pruning one layer would change all of
    them, so prune-heads/prune-neurons refuse (IR unchanged) and drop-layers stays exact."""
    import transformers as tf

    import optc

    torch.manual_seed(0)
    config = tf.AlbertConfig(vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = tf.AlbertModel(config).eval()
    module = optc.capture(model)
    layers = analyze(module).layers
    assert len(layers) == 2 and layers[0].attention.query.args[1] is layers[1].attention.query.args[1]
    for spec in ("prune-heads{heads=0:1}", "prune-neurons{neurons=1:3}", "prune-heads{amount=0.5}"):
        assert_refused_unchanged(module, spec, "shared with layer(s)")
    inputs = llm_inputs(model)
    dropped = module.clone()
    PassManager("drop-layers{layers=1}").run(dropped)
    config.num_hidden_layers = 1
    reference = tf.AlbertModel(config).eval()
    reference.load_state_dict(model.state_dict())
    assert_outputs_equal(run_backend(dropped, "eager", inputs),
                         hf_outputs(reference, inputs, dropped.graph.outputs))


def test_kv_groups_option_removes_a_kv_head_with_its_group() -> None:
    model, base = llm_captured("llama")
    inputs = llm_inputs(model)
    module = base.clone()
    zero_slices(module, analyze(module).layers[0].attention.kv_slices(1))
    expected = run_backend(module, "eager", inputs)
    report = PassManager("prune-heads{kv_groups=0:1},dce").run(module)
    assert report.records[0].stats["heads_removed"] == 2
    att = analyze(module).layers[0].attention
    assert (att.num_heads, att.num_kv_heads, att.head_ids) == (2, 1, [0, 1])
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)
    assert_refused_unchanged(base.clone(), "prune-heads{kv_groups=1:2}",
                             "kv head 1:2 does not exist; layer 1 has 2 kv heads")
