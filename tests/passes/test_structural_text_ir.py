"""Structural passes as Before -> pass -> Expected text IR: drop-layers, prune-heads (with
grouped-query and per-head masks), prune-neurons (with gated FFNs), hard-attention.

Each test parses a small hand-written raised module (text_ir_cases.py), runs one pass with
explicit options, and compares the printed result exactly with a text written from what the
pass should do; where the edit must keep the function (units whose weights are zero), the
eager backend runs before and after.
"""

from __future__ import annotations

import torch

from optc.ir import parse_module, print_module
from optc.passes.drop_layers import DropLayers
from optc.passes.hard_attention import HardAttention
from optc.passes.prune_heads import PruneHeads
from optc.passes.prune_neurons import PruneNeurons
from optc.tests.passes.text_ir_cases import (
    BERT2,
    HEAD_BIAS,
    LAYER,
    LLAMA,
    assert_text,
    eager_outputs,
    edited,
    random_weights,
    run_pass,
)


def bert_inputs(seq: int = 5) -> dict[str, torch.Tensor]:
    """Two rows, the second padded on its last two positions."""
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 1, 1, seq, dtype=torch.bool)
    mask[1, ..., seq - 2:] = False
    return {"x": torch.randn(2, seq, 8, generator=gen), "mask": mask}


def llama_inputs(seq: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    angle = torch.arange(seq, dtype=torch.float32)[None, :, None].expand(1, seq, 2)
    return {"x": torch.randn(2, seq, 8, generator=gen), "cos": angle.cos(), "sin": angle.sin()}


def assert_same_outputs(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key])


def check_unchanged_function(text: str, p, weights: dict[str, torch.Tensor], inputs) -> None:
    """Running ``p`` on ``text`` with ``weights`` leaves the eager outputs as they were."""
    want = eager_outputs(parse_module(text, weights=weights), inputs)
    module, _ = run_pass(text, p, weights)
    assert_same_outputs(want, eager_outputs(module, inputs))


# -- drop-layers -------------------------------------------------------------------------------
BERT2_WITHOUT_LAYER_0 = """\
    module @bert {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @l1.q.weight : f32[8,8]
      param @l1.q.bias : f32[8]
      param @l1.k.weight : f32[8,8]
      param @l1.k.bias : f32[8]
      param @l1.v.weight : f32[8,8]
      param @l1.v.bias : f32[8]
      param @l1.o.weight : f32[8,8]
      param @l1.o.bias : f32[8]
      param @l1.ln1.weight : f32[8]
      param @l1.ln1.bias : f32[8]
      param @l1.up.weight : f32[16,8]
      param @l1.up.bias : f32[16]
      param @l1.down.weight : f32[8,16]
      param @l1.down.bias : f32[8]
      param @l1.ln2.weight : f32[8]
      param @l1.ln2.bias : f32[8]
      graph(%x : f32[batch,seq,8], %mask : bool[batch,1,1,seq]) {
        %q1 : f32[batch,seq,8] = linear(%x, @l1.q.weight, @l1.q.bias)
        %k1 : f32[batch,seq,8] = linear(%x, @l1.k.weight, @l1.k.bias)
        %v1 : f32[batch,seq,8] = linear(%x, @l1.v.weight, @l1.v.bias)
        %a1 : f32[batch,seq,8] = attention(%q1, %k1, %v1, %mask, num_heads=2, head_dim=4, layer=1)
        %o1 : f32[batch,seq,8] = linear(%a1, @l1.o.weight, @l1.o.bias)
        %r1 : f32[batch,seq,8] = aten.add.Tensor(%o1, %x)
        %h1 : f32[batch,seq,8] = layer_norm(%r1, @l1.ln1.weight, @l1.ln1.bias, normalized_shape=[8], eps=1e-12)
        %u1 : f32[batch,seq,16] = linear(%h1, @l1.up.weight, @l1.up.bias, layer=1)
        %g1 : f32[batch,seq,16] = gelu(%u1)
        %d1 : f32[batch,seq,8] = linear(%g1, @l1.down.weight, @l1.down.bias)
        %s1 : f32[batch,seq,8] = aten.add.Tensor(%d1, %h1)
        %y1 : f32[batch,seq,8] = layer_norm(%s1, @l1.ln2.weight, @l1.ln2.bias, normalized_shape=[8], eps=1e-12)
        return (hidden=%y1)
      }
    }
    """


