"""Weight-compression passes as Before -> pass -> Expected text IR: sparsify (the ``sparsity``
attribute each pattern prints, and the zeros it writes), its interplay with prune-neurons, and
quantize in dynamic mode (int8 weights, scale operands, per-token scales, int8 attention).

The modules are the hand-written ones of text_ir_cases.py; weights are built so that which
entries a pass keeps is known without running it.
"""

from __future__ import annotations

import torch

from optc.ir import parse_module, print_module
from optc.passes.prune_neurons import PruneNeurons
from optc.passes.quantize import Quantize
from optc.passes.sparsify import Sparsify
from optc.tests.passes.text_ir_cases import (
    LAYER,
    assert_text,
    eager_outputs,
    edited,
    random_weights,
    run_pass,
)

UP = "param @up.weight : f32[16,8]"
UNSTRUCTURED_HALF = 'sparsity=sparsity(pattern="unstructured", density=0.5)'
INT8_7 = 'quantization=quantization(scheme="symmetric", bits=7, axis=0)'


def bert_inputs(seq: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 1, 1, seq, dtype=torch.bool)
    mask[1, ..., seq - 2:] = False
    return {"x": torch.randn(2, seq, 8, generator=gen), "mask": mask}


def ramp_up_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights, but ``up.weight`` holds +-k/128 for k = 1..128 in row-major order: its
    64 smallest magnitudes are rows 0..7."""
    weights = random_weights(LAYER, seed)
    signs = torch.tensor([1.0, -1.0]).repeat(64)
    weights["up.weight"] = (torch.arange(1, 129, dtype=torch.float32) / 128 * signs).reshape(16, 8)
    return weights


# -- sparsify ----------------------------------------------------------------------------------
def test_sparsify_unstructured_zeros_the_smallest_half_and_prints_its_density():
    weights = ramp_up_weights()
    module, result = run_pass(LAYER, Sparsify(sparsity=0.5, targets=("up",)), weights)
    assert_text(module, edited(LAYER, {UP: f"{UP} {{{UNSTRUCTURED_HALF}}}"}))
    w = weights["up.weight"]
    assert torch.equal(module.params["up.weight"].data, torch.where(w.abs() > 0.5, w, 0.0))
    for name in ("q.weight", "down.weight"):  # not a target: the same tensor
        assert module.params[name].data is weights[name]
    assert result.modified and result.stats == {"weights": 1, "changed": 1, "sparsity": 0.5,
                                                "by_role": "up=0.500"}
    again = Sparsify(sparsity=0.5, targets=("up",)).run(module)
    assert not again.modified
    assert_text(module, edited(LAYER, {UP: f"{UP} {{{UNSTRUCTURED_HALF}}}"}))


def test_pruning_a_sparse_weight_updates_its_declared_density():
    """Removing neuron 0, whose up row was all zeros, leaves 64 nonzeros in 120 entries: the
    declared density rises to 64/120 rounded up to 6 places (slice_param's attribute rule)."""
    module, _ = run_pass(LAYER, Sparsify(sparsity=0.5, targets=("up",)), ramp_up_weights())
    assert PruneNeurons(neurons=((0, 0),)).requires(module) is None
    PruneNeurons(neurons=((0, 0),)).run(module)
    assert_text(module, edited(LAYER, {
        UP: 'param @up.weight : f32[15,8] {sparsity=sparsity(pattern="unstructured", density=0.533334)}',
        "param @up.bias : f32[16]": "param @up.bias : f32[15]",
        "param @down.weight : f32[8,16]": "param @down.weight : f32[8,15]",
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            '%u : f32[batch,seq,15] = linear(%h, @up.weight, @up.bias, layer=0, unit_ids="1-15")',
        "%g : f32[batch,seq,16] = gelu(%u)": "%g : f32[batch,seq,15] = gelu(%u)",
    }))
    assert int((module.params["up.weight"].data != 0).sum()) == 64


def test_sparsify_two_of_four_keeps_the_two_largest_of_each_group_of_inputs():
    weights = random_weights(LAYER, seed=2)
    module, result = run_pass(LAYER, Sparsify(pattern="2:4", targets=("query",)), weights)
    line = "param @q.weight : f32[8,8]"
    assert_text(module, edited(LAYER, {
        line: f'{line} {{sparsity=sparsity(pattern="n:m", density=0.5, n=2, m=4)}}'}))
    w = weights["q.weight"]
    want = torch.zeros_like(w)
    for row in range(8):
        for start in (0, 4):
            group = w[row, start:start + 4].tolist()
            for i in sorted(range(4), key=lambda i: -abs(group[i]))[:2]:
                want[row, start + i] = group[i]
    assert torch.equal(module.params["q.weight"].data, want)
    assert result.stats["by_role"] == "query=0.500"


def test_sparsify_blocks_zero_whole_tiles_with_the_smallest_norms():
    gen = torch.Generator().manual_seed(3)
    weights = random_weights(LAYER, seed=3)
    tile_size = (torch.randperm(16, generator=gen) + 1).float().reshape(4, 4)  # 4x4 tiles of 2x4
    signs = torch.where(torch.rand(8, 16, generator=gen) < 0.5, -1.0, 1.0)
    weights["down.weight"] = tile_size.repeat_interleave(2, 0).repeat_interleave(4, 1) * signs
    module, _ = run_pass(LAYER, Sparsify(sparsity=0.5, pattern="block", block="2x4",
                                         targets=("down",)), weights)
    line = "param @down.weight : f32[8,16]"
    assert_text(module, edited(LAYER, {
        line: f'{line} {{sparsity=sparsity(pattern="block", density=0.5, block=(2, 4))}}'}))
    kept = (tile_size > 8).repeat_interleave(2, 0).repeat_interleave(4, 1)
    w = weights["down.weight"]
    assert torch.equal(module.params["down.weight"].data, torch.where(kept, w, 0.0))


def test_sparsify_default_targets_are_the_six_projections_of_the_layer():
    module, result = run_pass(LAYER, Sparsify(sparsity=0.25), random_weights(LAYER, seed=4))
    attr = '{sparsity=sparsity(pattern="unstructured", density=0.75)}'
    lines = ["param @q.weight : f32[8,8]", "param @k.weight : f32[8,8]", "param @v.weight : f32[8,8]",
             "param @o.weight : f32[8,8]", UP, "param @down.weight : f32[8,16]"]
    assert_text(module, edited(LAYER, {line: f"{line} {attr}" for line in lines}))
    assert result.stats == {
        "weights": 6, "changed": 6, "sparsity": 0.25,
        "by_role": "query=0.250,key=0.250,value=0.250,output=0.250,up=0.250,down=0.250"}


# -- quantize (dynamic) ------------------------------------------------------------------------
def check_int8_rows(q: torch.Tensor, scale: torch.Tensor, w: torch.Tensor, qmax: int) -> None:
    """Symmetric per-row int8: each row's largest magnitude maps to ``qmax``, every entry is
    within half a step of the float weight."""
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    assert torch.equal(q.to(torch.int32).abs().amax(1), torch.full((w.shape[0],), qmax, dtype=torch.int32))
    assert ((scale[:, None] * q.float() - w).abs() <= scale[:, None] / 2 + 1e-7).all()


def test_quantize_dynamic_makes_int8_weights_with_scale_operands():
    weights = random_weights(LAYER, seed=5)
    module, result = run_pass(LAYER, Quantize(targets=("up", "down")), weights)
    assert_text(module, edited(LAYER, {
        UP: f"param @up.weight : i8[16,8] {{{INT8_7}}}",
        "param @down.weight : f32[8,16]": f"param @down.weight : i8[8,16] {{{INT8_7}}}",
        "param @ln2.bias : f32[8]": "param @ln2.bias : f32[8]\n"
                                    "  param @up.weight_scale : f32[16]\n"
                                    "  param @down.weight_scale : f32[8]",
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, @up.weight_scale, layer=0)",
        "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)":
            "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias, @down.weight_scale)",
    }))
    for name in ("up", "down"):
        check_int8_rows(module.params[f"{name}.weight"].data,
                        module.params[f"{name}.weight_scale"].data, weights[f"{name}.weight"], 63)
    # f32 up and down (2 x 128 x 4 bytes) -> int8 (2 x 128) and scales ((16 + 8) x 4)
    assert result.stats == {"linears": 2, "by_role": "up=1,down=1", "weight_bytes": "1024->352"}
    want = eager_outputs(parse_module(LAYER, weights=weights), bert_inputs())["hidden"]
    got = eager_outputs(module, bert_inputs())["hidden"]
    assert 0 < (got - want).abs().max() < 0.05  # int8 rounding, nothing more


