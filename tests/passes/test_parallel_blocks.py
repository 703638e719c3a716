"""Parallel attention+FFN layers (Phi-1/2, GPT-NeoX, Falcon, GPT-J): ``x + attn(ln(x)) + ffn(ln(x))``.

Raised from the graph (fused per-head q/k/v split, multi-query attention, partial and
interleaved rotary), each
layer's two blocks found and said to be parallel, numbers equal to Hugging Face on every
backend; prune-heads/prune-neurons remove zeroed units exactly; drop-layers removes both
branches (equal to the HF model with the layer deleted) or one branch of the sum."""

from __future__ import annotations

import copy

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.frontends.raising import raise_high_level_ops
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import assert_outputs_equal, backend_runner, zero_slices
from optc.tests.frontends.llm_cases import (
    PARALLEL_FAMILIES,
    PARALLEL_ONNX_FAMILIES,
    PARALLEL_SHAPES,
    hf_outputs,
    hf_without_layers,
    llm_inputs,
    on_backends,
    parallel_captured,
    parallel_model,
)


def hf_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.layers if hasattr(model, "layers") else model.h


def branches(model: torch.nn.Module, layer: int) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """The HF layer's attention output projection and FFN down projection."""
    block = hf_layers(model)[layer]
    attn = next(getattr(block, a) for a in ("self_attn", "attention", "self_attention", "attn")
                if hasattr(block, a))
    down = next(getattr(block.mlp, a) for a in ("fc2", "dense_4h_to_h", "fc_out") if hasattr(block.mlp, a))
    return getattr(attn, "dense", None) or attn.out_proj, down


@pytest.mark.parametrize("family", PARALLEL_FAMILIES)
def test_every_parallel_layer_is_raised(family: str) -> None:
    model, module = parallel_captured(family)
    heads, kv, dim = PARALLEL_SHAPES[family]
    report = raise_high_level_ops(optc.capture(model, raise_ops=False))
    assert not [m for m in report.misses if "attention" in m], report.misses
    assert report.raised["attention"] == 2 and report.raised["parallel"] == 2
    assert report.raised["rotary"] == 4
    layers = analyze(module).layers
    assert [layer.id for layer in layers] == [0, 1]
    for layer in layers:
        att, ffn = layer.attention, layer.ffn
        assert layer.parallel and ffn.parallel and not att.parallel
        assert (att.num_heads, att.num_kv_heads, att.head_dim) == (heads, kv, dim)
        assert att.prunable is None and all(att.rotary) and ffn.width == 64
        # Both branches read the layer's input; the FFN's residual add follows the attention's.
        assert layer.stream_in is att.stream_in and ffn.stream_in is att.stream_out
        assert att.norms[0].args[0] is att.stream_in and ffn.norms[0].args[0] is att.stream_in
        assert layer.stream_out is ffn.residual.outputs[0]
        shared = att.norms[0] is ffn.norms[0]
        assert shared == (family not in ("gpt_neox", "falcon_40b"))  # else one LayerNorm per branch
        assert "parallel attention+FFN" in layer.raised()
    # The last layer's sum feeds the final norm; it is not taken for a post-norm of the FFN.
    assert layers[-1].stream_out.users()[0].op == "layer_norm"
    assert not collect_problems(module)


def test_raised_summary_names_the_parallel_layer() -> None:
    _, module = parallel_captured("phi")
    assert analyze(module).layers[0].raised() == (
        "attention 4 heads (rotary, mask) + FFN 64 (gelu), parallel attention+FFN, "
        "pre-norm layer_norm")
    _, module = parallel_captured("falcon")
    assert analyze(module).layers[1].raised().startswith("attention 4 heads (1 kv, rotary, mask)")


def test_raising_twice_changes_nothing() -> None:
    _, base = parallel_captured("gpt_neox")
    module = base.clone()
    report = raise_high_level_ops(module)
    assert "parallel" not in report.raised and "attention" not in report.raised
    from optc.ir.printer import print_module

    optc.ir.cleanup.eliminate_dead_code(module)
    assert print_module(module) == print_module(base)


ON_BACKENDS = on_backends(PARALLEL_FAMILIES, PARALLEL_ONNX_FAMILIES)


@pytest.mark.parametrize(("family", "backend"), ON_BACKENDS)
def test_matches_hugging_face_on_every_backend(family: str, backend: str) -> None:
    model, module = parallel_captured(family)
    run = backend_runner(module, backend)  # one export, two shapes (dynamic batch and seq)
    for batch, seq in ((3, 7), (2, 5)):
        inputs = llm_inputs(model, batch, seq)
        expected = hf_outputs(model, inputs, module.graph.outputs)
        assert_outputs_equal(run(inputs), expected)