def test_drop_layers_removes_a_post_ln_layer_with_its_norms_and_weights():
    module, result = run_pass(BERT2, DropLayers(layers=(0,)))
    assert_text(module, BERT2_WITHOUT_LAYER_0)
    # 12 nodes; 4 projections of 8x8 + 4 biases of 8, 4 norm vectors of 8, FFN 16x8+16 and 8x16+8
    assert result.stats == {"layers": "0", "layer_ids": "0", "blocks_removed": 2,
                            "nodes_removed": 12, "params_removed": 600}
    # positions shift, stable ids do not: the layer left is position 0, id 1
    assert DropLayers(layers=(1,)).requires(module) == \
        "layer 1 does not exist; the model has layers 0..0"
    assert DropLayers(layers=(1,), ids=True).requires(module) is None


def test_dropping_the_top_layer_keeps_the_function_of_the_layers_below():
    weights = random_weights(BERT2)
    module, _ = run_pass(BERT2, DropLayers(strategy="top", count=1), weights)
    # the model without layer 1 is the original read at layer 0's output
    original = parse_module(BERT2, weights=weights)
    original.graph.set_output("hidden", next(n for n in original.graph if n.outputs and
                                             n.outputs[0].name == "y0").outputs[0])
    assert_same_outputs(eager_outputs(original, bert_inputs()), eager_outputs(module, bert_inputs()))


def test_drop_layers_ffn_block_takes_its_residual_add_and_post_norm():
    module, result = run_pass(BERT2, DropLayers(strategy="top", count=1, blocks="ffn"))
    expected = edited(BERT2, {
        "param @l1.up.weight : f32[16,8]": None,
        "param @l1.up.bias : f32[16]": None,
        "param @l1.down.weight : f32[8,16]": None,
        "param @l1.down.bias : f32[8]": None,
        "param @l1.ln2.weight : f32[8]": None,
        "param @l1.ln2.bias : f32[8]": None,
        "%u1 : f32[batch,seq,16] = linear(%h1, @l1.up.weight, @l1.up.bias, layer=1)": None,
        "%g1 : f32[batch,seq,16] = gelu(%u1)": None,
        "%d1 : f32[batch,seq,8] = linear(%g1, @l1.down.weight, @l1.down.bias)": None,
        "%s1 : f32[batch,seq,8] = aten.add.Tensor(%d1, %h1)": None,
        "%y1 : f32[batch,seq,8] = layer_norm(%s1, @l1.ln2.weight, @l1.ln2.bias, "
        "normalized_shape=[8], eps=1e-12)": None,
        "return (hidden=%y1)": "return (hidden=%h1)",
    })
    assert_text(module, expected)
    assert result.stats == {"layers": "1", "layer_ids": "1", "blocks_removed": 1,
                            "nodes_removed": 5, "params_removed": 128 + 16 + 128 + 8 + 8 + 8}


def test_drop_layers_attention_block_only_rewires_the_ffn_to_the_stream():
    module, result = run_pass(LAYER, DropLayers(layers=(0,), blocks="attention"))
    expected = """\
        module @layer {
          dim batch = [1, inf]
          dim seq = [1, 32]
          param @up.weight : f32[16,8]
          param @up.bias : f32[16]
          param @down.weight : f32[8,16]
          param @down.bias : f32[8]
          param @ln2.weight : f32[8]
          param @ln2.bias : f32[8]
          graph(%x : f32[batch,seq,8], %mask : bool[batch,1,1,seq]) {
            %u : f32[batch,seq,16] = linear(%x, @up.weight, @up.bias, layer=0)
            %g : f32[batch,seq,16] = gelu(%u)
            %d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)
            %s : f32[batch,seq,8] = aten.add.Tensor(%d, %x)
            %y : f32[batch,seq,8] = layer_norm(%s, @ln2.weight, @ln2.bias, normalized_shape=[8], eps=1e-12)
            return (hidden=%y)
          }
        }
        """
    assert_text(module, expected)
    assert result.stats["blocks_removed"] == 1 and result.stats["nodes_removed"] == 7