def test_quantize_8_bits_per_token_scales_and_int8_attention_matmuls():
    weights = random_weights(LAYER, seed=6)
    module, result = run_pass(LAYER, Quantize(targets=("up", "down", "matmuls"), bits=8,
                                              token_scales=("down",)), weights)
    int8 = 'quantization=quantization(scheme="symmetric", axis=0)'  # bits=8 is the default
    assert_text(module, edited(LAYER, {
        UP: f"param @up.weight : i8[16,8] {{{int8}}}",
        "param @down.weight : f32[8,16]": f"param @down.weight : i8[8,16] {{{int8}}}",
        "param @ln2.bias : f32[8]": "param @ln2.bias : f32[8]\n"
                                    "  param @up.weight_scale : f32[16]\n"
                                    "  param @down.weight_scale : f32[8]",
        "%a : f32[batch,seq,8] = attention(%q, %k, %v, %mask, num_heads=2, head_dim=4, layer=0)":
            '%a : f32[batch,seq,8] = attention(%q, %k, %v, %mask, num_heads=2, head_dim=4, '
            'layer=0, int8="dynamic")',
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, @up.weight_scale, layer=0)",
        "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)":
            '%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias, @down.weight_scale, '
            'act_scales="token")',
    }))
    check_int8_rows(module.params["up.weight"].data, module.params["up.weight_scale"].data,
                    weights["up.weight"], 127)
    assert result.stats["per_token"] == 1 and result.stats["attention_matmuls"] == 1
    want = eager_outputs(parse_module(LAYER, weights=weights), bert_inputs())["hidden"]
    got = eager_outputs(module, bert_inputs())["hidden"]
    assert 0 < (got - want).abs().max() < 0.1


