"""Structure analysis on captured Hugging Face models: layers, blocks, residual stream, slices."""

from __future__ import annotations

import re

import pytest

from optc.ir import parse_module, print_module
from optc.ir.analysis import AttentionBlock, FFNBlock, ParamSlice, analyze
from optc.ir.core import Module
from optc.tests.frontends.hf_cases import captured

CASES = [
    ("bert", "base"),
    ("roberta", "base"),
    ("distilbert", "base"),
    ("electra", "base"),
    ("xlm-roberta", "base"),
    ("gpt2", "base"),
    ("bert", "sequence-classification"),
    ("bert", "question-answering"),
    ("roberta", "sequence-classification"),
    ("electra", "sequence-classification"),
]
"""(family, head) pairs analysed; the classification heads must not be taken for FFNs."""

PRE_LN = {"gpt2"}
"""Families whose norms come before the projections."""


def ffn_width(family: str) -> int:
    return 256 if family == "gpt2" else 128  # GPT-2's n_inner defaults to 4 * n_embd


def assert_attention_block(block: AttentionBlock, heads: int, head_dim: int) -> None:
    assert block.node.op == "attention"
    for lin in (block.query, block.key, block.value, block.output):
        assert lin is not None and lin.op == "linear"
    assert block.query.outputs[0] is block.node.args[0]
    assert block.key.outputs[0] is block.node.args[1]
    assert block.value.outputs[0] is block.node.args[2]
    assert block.output.args[0] is block.node.outputs[0]
    assert block.query.args[0] is block.key.args[0] is block.value.args[0]
    assert (block.num_heads, block.head_dim) == (heads, head_dim)
    assert block.prunable is None


def assert_ffn_block(block: FFNBlock, width: int, hidden: int) -> None:
    assert block.up.op == "linear" and block.down.op == "linear"
    assert block.activation.op == "gelu"
    assert block.activation.args[0] is block.up.outputs[0]
    assert block.down.args[0] is block.activation.outputs[0]
    assert block.width == width
    assert tuple(block.up.args[1].tensor_type.shape) == (width, hidden)
    assert tuple(block.down.args[1].tensor_type.shape) == (hidden, width)


def assert_on_stream(block, last_projection, pre_ln: bool) -> None:
    """The block's residual add sums its last projection with the stream entering it."""
    add = block.residual
    assert add is not None and add.op == "aten.add.Tensor"
    assert set(map(id, add.args[:2])) == {id(last_projection.outputs[0]), id(block.stream_in)}
    assert len(block.norms) == 1 and block.norms[0].op == "layer_norm"
    norm = block.norms[0]
    if pre_ln:
        assert norm.args[0] is block.stream_in
        first = block.query if isinstance(block, AttentionBlock) else block.up
        assert first.args[0] is norm.outputs[0]
        assert block.stream_out is add.outputs[0]
    else:
        assert norm.args[0] is add.outputs[0]
        assert block.stream_out is norm.outputs[0]