def test_drop_layers_pre_norm_layer_leaves_the_final_norm_on_the_input():
    module, result = run_pass(LLAMA, DropLayers(layers=(0,)))
    expected = """\
        module @llama {
          dim batch = [1, inf]
          dim seq = [1, 32]
          param @norm.weight : f32[8]
          graph(%x : f32[batch,seq,8], %cos : f32[1,seq,2], %sin : f32[1,seq,2]) {
            %y : f32[batch,seq,8] = rms_norm(%x, @norm.weight, eps=1e-06)
            return (hidden=%y)
          }
        }
        """
    assert_text(module, expected)
    assert result.stats["blocks_removed"] == 2 and result.stats["nodes_removed"] == 16


# -- prune-heads -------------------------------------------------------------------------------
def test_prune_heads_slices_qkv_rows_and_output_columns_and_records_head_ids():
    weights = random_weights(LAYER)
    module, result = run_pass(LAYER, PruneHeads(heads=((0, 0),)), weights)
    expected = edited(LAYER, {
        "param @q.weight : f32[8,8]": "param @q.weight : f32[4,8]",
        "param @q.bias : f32[8]": "param @q.bias : f32[4]",
        "param @k.weight : f32[8,8]": "param @k.weight : f32[4,8]",
        "param @k.bias : f32[8]": "param @k.bias : f32[4]",
        "param @v.weight : f32[8,8]": "param @v.weight : f32[4,8]",
        "param @v.bias : f32[8]": "param @v.bias : f32[4]",
        "param @o.weight : f32[8,8]": "param @o.weight : f32[8,4]",
        "%q : f32[batch,seq,8] = linear(%x, @q.weight, @q.bias)":
            "%q : f32[batch,seq,4] = linear(%x, @q.weight, @q.bias)",
        "%k : f32[batch,seq,8] = linear(%x, @k.weight, @k.bias)":
            "%k : f32[batch,seq,4] = linear(%x, @k.weight, @k.bias)",
        "%v : f32[batch,seq,8] = linear(%x, @v.weight, @v.bias)":
            "%v : f32[batch,seq,4] = linear(%x, @v.weight, @v.bias)",
        "%a : f32[batch,seq,8] = attention(%q, %k, %v, %mask, num_heads=2, head_dim=4, layer=0)":
            '%a : f32[batch,seq,4] = attention(%q, %k, %v, %mask, num_heads=1, head_dim=4, '
            'layer=0, head_ids="1")',
    })
    assert_text(module, expected)
    for name in ("q", "k", "v"):  # head 1's rows are what is left
        assert torch.equal(module.params[f"{name}.weight"].data, weights[f"{name}.weight"][4:])
        assert torch.equal(module.params[f"{name}.bias"].data, weights[f"{name}.bias"][4:])
    assert torch.equal(module.params["o.weight"].data, weights["o.weight"][:, 4:])
    assert torch.equal(module.params["o.bias"].data, weights["o.bias"])
    assert result.stats == {"heads_removed": 1, "heads_per_layer": "1", "layer_ids": "0",
                            "attention_blocks_removed": "-", "params_removed": 3 * 36 + 32,
                            "nodes_removed": 0}


def test_prune_heads_removing_a_head_whose_output_weights_are_zero_keeps_the_outputs():
    weights = random_weights(LAYER, seed=3)
    weights["o.weight"][:, :4] = 0.0  # head 0 contributes nothing
    check_unchanged_function(LAYER, PruneHeads(heads=((0, 0),)), weights, bert_inputs())