def test_quantize_keeps_the_sparsity_attribute_of_a_sparse_weight():
    module, _ = run_pass(LAYER, Sparsify(sparsity=0.5, targets=("up",)), ramp_up_weights())
    assert Quantize(targets=("up",)).requires(module) is None
    Quantize(targets=("up",)).run(module)
    assert_text(module, edited(LAYER, {
        UP: f"param @up.weight : i8[16,8] {{{UNSTRUCTURED_HALF}, {INT8_7}}}",
        "param @ln2.bias : f32[8]": "param @ln2.bias : f32[8]\n  param @up.weight_scale : f32[16]",
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, @up.weight_scale, layer=0)",
    }))
    q = module.params["up.weight"].data
    assert torch.equal(q[:8], torch.zeros(8, 8, dtype=torch.int8))  # the zeros stay zero
    assert int((q != 0).sum()) == 64


# -- structural passes after compression -------------------------------------------------------
def test_pruning_an_int8_linear_slices_its_per_row_scales_with_its_rows():
    module, _ = run_pass(LAYER, Quantize(targets=("up", "down")), random_weights(LAYER, seed=7))
    before = {name: p.data for name, p in module.params.items()}
    prune = PruneNeurons(neurons=((0, 3), (0, 5)))
    assert prune.requires(module) is None
    prune.run(module)
    assert_text(module, edited(LAYER, {
        UP: f"param @up.weight : i8[14,8] {{{INT8_7}}}",
        "param @up.bias : f32[16]": "param @up.bias : f32[14]",
        "param @down.weight : f32[8,16]": f"param @down.weight : i8[8,14] {{{INT8_7}}}",
        "param @ln2.bias : f32[8]": "param @ln2.bias : f32[8]\n"
                                    "  param @up.weight_scale : f32[14]\n"
                                    "  param @down.weight_scale : f32[8]",
        "%u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)":
            '%u : f32[batch,seq,14] = linear(%h, @up.weight, @up.bias, @up.weight_scale, layer=0, '
            'unit_ids="0-2,4,6-15")',
        "%g : f32[batch,seq,16] = gelu(%u)": "%g : f32[batch,seq,14] = gelu(%u)",
        "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)":
            "%d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias, @down.weight_scale)",
    }))
    keep = [i for i in range(16) if i not in (3, 5)]
    assert torch.equal(module.params["up.weight"].data, before["up.weight"][keep])
    assert torch.equal(module.params["up.weight_scale"].data, before["up.weight_scale"][keep])
    assert torch.equal(module.params["down.weight"].data, before["down.weight"][:, keep])
    assert torch.equal(module.params["down.weight_scale"].data, before["down.weight_scale"])


def test_pruning_through_an_n_m_pattern_is_refused_and_along_it_is_allowed():
    weights = random_weights(LAYER, seed=8)
    module, _ = run_pass(LAYER, Sparsify(pattern="2:4", targets=("ffn",)), weights)
    # neurons are up rows (along the groups of inputs: fine) and down columns (through them)
    assert PruneNeurons(neurons=((0, 1),)).requires(module) == (
        "layer 0: @down.weight is n:m sparse; removing heads or neurons slices it along dim 1 "
        "and would break the pattern: run structural passes before sparsify")
    module, _ = run_pass(LAYER, Sparsify(pattern="2:4", targets=("up",)), weights)
    PruneNeurons(neurons=((0, 1),)).run(module)
    nm = 'sparsity=sparsity(pattern="n:m", density=0.5, n=2, m=4)'
    assert f"param @up.weight : f32[15,8] {{{nm}}}\n" in print_module(module)