def test_gpt_neox_fused_qkv_is_split_per_head() -> None:
    """query_key_value's rows are grouped per head ([q_h, k_h, v_h] for each head h): the
    split projections gather them."""
    model, module = parallel_captured("gpt_neox")
    att = analyze(module).layers[1].attention
    fused = model.layers[1].attention.query_key_value
    w = fused.weight.detach().view(4, 3, 8, 32)
    b = fused.bias.detach().view(4, 3, 8)
    for part, lin in enumerate((att.query, att.key, att.value)):
        assert torch.equal(lin.args[1].data, w[:, part].reshape(32, 32))
        assert torch.equal(lin.arg(2).data, b[:, part].reshape(32))
    assert att.rotary[0].args[1].tensor_type.shape[-1] == 4  # rotary_pct=0.5 of head_dim 8


def test_gptj_rotary_is_interleaved_on_the_first_features() -> None:
    model, module = parallel_captured("gptj")
    att = analyze(module).layers[0].attention
    for rot in att.rotary:
        assert rot.attr("interleaved") is True and rot.args[1].tensor_type.shape[-1] == 4
    assert att.query.arg(2) is None and att.output.arg(2) is None


def test_falcon_multi_query_qkv_is_split() -> None:
    """Falcon-7B style: the fused rows are [all query heads, one key head, one value head]."""
    model, module = parallel_captured("falcon")
    att = analyze(module).layers[0].attention
    fused = model.h[0].self_attention.query_key_value.weight.detach()
    assert torch.equal(att.query.args[1].data, fused[:32])
    assert torch.equal(att.key.args[1].data, fused[32:40])
    assert torch.equal(att.value.args[1].data, fused[40:48])
    assert att.kv_heads == [0, 0, 0, 0] and att.kv_group(0) == [0, 1, 2, 3]
    assert all(lin.arg(2) is None for lin in (att.query, att.key, att.value, att.output))