def test_prune_heads_removing_every_head_leaves_the_output_bias_on_the_residual():
    weights = random_weights(LAYER, seed=4)
    module, result = run_pass(LAYER, PruneHeads(heads=((0, 0), (0, 1))), weights)
    expected = edited(LAYER, {
        **{f"param @{p}.{w} : f32[{'8,8' if w == 'weight' else '8'}]": None
           for p in "qkv" for w in ("weight", "bias")},
        "param @o.weight : f32[8,8]": None,
        "%q : f32[batch,seq,8] = linear(%x, @q.weight, @q.bias)": None,
        "%k : f32[batch,seq,8] = linear(%x, @k.weight, @k.bias)": None,
        "%v : f32[batch,seq,8] = linear(%x, @v.weight, @v.bias)": None,
        "%a : f32[batch,seq,8] = attention(%q, %k, %v, %mask, num_heads=2, head_dim=4, layer=0)": None,
        "%o : f32[batch,seq,8] = linear(%a, @o.weight, @o.bias)": None,
        "%r : f32[batch,seq,8] = aten.add.Tensor(%o, %x)": "%r : f32[batch,seq,8] = aten.add.Tensor(@o.bias, %x)",
    })
    assert_text(module, expected)
    assert result.stats == {"heads_removed": 2, "heads_per_layer": "0", "layer_ids": "0",
                            "attention_blocks_removed": "0", "params_removed": 3 * 72 + 64,
                            "nodes_removed": 5}
    weights["o.weight"].zero_()  # then the attention block outputs exactly its bias
    check_unchanged_function(LAYER, PruneHeads(heads=((0, 0), (0, 1))), weights, bert_inputs())


HEAD_BIAS_WITHOUT_HEAD_1 = """\
    module @biased {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @q.weight : f32[4,8]
      param @k.weight : f32[4,8]
      param @v.weight : f32[4,8]
      param @o.weight : f32[8,4]
      graph(%x : f32[batch,seq,8], %bias : f32[batch,3,seq,seq]) {
        %q : f32[batch,seq,4] = linear(%x, @q.weight)
        %k : f32[batch,seq,4] = linear(%x, @k.weight)
        %v : f32[batch,seq,4] = linear(%x, @v.weight)
        %head_mask : f32[batch,1,seq,seq] = aten.slice.Tensor(%bias, 1, 0, 1)
        %head_mask_0 : f32[batch,1,seq,seq] = aten.slice.Tensor(%bias, 1, 2, 3)
        %head_mask_1 : f32[batch,2,seq,seq] = aten.cat.default([%head_mask, %head_mask_0], 1)
        %a : f32[batch,seq,4] = attention(%q, %k, %v, %head_mask_1, num_heads=2, head_dim=2, layer=0, head_ids="0,2")
        %o : f32[batch,seq,8] = linear(%a, @o.weight)
        %r : f32[batch,seq,8] = aten.add.Tensor(%o, %x)
        return (hidden=%r)
      }
    }
    """


def test_prune_heads_slices_a_per_head_mask_to_the_heads_that_remain():
    weights = random_weights(HEAD_BIAS, seed=5)
    module, _ = run_pass(HEAD_BIAS, PruneHeads(heads=((0, 1),)), weights)
    assert_text(module, HEAD_BIAS_WITHOUT_HEAD_1)
    weights["o.weight"][:, 2:4] = 0.0
    gen = torch.Generator().manual_seed(6)
    inputs = {"x": torch.randn(2, 5, 8, generator=gen),
              "bias": torch.randn(2, 3, 5, 5, generator=gen) * 3}  # a different plane per head
    check_unchanged_function(HEAD_BIAS, PruneHeads(heads=((0, 1),)), weights, inputs)


def test_prune_heads_gqa_query_head_keeps_its_shared_kv_head_and_records_uneven_groups():
    weights = random_weights(LLAMA, seed=7)
    module, result = run_pass(LLAMA, PruneHeads(heads=((0, 1),)), weights)
    expected = edited(LLAMA, {
        "param @q.weight : f32[8,8]": "param @q.weight : f32[6,8]",
        "param @o.weight : f32[8,8]": "param @o.weight : f32[8,6]",
        "%q : f32[batch,seq,8] = linear(%n, @q.weight)": "%q : f32[batch,seq,6] = linear(%n, @q.weight)",
        "%qr : f32[batch,seq,8] = rotary(%q, %cos, %sin, head_dim=2)":
            "%qr : f32[batch,seq,6] = rotary(%q, %cos, %sin, head_dim=2)",
        "%a : f32[batch,seq,8] = attention(%qr, %kr, %v, none, num_heads=4, head_dim=2, causal=true, "
        "num_kv_heads=2, layer=0)":
            '%a : f32[batch,seq,6] = attention(%qr, %kr, %v, none, num_heads=3, head_dim=2, '
            'causal=true, num_kv_heads=2, layer=0, kv_heads=[0, 1, 1], head_ids="0,2-3")',
    })
    assert_text(module, expected)
    rows = [0, 1, 4, 5, 6, 7]
    assert torch.equal(module.params["q.weight"].data, weights["q.weight"][rows])
    assert torch.equal(module.params["o.weight"].data, weights["o.weight"][:, rows])
    for name in ("k.weight", "v.weight"):
        assert torch.equal(module.params[name].data, weights[name])
    assert result.stats["heads_per_layer"] == "3" and result.stats["params_removed"] == 32
    weights["o.weight"][:, 2:4] = 0.0
    check_unchanged_function(LLAMA, PruneHeads(heads=((0, 1),)), weights, llama_inputs())