@pytest.mark.parametrize(("family", "head"), CASES)
def test_layers_blocks_and_residual_stream(family: str, head: str) -> None:
    model, module = captured(family, head)
    config = model.config
    layers = analyze(module).layers
    assert len(layers) == config.num_hidden_layers == 2
    hidden = config.hidden_size
    heads = config.num_attention_heads
    pre_ln = family in PRE_LN
    for index, layer in enumerate(layers):
        assert layer.index == index
        att, ffn = layer.attention, layer.ffn
        assert att is not None and ffn is not None
        assert_attention_block(att, heads, hidden // heads)
        assert_ffn_block(ffn, ffn_width(family), hidden)
        assert_on_stream(att, att.output, pre_ln)
        assert_on_stream(ffn, ffn.down, pre_ln)
        assert att.stream_out is ffn.stream_in
        assert layer.stream_in is att.stream_in and layer.stream_out is ffn.stream_out
    for before, after in zip(layers, layers[1:], strict=False):
        assert before.stream_out is after.stream_in
    # the blocks are found in graph order
    order = {id(n): i for i, n in enumerate(module.graph)}
    positions = [order[id(n)] for layer in layers
                 for n in (layer.attention.query, layer.attention.output, layer.ffn.up, layer.ffn.down)]
    assert positions == sorted(positions)


@pytest.mark.parametrize(("family", "head"), [c for c in CASES if c[0] not in PRE_LN and c[1] == "base"])
def test_post_ln_last_stream_out_is_the_model_output(family: str, head: str) -> None:
    _, module = captured(family, head)
    last = analyze(module).layers[-1]
    assert last.stream_out.producer.op == "layer_norm"
    assert module.graph.outputs["last_hidden_state"] is last.stream_out


def test_gpt2_pre_ln_final_norm_is_not_attached_to_the_last_block() -> None:
    _, module = captured("gpt2")
    layers = analyze(module).layers
    last = layers[-1].ffn
    assert last.stream_out is last.residual.outputs[0]
    users = last.stream_out.users()
    assert [u.op for u in users] == ["layer_norm"]
    ln_f = users[0]
    assert [p.name for p in ln_f.inputs if p.is_param] == ["ln_f.weight", "ln_f.bias"]
    attached = [id(n) for layer in layers for b in (layer.attention, layer.ffn) for n in b.norms]
    assert id(ln_f) not in attached
    assert "ln_f.weight" not in layers[-1].param_names()
    # each block owns exactly its own pre-norm
    assert [[n.args[1].name for n in b.norms] for layer in layers for b in (layer.attention, layer.ffn)] == [
        ["h.0.ln_1.weight"], ["h.0.ln_2.weight"], ["h.1.ln_1.weight"], ["h.1.ln_2.weight"]]


def test_bert_post_ln_norms_belong_to_their_blocks() -> None:
    _, module = captured("bert")
    layers = analyze(module).layers
    names = [[n.args[1].name for n in b.norms] for layer in layers for b in (layer.attention, layer.ffn)]
    assert names == [
        ["encoder.layer.0.attention.output.LayerNorm.weight"], ["encoder.layer.0.output.LayerNorm.weight"],
        ["encoder.layer.1.attention.output.LayerNorm.weight"], ["encoder.layer.1.output.LayerNorm.weight"],
    ]
    # the embedding norm is the stream entering layer 0, not part of any block
    assert layers[0].stream_in.producer.args[1].name == "embeddings.LayerNorm.weight"


def test_head_slices_name_bert_parameters() -> None:
    _, module = captured("bert")
    att = analyze(module).layers[1].attention
    rows = tuple(range(32, 48))
    p = "encoder.layer.1.attention."
    assert att.head_slices(2) == [
        ParamSlice(p + "self.query.weight", 0, rows), ParamSlice(p + "self.query.bias", 0, rows),
        ParamSlice(p + "self.key.weight", 0, rows), ParamSlice(p + "self.key.bias", 0, rows),
        ParamSlice(p + "self.value.weight", 0, rows), ParamSlice(p + "self.value.bias", 0, rows),
        ParamSlice(p + "output.dense.weight", 1, rows),
    ]
    # the heads partition the projection rows
    covered = sorted(i for h in range(att.num_heads) for i in att.head_slices(h)[0].index)
    assert covered == list(range(64))


def test_head_slices_name_gpt2_split_qkv_parameters() -> None:
    _, module = captured("gpt2")
    att = analyze(module).layers[0].attention
    rows = tuple(range(0, 16))
    names = [(s.param, s.dim) for s in att.head_slices(0)]
    assert names == [
        ("h.0.attn.c_attn.weight_1.part0", 0), ("h.0.attn.c_attn.bias.part0", 0),
        ("h.0.attn.c_attn.weight_1.part1", 0), ("h.0.attn.c_attn.bias.part1", 0),
        ("h.0.attn.c_attn.weight_1.part2", 0), ("h.0.attn.c_attn.bias.part2", 0),
        ("h.0.attn.c_proj.weight_1", 1),
    ]
    assert all(s.index == rows for s in att.head_slices(0))


def test_neuron_slices_name_bert_and_distilbert_parameters() -> None:
    _, bert = captured("bert")
    ffn = analyze(bert).layers[0].ffn
    assert ffn.neuron_slices(5) == [
        ParamSlice("encoder.layer.0.intermediate.dense.weight", 0, (5,)),
        ParamSlice("encoder.layer.0.intermediate.dense.bias", 0, (5,)),
        ParamSlice("encoder.layer.0.output.dense.weight", 1, (5,)),
    ]
    _, distil = captured("distilbert")
    ffn = analyze(distil).layers[1].ffn
    assert ffn.neuron_slices(127) == [
        ParamSlice("transformer.layer.1.ffn.lin1.weight", 0, (127,)),
        ParamSlice("transformer.layer.1.ffn.lin1.bias", 0, (127,)),
        ParamSlice("transformer.layer.1.ffn.lin2.weight", 1, (127,)),
    ]


@pytest.mark.parametrize(("family", "head", "word"), [
    ("roberta", "sequence-classification", "classifier"),
    ("electra", "sequence-classification", "classifier"),
    ("bert", "sequence-classification", "classifier"),
    ("bert", "base", "pooler"),
])
def test_heads_are_not_taken_for_ffns(family: str, head: str, word: str) -> None:
    _, module = captured(family, head)
    assert any(word in name for name in module.params)
    layers = analyze(module).layers
    assert len(layers) == 2
    for layer in layers:
        assert not any(word in name for name in layer.param_names())


def test_layer_param_names_cover_the_bert_layer() -> None:
    _, module = captured("bert")
    layer = analyze(module).layers[0]
    expected = {n for n in module.params if n.startswith("encoder.layer.0.")}
    assert set(layer.param_names()) == expected
    assert len(layer.param_names()) == len(expected)


def _rename_params(module: Module) -> tuple[Module, dict[str, str]]:
    """A round trip through the text with every parameter renamed to an opaque name, in an
    order unrelated to the original (reversed)."""
    names = list(module.params)
    mapping = {old: f"w{len(names) - i:03d}" for i, old in enumerate(names)}
    text = print_module(module)
    renamed = re.sub(r"@([\w.]+)", lambda m: "@" + mapping.get(m.group(1), m.group(1)), text)
    assert not any(f"@{old} " in renamed or f"@{old}," in renamed or f"@{old})" in renamed
                   for old in names)
    weights = {mapping[n]: p.data for n, p in module.params.items()}
    return parse_module(renamed, weights=weights), mapping


@pytest.mark.parametrize("family", ["bert", "gpt2", "distilbert"])
def test_analysis_does_not_depend_on_parameter_names(family: str) -> None:
    _, module = captured(family)
    renamed, mapping = _rename_params(module)
    assert not set(renamed.params) & set(module.params)
    original, found = analyze(module).layers, analyze(renamed).layers
    assert len(found) == len(original)
    for a, b in zip(original, found, strict=True):
        assert (b.attention.num_heads, b.attention.head_dim) == (a.attention.num_heads, a.attention.head_dim)
        assert b.ffn.width == a.ffn.width
        assert [mapping[n] for n in a.param_names()] == b.param_names()
        for h in range(a.attention.num_heads):
            expected = [ParamSlice(mapping[s.param], s.dim, s.index) for s in a.attention.head_slices(h)]
            assert b.attention.head_slices(h) == expected
        expected = [ParamSlice(mapping[s.param], s.dim, s.index) for s in a.ffn.neuron_slices(3)]
        assert b.ffn.neuron_slices(3) == expected
        assert b.stream_in.name == a.stream_in.name and b.stream_out.name == a.stream_out.name


def test_module_without_layers_has_empty_structure() -> None:
    module = parse_module("""module @m {
      param @w : f32[8,4]
      param @v : f32[3,8]
      graph(%x : f32[2,4]) {
        %a : f32[2,8] = linear(%x, @w)
        %b : f32[2,8] = gelu(%a, approximate="none")
        %c : f32[2,3] = linear(%b, @v)
        return (y=%c)
      }
    }""")
    assert analyze(module).layers == []


def test_hand_written_ffn_without_residual_is_a_layer_off_the_stream() -> None:
    module = parse_module("""module @m {
      param @up : f32[8,4]
      param @down : f32[4,8]
      graph(%x : f32[2,4]) {
        %a : f32[2,8] = linear(%x, @up)
        %b : f32[2,8] = relu(%a)
        %c : f32[2,4] = linear(%b, @down)
        %d : f32[2,4] = aten.add.Tensor(%c, %x)
        return (y=%d)
      }
    }""")
    (layer,) = analyze(module).layers
    assert layer.attention is None and layer.ffn.width == 8
    assert layer.ffn.activation.op == "relu"
    assert layer.stream_in.name == "x" and layer.stream_out.name == "d"
    assert layer.ffn.norms == []