@pytest.mark.parametrize(("family", "backend"), ON_BACKENDS)
def test_zeroed_heads_and_neurons_removed_exactly(family: str, backend: str) -> None:
    model, base = parallel_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    layers = analyze(module).layers
    zero_slices(module, layers[0].attention.head_slices(1))
    zero_slices(module, layers[1].attention.head_slices(0))
    zero_slices(module, layers[1].attention.head_slices(3))
    for n in (0, 17, 63):
        zero_slices(module, layers[0].ffn.neuron_slices(n))
    zero_slices(module, layers[1].ffn.neuron_slices(5))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=0:1,1:0,1:3},prune-neurons{neurons=0:0,0:17,0:63,1:5},dce").run(module)
    after = analyze(module).layers
    assert [x.attention.num_heads for x in after] == [3, 2]
    assert after[1].attention.head_ids == [1, 2]
    assert [x.ffn.width for x in after] == [61, 63]
    assert all(x.parallel for x in after)
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("family", PARALLEL_FAMILIES)
@pytest.mark.parametrize("drop", [0, 1])
def test_drop_layer_equals_hf_with_layer_deleted(family: str, drop: int) -> None:
    model, base = parallel_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    report = PassManager(f"drop-layers{{layers={drop}}}").run(module)
    assert report.records[0].stats["blocks_removed"] == 2
    (left,) = analyze(module).layers
    assert left.id == 1 - drop and left.parallel
    assert not [n for n in module.params if f".{drop}." in n]
    expected = hf_outputs(hf_without_layers(model, [drop]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


# test_drop_layer_equals_hf_with_layer_deleted runs every family on eager; the exported
# backends on two families with different attention (per-head fused q/k/v, multi-query)
# keep CI within its budget
EXPORTED = [(f, b) for f in ("gpt_neox", "falcon") for b in ("torchscript", "onnx")]


@pytest.mark.parametrize(("family", "backend"), EXPORTED)
def test_drop_layer_on_the_exported_backends(family: str, backend: str) -> None:
    model, base = parallel_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager("drop-layers{layers=1}").run(module)
    expected = hf_outputs(hf_without_layers(model, [1]), inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


# every family on eager and both exported families on TorchScript drop each branch; ONNX
# drops the attention of one family and the FFN of the other (each kind of graph exported once)
BRANCH_RUNS = [(f, "eager") for f in PARALLEL_FAMILIES] + [(f, "torchscript") for f in ("gpt_neox", "falcon")]
BRANCHES = [(f, blocks, b) for blocks in ("attention", "ffn") for f, b in BRANCH_RUNS] + [
    ("gpt_neox", "attention", "onnx"), ("falcon", "ffn", "onnx")]


@pytest.mark.parametrize(("family", "blocks", "backend"), BRANCHES)
def test_dropping_one_branch_removes_it_from_the_sum(family: str, blocks: str, backend: str) -> None:
    """blocks=attention (or ffn) on a parallel layer: the other branch still reads the layer's
    input, and the result equals the HF model whose dropped branch outputs zeros."""
    model, base = parallel_captured(family)
    inputs = llm_inputs(model)
    module = base.clone()
    PassManager(f"drop-layers{{layers=0,blocks={blocks}}}").run(module)
    layer = analyze(module).layers[0]
    kept = layer.ffn if blocks == "attention" else layer.attention
    assert (layer.attention is None) == (blocks == "attention") and kept is not None
    assert kept.norms[0].args[0] is layer.stream_in  # still reads the layer's input
    reference = copy.deepcopy(model)
    out_proj, down = branches(reference, 0)
    silenced = out_proj if blocks == "attention" else down
    with torch.no_grad():
        for p in silenced.parameters():
            p.zero_()
    expected = hf_outputs(reference, inputs, module.graph.outputs)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


def test_every_head_of_a_bias_free_parallel_attention_leaves_the_ffn() -> None:
    """Falcon's output projection has no bias: removing all heads removes the attention
    branch from the sum (its add passes the layer's input on), the FFN branch stays."""
    model, base = parallel_captured("falcon")
    inputs = llm_inputs(model)
    module = base.clone()
    for kv in range(1):
        zero_slices(module, analyze(module).layers[1].attention.kv_slices(kv))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{heads=1:0,1:1,1:2,1:3},dce").run(module)
    layer = analyze(module).layers[1]
    assert layer.attention is None and layer.ffn is not None
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


def test_causal_lm_keeps_logits_and_prunes() -> None:
    model = parallel_model("phi", causal_lm=True)
    module = optc.capture(model)
    assert list(module.graph.outputs) == ["logits"]
    assert all(x.parallel for x in analyze(module).layers)
    inputs = llm_inputs(model)
    assert_outputs_equal(run_backend(module, "eager", inputs), hf_outputs(model, inputs, ["logits"]))
    PassManager("drop-layers{layers=0}").run(module)
    assert_outputs_equal(run_backend(module, "eager", inputs),
                         hf_outputs(hf_without_layers(model, [0]), inputs, ["logits"]))


@pytest.mark.parametrize(("overrides", "kv", "parallel"), [
    ({"bias": True}, 1, True),  # input @ W.T + b: the bias rows are gathered with the weight's
    ({"multi_query": False}, 4, True),  # [B, S, heads, 3, D] viewed, parts selected
    ({"parallel_attn": False}, 1, False),  # sequential: x + attn(ln(x)), then + mlp(ln2(.))
])
def test_falcon_variants_raise_and_prune_exactly(overrides: dict, kv: int, parallel: bool) -> None:
    model = parallel_model("falcon", **overrides)
    module = optc.capture(model)
    layers = analyze(module).layers
    assert [(x.attention.num_kv_heads, x.parallel) for x in layers] == [(kv, parallel)] * 2
    inputs = llm_inputs(model)
    assert_outputs_equal(run_backend(module, "eager", inputs),
                         hf_outputs(model, inputs, module.graph.outputs))
    pruned = module.clone()
    zero_slices(pruned, analyze(pruned).layers[0].attention.head_slices(2))
    zero_slices(pruned, analyze(pruned).layers[1].ffn.neuron_slices(9))
    expected = run_backend(pruned, "eager", inputs)
    PassManager("prune-heads{heads=0:2},prune-neurons{neurons=1:9},dce").run(pruned)
    assert_outputs_equal(run_backend(pruned, "eager", inputs), expected)
    PassManager("drop-layers{layers=0}").run(module)
    assert_outputs_equal(run_backend(module, "eager", inputs),
                         hf_outputs(hf_without_layers(model, [0]), inputs, module.graph.outputs))


def test_falcon_40b_grouped_qkv_is_split_into_grouped_query_attention() -> None:
    """new_decoder_architecture: the fused rows are grouped per kv head ([the group's query
    heads, its key head, its value head]) and k/v are broadcast to every query head of the
    group; raised as grouped-query attention reading the 2 kv heads (no repeated weights)."""
    model, module = parallel_captured("falcon_40b")
    att = analyze(module).layers[1].attention
    fused = model.h[1].self_attention.query_key_value.weight.detach().view(2, 4, 8, 32)
    assert torch.equal(att.query.args[1].data, fused[:, :2].reshape(32, 32))
    assert torch.equal(att.key.args[1].data, fused[:, 2].reshape(16, 32))
    assert torch.equal(att.value.args[1].data, fused[:, 3].reshape(16, 32))
    assert att.kv_heads == [0, 0, 1, 1] and att.rotary[1].args[0] is att.key.outputs[0]
    repeats = [n for n in module.graph if n.op == "aten.expand.default" and n.outputs[0].tensor_type.rank == 5]
    assert not repeats  # the kv repeats were folded into num_kv_heads and removed


def test_falcon_40b_kv_group_removed_exactly(backend: str) -> None:
    model, base = parallel_captured("falcon_40b")
    inputs = llm_inputs(model)
    module = base.clone()
    zero_slices(module, analyze(module).layers[0].attention.kv_slices(1))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-heads{kv_groups=0:1},dce").run(module)
    att = analyze(module).layers[0].attention
    assert (att.num_heads, att.num_kv_heads, att.head_ids) == (2, 1, [0, 1])
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


@pytest.mark.parametrize("family", PARALLEL_FAMILIES)
def test_pruned_parallel_decoder_generates_with_the_kv_cache(family: str, tmp_path) -> None:
    """A pruned parallel causal LM generates the same tokens with the kv-cache (eager; ONNX
    Runtime for GPT-NeoX) as its pruned IR re-run on the whole sequence at every step."""
    from optc.backends.eager import to_eager
    from optc.backends.generate import greedy_generate
    from optc.backends.onnx import OnnxModule, export_onnx

    module = optc.capture(parallel_model(family, causal_lm=True))
    PassManager("prune-heads{heads=0:1,1:2},prune-neurons{neurons=0:3,1:60},dce").run(module)
    ids = torch.randint(3, 120, (2, 5), generator=torch.Generator().manual_seed(3))
    reference = greedy_generate(to_eager(module), ids, 12)
    cached = module.clone()
    PassManager("kv-cache").run(cached)
    assert torch.equal(greedy_generate(to_eager(cached), ids, 12), reference)
    if family == "gpt_neox":
        onnx = OnnxModule(export_onnx(cached, tmp_path / "neox.onnx"))
        assert torch.equal(greedy_generate(onnx, ids, 12), reference)


class _Tiny(torch.nn.Module):
    """A hand-written layer (no Hugging Face names): ``x + attn(ln(x)) + mlp(ln(x))`` when
    ``parallel``, else the FFN reads ``u`` (a stream the attention does not read)."""

    def __init__(self, parallel: bool) -> None:
        super().__init__()
        self.parallel = parallel
        self.a = torch.nn.LayerNorm(16)
        self.b, self.c, self.d, self.e = (torch.nn.Linear(16, 16) for _ in range(4))
        self.f, self.g = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q, k, v = (p(h).view(2, 5, 2, 8).transpose(1, 2) for p in (self.b, self.c, self.d))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        att = self.e(att.transpose(1, 2).reshape(2, 5, 16))
        ffn = self.g(torch.nn.functional.gelu(self.f(h if self.parallel else self.a(u))))
        return att + ffn + x


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_sum_is_matched_on_the_graph(parallel: bool) -> None:
    """Only a sum whose two branches both read the stream it adds is rewritten (x + attn) + ffn;
    a sum whose FFN reads another stream is left as it is."""
    torch.manual_seed(0)
    model = _Tiny(parallel).eval()
    inputs = (torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    report = raise_high_level_ops(optc.capture(model, inputs, raise_ops=False))
    assert report.raised.get("parallel", 0) == int(parallel)
    module = optc.capture(model, inputs)
    (layer,) = analyze(module).layers
    assert layer.parallel == parallel
    if parallel:
        assert layer.attention.residual.args[0] is module.graph.inputs[0]  # x + attn first
        assert layer.ffn.stream_in is layer.attention.stream_out
    with torch.no_grad():
        expected = model(*inputs)
    got = next(iter(run_backend(module, "eager", dict(zip(("input_0", "input_1"), inputs, strict=True))).values()))
    assert torch.allclose(got, expected, atol=1e-6)