def test_prune_heads_gqa_kv_group_removes_the_kv_head_with_its_query_heads():
    weights = random_weights(LLAMA, seed=8)
    module, result = run_pass(LLAMA, PruneHeads(kv_groups=((0, 0),)), weights)
    expected = edited(LLAMA, {
        "param @q.weight : f32[8,8]": "param @q.weight : f32[4,8]",
        "param @k.weight : f32[4,8]": "param @k.weight : f32[2,8]",
        "param @v.weight : f32[4,8]": "param @v.weight : f32[2,8]",
        "param @o.weight : f32[8,8]": "param @o.weight : f32[8,4]",
        "%q : f32[batch,seq,8] = linear(%n, @q.weight)": "%q : f32[batch,seq,4] = linear(%n, @q.weight)",
        "%k : f32[batch,seq,4] = linear(%n, @k.weight)": "%k : f32[batch,seq,2] = linear(%n, @k.weight)",
        "%v : f32[batch,seq,4] = linear(%n, @v.weight)": "%v : f32[batch,seq,2] = linear(%n, @v.weight)",
        "%qr : f32[batch,seq,8] = rotary(%q, %cos, %sin, head_dim=2)":
            "%qr : f32[batch,seq,4] = rotary(%q, %cos, %sin, head_dim=2)",
        "%kr : f32[batch,seq,4] = rotary(%k, %cos, %sin, head_dim=2)":
            "%kr : f32[batch,seq,2] = rotary(%k, %cos, %sin, head_dim=2)",
        "%a : f32[batch,seq,8] = attention(%qr, %kr, %v, none, num_heads=4, head_dim=2, causal=true, "
        "num_kv_heads=2, layer=0)":
            '%a : f32[batch,seq,4] = attention(%qr, %kr, %v, none, num_heads=2, head_dim=2, '
            'causal=true, num_kv_heads=1, layer=0, head_ids="2-3")',
    })
    assert_text(module, expected)
    assert torch.equal(module.params["q.weight"].data, weights["q.weight"][4:])
    assert torch.equal(module.params["k.weight"].data, weights["k.weight"][2:])
    assert torch.equal(module.params["v.weight"].data, weights["v.weight"][2:])
    assert torch.equal(module.params["o.weight"].data, weights["o.weight"][:, 4:])
    assert result.stats["heads_removed"] == 2 and result.stats["heads_per_layer"] == "2"
    weights["o.weight"][:, :4] = 0.0
    check_unchanged_function(LLAMA, PruneHeads(kv_groups=((0, 0),)), weights, llama_inputs())


# -- prune-neurons -----------------------------------------------------------------------------
def test_prune_neurons_slices_up_rows_and_down_columns_and_records_unit_ids():
    weights = random_weights(LAYER, seed=9)
    module, result = run_pass(LAYER, PruneNeurons(neurons=((0, 3), (0, 5))), weights)
    expected = edited(LAYER, {
        "param @up.weight : f32[16,8]": "param @up.weight : f32[14,8]",
        "param @up.bias : f32[16]": "param @up.bias : f32[14]",
        "param @down.weight : f32[8,16]": "param @down.weight : f32[8,14]",
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            '%u : f32[batch,seq,14] = linear(%h, @up.weight, @up.bias, layer=0, unit_ids="0-2,4,6-15")',
        "%g : f32[batch,seq,16] = gelu(%u)": "%g : f32[batch,seq,14] = gelu(%u)",
    })
    assert_text(module, expected)
    keep = [i for i in range(16) if i not in (3, 5)]
    assert torch.equal(module.params["up.weight"].data, weights["up.weight"][keep])
    assert torch.equal(module.params["up.bias"].data, weights["up.bias"][keep])
    assert torch.equal(module.params["down.weight"].data, weights["down.weight"][:, keep])
    assert result.stats == {"neurons_removed": 2, "ffn_per_layer": "14", "layer_ids": "0",
                            "ffn_blocks_removed": "-", "params_removed": 34, "nodes_removed": 0}
    weights["down.weight"][:, [3, 5]] = 0.0
    check_unchanged_function(LAYER, PruneNeurons(neurons=((0, 3), (0, 5))), weights, bert_inputs())


def test_prune_neurons_gated_ffn_slices_gate_and_up_rows_together():
    weights = random_weights(LLAMA, seed=10)
    module, result = run_pass(LLAMA, PruneNeurons(neurons=((0, 2), (0, 7))), weights)
    expected = edited(LLAMA, {
        "param @gate.weight : f32[12,8]": "param @gate.weight : f32[10,8]",
        "param @up.weight : f32[12,8]": "param @up.weight : f32[10,8]",
        "param @down.weight : f32[8,12]": "param @down.weight : f32[8,10]",
        "%gt : f32[batch,seq,12] = linear(%m, @gate.weight, layer=0)":
            '%gt : f32[batch,seq,10] = linear(%m, @gate.weight, layer=0, unit_ids="0-1,3-6,8-11")',
        "%act : f32[batch,seq,12] = silu(%gt)": "%act : f32[batch,seq,10] = silu(%gt)",
        "%up : f32[batch,seq,12] = linear(%m, @up.weight)": "%up : f32[batch,seq,10] = linear(%m, @up.weight)",
        "%p : f32[batch,seq,12] = aten.mul.Tensor(%act, %up)": "%p : f32[batch,seq,10] = aten.mul.Tensor(%act, %up)",
    })
    assert_text(module, expected)
    keep = [i for i in range(12) if i not in (2, 7)]
    assert torch.equal(module.params["gate.weight"].data, weights["gate.weight"][keep])
    assert torch.equal(module.params["up.weight"].data, weights["up.weight"][keep])
    assert torch.equal(module.params["down.weight"].data, weights["down.weight"][:, keep])
    assert result.stats["ffn_per_layer"] == "10" and result.stats["params_removed"] == 48
    weights["down.weight"][:, [2, 7]] = 0.0
    check_unchanged_function(LLAMA, PruneNeurons(neurons=((0, 2), (0, 7))), weights, llama_inputs())


def test_prune_neurons_removing_every_neuron_leaves_the_down_bias_on_the_residual():
    every = tuple((0, i) for i in range(16))
    weights = random_weights(LAYER, seed=11)
    module, result = run_pass(LAYER, PruneNeurons(neurons=every), weights)
    expected = edited(LAYER, {
        "param @up.weight : f32[16,8]": None,
        "param @up.bias : f32[16]": None,
        "param @down.weight : f32[8,16]": None,
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)": None,
        "%g : f32[batch,seq,16] = gelu(%u)": None,
        "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)": None,
        "%s : f32[batch,seq,8] = aten.add.Tensor(%d, %h)": "%s : f32[batch,seq,8] = aten.add.Tensor(@down.bias, %h)",
    })
    assert_text(module, expected)
    assert result.stats == {"neurons_removed": 16, "ffn_per_layer": "0", "layer_ids": "0",
                            "ffn_blocks_removed": "0", "params_removed": 272, "nodes_removed": 3}
    weights["down.weight"].zero_()
    check_unchanged_function(LAYER, PruneNeurons(neurons=every), weights, bert_inputs())


# -- hard-attention ----------------------------------------------------------------------------
A0 = "%a0 : f32[batch,seq,8] = attention(%q0, %k0, %v0, %mask, num_heads=2, head_dim=4, layer=0)"
A1 = "%a1 : f32[batch,seq,8] = attention(%q1, %k1, %v1, %mask, num_heads=2, head_dim=4, layer=1)"


def test_hard_attention_sets_kind_and_topk_on_the_chosen_layer_only():
    module, result = run_pass(BERT2, HardAttention(k=2, layers=(1,)))
    expected = edited(BERT2, {A1: A1[:-1] + ', kind="topk", topk=2)'})
    assert_text(module, expected)
    assert result.modified and result.stats == {"layers": "1", "layer_ids": "1", "k": 2}
    again = HardAttention(k=2, layers=(1,)).run(module)
    assert not again.modified and again.stats["layers"] == "-"
    assert_text(module, expected)


def test_hard_attention_rewrites_and_removes_its_optional_attributes():
    module, _ = run_pass(BERT2, HardAttention(k=2, layers=(1,)))
    result = HardAttention(fraction=0.5, renormalize=True).run(module)
    soft = ', kind="topk", topk=30, renormalize=true, topk_fraction=0.5)'
    assert_text(module, edited(BERT2, {A0: A0[:-1] + soft, A1: A1[:-1] + soft}))
    assert result.stats == {"layers": "0,1", "layer_ids": "0,1", "k": "0.5 x seq"}
    result = HardAttention(k=3).run(module)
    hard = ', kind="topk", topk=3)'
    assert_text(module, edited(BERT2, {A0: A0[:-1] + hard, A1: A1[:-1] + hard}))
    assert result.stats == {"layers": "0,1", "layer_ids": "0,1", "k": 3}


def test_hard_attention_is_soft_attention_when_k_covers_every_key():
    weights = random_weights(LAYER, seed=12)
    inputs = bert_inputs(seq=5)
    soft = eager_outputs(parse_module(LAYER, weights=weights), inputs)
    covering, _ = run_pass(LAYER, HardAttention(k=5), weights)
    assert_same_outputs(soft, eager_outputs(covering, inputs))
    one, _ = run_pass(LAYER, HardAttention(k=1), weights)
    assert (eager_outputs(one, inputs)["hidden"] - soft["hidden"]).abs().max() > 1e-3
    assert print_module(one) != print_module(covering)


def test_prune_heads_gqa_second_prune_empties_a_kv_head_and_drops_kv_heads_again():
    """After heads=0:1 the groups are uneven (kv_heads=[0, 1, 1]); removing position 0 (id 0)
    leaves kv head 0 without a query head: its k/v rows go, and the two heads left (ids 2, 3)
    share kv head 1 as one regular group, so kv_heads is dropped."""
    weights = random_weights(LLAMA, seed=13)
    module, _ = run_pass(LLAMA, PruneHeads(heads=((0, 1),)), weights)
    second = PruneHeads(heads=((0, 0),))
    assert second.requires(module) is None
    second.run(module)
    module_direct, _ = run_pass(LLAMA, PruneHeads(kv_groups=((0, 0),)), weights)
    assert print_module(module) == print_module(module_direct)  # the same as the kv group at once
    for name in ("q.weight", "k.weight", "v.weight", "o.weight"):
        assert torch.equal(module.params[name].data, module_direct.params[name].data)


def test_prune_heads_by_magnitude_per_layer_removes_each_layers_weakest_head():
    weights = random_weights(BERT2, seed=14)
    for layer, rows in (("l0", slice(0, 4)), ("l1", slice(4, 8))):  # l0 head 0, l1 head 1
        for p in "qkv":
            weights[f"{layer}.{p}.weight"][rows] *= 0.01
        weights[f"{layer}.o.weight"][:, rows] *= 0.01
    module, result = run_pass(BERT2, PruneHeads(amount=0.5, per_layer=True), weights)
    a0 = '%a0 : f32[batch,seq,4] = attention(%q0, %k0, %v0, %mask, num_heads=1, head_dim=4, layer=0, head_ids="1")'
    a1 = "%a1 : f32[batch,seq,4] = attention(%q1, %k1, %v1, %mask, num_heads=1, head_dim=4, layer=1)"
    lines = print_module(module).splitlines()
    assert [line.strip() for line in lines if "attention(" in line] == [a0, a1]
    assert result.stats["heads_per_layer"] == "1,1" and result.stats["heads_removed"] == 2
    assert torch.equal(module.params["l0.q.weight"].data, weights["l0.q.weight"][4:])
    assert torch.equal(module.params["l1.q.weight"].data, weights["l1.q.weight"][:4])
