"""The ONNX backend writes valid models with dynamic axes that ONNX Runtime runs with fused attention.

Each family is exported once per module (an export costs ~2-4 s). Checks: the ONNX checker,
opset >= 17, input/output names like the eager backend's, symbolic batch/sequence axes, numbers
against eager at several padded sizes, and the fused ops in ONNX Runtime's optimized graph. A
BERT with per-layer head counts and FFN widths (edited by hand) must still export and fuse.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import optc
from optc.backends.onnx import OnnxModule, export_onnx, session_options
from optc.errors import BackendError, OutputError
from optc.ir.analysis import analyze
from optc.tests.conftest import assert_backends_agree, max_diff, padded_inputs
from optc.tests.frontends.hf_cases import OUTPUTS, SIZES, captured

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

FAMILIES = ["bert", "roberta", "distilbert", "electra", "gpt2"]
TOLERANCE = 1e-4
MSFT = "com.microsoft"


def optimized_graph(path: Path, tmp: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs after its (fusing) graph optimizations."""
    opts = session_options()
    opts.optimized_model_filepath = str(tmp / f"{path.stem}.opt.onnx")
    opts.log_severity_level = 3  # no warning about hardware-specific optimized files
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath)


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((n.domain or "", n.op_type) for n in model.graph.node)


def attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def exported(workdir):
    """family -> (HF model, IR module, path of the ONNX file), exported once per module.

    The export overwrites a junk file with ``force=True``, so every export also checks that
    ``force`` replaces an existing output."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            model, module = captured(family)
            path = workdir / f"{family}.onnx"
            path.write_bytes(b"junk")
            export_onnx(module, path, force=True)
            cache[family] = (model, module, path)
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_model_is_valid_with_named_dynamic_inputs_and_outputs(exported, family):
    _, module, path = exported(family)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=False)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    assert opsets[""] >= 17
    assert [i.name for i in model.graph.input] == [v.name for v in module.graph.inputs]
    assert [o.name for o in model.graph.output] == OUTPUTS[(family, "base")]
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "seq"], value.name
        assert not any(d.HasField("dim_value") for d in dims), value.name
    for value in model.graph.output:  # [batch, seq, hidden], or pooled [batch, hidden]
        dims = value.type.tensor_type.shape.dim
        symbolic = ["batch", "seq"][: len(dims) - 1]
        assert [d.dim_param for d in dims[:-1]] == symbolic, value.name
        assert not any(d.HasField("dim_value") for d in dims[:-1]), value.name
    assert all(d.dim_value == 64 for o in model.graph.output
               for d in o.type.tensor_type.shape.dim[-1:])
    written = {p.key: p.value for p in model.metadata_props}
    assert written["optc.source"] and "optc.pipeline" in written


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_runtime_matches_eager_and_hugging_face(exported, family):
    model, module, path = exported(family)
    runner = OnnxModule(path)
    eager = optc.to_eager(module)
    assert runner.input_names == eager.input_names
    assert runner.output_names == eager.output_names
    for seed, (batch, seq) in enumerate([*SIZES, (4, 64)]):
        inputs = padded_inputs(model, module, batch, seq, seed)
        got = runner(**inputs)
        with torch.no_grad():
            want = eager(**inputs)
            hf = model(**inputs)
        assert list(got) == OUTPUTS[(family, "base")]
        for name, value in got.items():
            assert max_diff(value, want[name]) <= TOLERANCE, (name, batch, seq)
            assert max_diff(value, hf[name]) <= TOLERANCE, (name, batch, seq)


def test_onnx_module_reports_missing_inputs(exported):
    model, module, path = exported("distilbert")
    runner = OnnxModule(path)
    ids = padded_inputs(model, module, 2, 5, 0)["input_ids"]
    with pytest.raises(BackendError, match="missing ONNX inputs: attention_mask"):
        runner(ids)


def expected_attention_ops(module: optc.Module) -> list[str]:
    """Per layer, the fused op the backend emits: ``Attention`` (packed QKV) when the attention's
    q, k and v operands are themselves linears of one input, else ``MultiHeadAttention`` (the
    analysis sees projections through head-local ops such as a scaled value; packing does not)."""
    ops = []
    for layer in analyze(module).layers:
        operands = layer.attention.node.args[:3]
        projections = [a.producer for a in operands]
        packed = all(p is not None and p.op == "linear" for p in projections) and \
            len({id(p.args[0]) for p in projections}) == 1
        ops.append("Attention" if packed else "MultiHeadAttention")
    return ops


def fused_attention_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node
            if n.domain == MSFT and n.op_type in ("Attention", "MultiHeadAttention")]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_fused_attention_per_layer_survives_onnx_runtime(exported, workdir, family):
    _, module, path = exported(family)
    expected = expected_attention_ops(module)
    assert len(expected) == 2
    assert fused_attention_ops(onnx.load(path)) == expected  # emitted by optc
    graph = optimized_graph(path, workdir)
    assert fused_attention_ops(graph) == expected  # kept by ONNX Runtime
    counts = op_counts(graph)
    assert counts[("", "Softmax")] == 0
    assert counts[(MSFT, "SkipLayerNormalization")] >= (2 * len(expected) if family != "gpt2" else 1)


def test_bert_fusions_in_the_written_file_and_in_onnx_runtime(exported, workdir):
    _, _, path = exported("bert")
    written = op_counts(onnx.load(path))
    assert written[(MSFT, "Attention")] == 2  # emitted by optc, not found by ORT
    for node in onnx.load(path).graph.node:
        if node.op_type == "Attention":
            assert attributes(node)["num_heads"] == 4
            assert attributes(node)["qkv_hidden_sizes"] == [64, 64, 64]
    fused = op_counts(optimized_graph(path, workdir))
    assert fused[(MSFT, "Attention")] == 2
    assert fused[(MSFT, "SkipLayerNormalization")] == 4
    assert fused[("", "LayerNormalization")] == 1  # the embeddings' norm (no EmbedLayerNorm)
    assert fused[(MSFT, "FusedGemm")] == 1  # pooler dense + tanh


def test_bert_gelu_is_fused(exported, workdir):
    _, _, path = exported("bert")
    fused = op_counts(optimized_graph(path, workdir))
    assert fused[(MSFT, "BiasGelu")] + fused[(MSFT, "Gelu")] == 2
    assert fused[("", "Erf")] == 0


def test_gpt2_fusions(exported, workdir):
    _, module, path = exported("gpt2")
    fused = op_counts(optimized_graph(path, workdir))
    assert fused[(MSFT, "Attention")] + fused[(MSFT, "MultiHeadAttention")] == 2
    assert fused[(MSFT, "SkipLayerNormalization")] >= 1
    assert fused[("", "Softmax")] == 0


def test_unpackable_projections_lower_to_multi_head_attention(workdir):
    """q, k, v that are not linears of one input export as MultiHeadAttention, exactly."""
    model, base = captured("bert")
    module = base.clone()
    for layer in analyze(module).layers:
        value = layer.attention.value.outputs[0]
        scaled = module.graph.create_node("aten.mul.Tensor", (value, 2.0), {}, [value.type],
                                          names="scaled_value", after=layer.attention.value)
        layer.attention.node.replace_input(value, scaled.outputs[0])
    optc.verify(module)
    path = export_onnx(module, workdir / "mha.onnx")
    assert expected_attention_ops(module) == ["MultiHeadAttention"] * 2
    assert fused_attention_ops(optimized_graph(path, workdir)) == ["MultiHeadAttention"] * 2
    runner, eager = OnnxModule(path), optc.to_eager(module)
    for seed, (batch, seq) in enumerate(SIZES):
        inputs = padded_inputs(model, module, batch, seq, seed)
        got = runner(**inputs)
        with torch.no_grad():
            want = eager(**inputs)
        for name in want:
            assert max_diff(got[name], want[name]) <= TOLERANCE, (name, batch, seq)


# -- heterogeneous layers -------------------------------------------------------------------
KEPT_HEADS = [1, 3]
"""Heads of layer 0 that survive (of 4, head_dim 16)."""
KEPT_NEURONS = list(range(0, 128, 3))
"""FFN neurons of layer 1 that survive (43 of 128)."""


def _narrow(value, width: int) -> None:  # noqa: ANN001 - an IR value
    t = value.tensor_type
    value.type = t.with_shape(t.shape[:-1] + (width,))


def heterogeneous_bert() -> tuple[torch.nn.Module, optc.Module]:
    """Tiny BERT with 2 of 4 heads in layer 0 and 43 of 128 FFN neurons in layer 1, edited in
    the IR by hand, and a copy of the HF model in which the removed parts contribute nothing."""
    model, base = captured("bert")
    module = base.clone()
    layers = analyze(module).layers
    att, ffn = layers[0].attention, layers[1].ffn
    dim = att.head_dim
    rows = torch.cat([torch.arange(h * dim, (h + 1) * dim) for h in KEPT_HEADS])
    for linear in (att.query, att.key, att.value):
        weight, bias = linear.args[1], linear.arg(2)
        assert weight.num_uses == bias.num_uses == 1
        weight.data, bias.data = weight.data[rows].clone(), bias.data[rows].clone()
        _narrow(linear.outputs[0], len(rows))
    att.output.args[1].data = att.output.args[1].data[:, rows].clone()
    att.node.set_attr("num_heads", len(KEPT_HEADS))
    _narrow(att.node.outputs[0], len(rows))

    neurons = torch.tensor(KEPT_NEURONS)
    up_w, up_b, down_w = ffn.up.args[1], ffn.up.arg(2), ffn.down.args[1]
    up_w.data, up_b.data = up_w.data[neurons].clone(), up_b.data[neurons].clone()
    down_w.data = down_w.data[:, neurons].clone()
    _narrow(ffn.up.outputs[0], len(neurons))
    _narrow(ffn.activation.outputs[0], len(neurons))
    optc.verify(module)

    reference = copy.deepcopy(model)
    dropped_cols = [c for c in range(64) if c // dim not in KEPT_HEADS]
    dropped_neurons = [n for n in range(128) if n not in KEPT_NEURONS]
    with torch.no_grad():
        reference.encoder.layer[0].attention.output.dense.weight[:, dropped_cols] = 0.0
        reference.encoder.layer[1].output.dense.weight[:, dropped_neurons] = 0.0
    return reference, module


@pytest.fixture(scope="module")
def heterogeneous(workdir):
    reference, module = heterogeneous_bert()
    path = export_onnx(module, workdir / "heterogeneous.onnx")
    return reference, module, path


def test_hand_edited_layers_are_what_the_analysis_reports(heterogeneous):
    _, module, _ = heterogeneous
    layers = analyze(module).layers
    assert [layer.attention.num_heads for layer in layers] == [2, 4]
    assert [layer.ffn.width for layer in layers] == [128, len(KEPT_NEURONS)]
    assert module.num_parameters() < captured("bert")[1].num_parameters()


def test_heterogeneous_eager_matches_zeroed_hugging_face_model(heterogeneous):
    reference, module, _ = heterogeneous
    eager = optc.to_eager(module)
    full = optc.to_eager(captured("bert")[1])
    for seed, (batch, seq) in enumerate(SIZES):
        inputs = padded_inputs(reference, module, batch, seq, seed)
        with torch.no_grad():
            got, want, unpruned = eager(**inputs), reference(**inputs), full(**inputs)
        for name in ("last_hidden_state", "pooler_output"):
            assert max_diff(got[name], want[name]) <= 1e-5, (name, batch, seq)
        assert max_diff(got["last_hidden_state"], unpruned["last_hidden_state"]) > 1e-3


def test_heterogeneous_onnx_fuses_attention_with_per_layer_heads(heterogeneous, workdir):
    _, _, path = heterogeneous
    onnx.checker.check_model(onnx.load(path), full_check=False)
    graph = optimized_graph(path, workdir)
    attention = [attributes(n) for n in graph.graph.node if n.op_type == "Attention"]
    assert [a["num_heads"] for a in attention] == [2, 4]
    assert [a["qkv_hidden_sizes"] for a in attention] == [[32, 32, 32], [64, 64, 64]]
    assert op_counts(graph)[(MSFT, "SkipLayerNormalization")] == 4


def test_heterogeneous_backends_agree(heterogeneous):
    reference, module, path = heterogeneous
    runner = OnnxModule(path)
    eager = optc.to_eager(module)
    for seed, (batch, seq) in enumerate(SIZES):
        inputs = padded_inputs(reference, module, batch, seq, seed)
        got = runner(**inputs)
        with torch.no_grad():
            want = eager(**inputs)
        for name in want:
            assert max_diff(got[name], want[name]) <= TOLERANCE, (name, batch, seq)
    inputs = padded_inputs(reference, module, 3, 9, seed=7)
    report = assert_backends_agree(module, inputs, backends=("eager", "torchscript"))
    assert report.worst("torchscript") <= 1e-5


# -- errors ---------------------------------------------------------------------------------
def test_topk_attention_lowers_to_onnx_on_a_copy(tmp_path):
    model, base = captured("bert")
    module = base.clone()
    first = next(n for n in module.graph if n.op == "attention")
    first.set_attr("kind", "topk")
    first.set_attr("topk", 4)
    optc.verify(module)
    before = optc.print_module(module)
    export_onnx(module, tmp_path / "model.onnx")
    assert optc.print_module(module) == before  # lowering works on a copy
    inputs = padded_inputs(model, module, 2, 9, seed=3)
    got = OnnxModule(tmp_path / "model.onnx")(**inputs)["last_hidden_state"]
    want = optc.to_eager(module)(**inputs)["last_hidden_state"]
    assert max_diff(got, want) <= TOLERANCE


def test_exporter_failure_is_a_backend_error_and_writes_nothing(tmp_path, monkeypatch):
    module = captured("distilbert")[1]

    def broken_export(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(BackendError, match=r"onnx backend failed to export: exporter exploded \(--verbose shows"):
        export_onnx(module, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_weights_without_data_are_a_backend_error(tmp_path):
    text = optc.print_module(captured("distilbert")[1])
    with pytest.raises(BackendError, match="no data"):
        export_onnx(optc.parse_module(text), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        export_onnx(captured("distilbert")[1], path)
    assert path.read_bytes() == b"keep me"
    assert list(tmp_path.iterdir()) == [path]


# -- command line ---------------------------------------------------------------------------
def test_cli_writes_a_loadable_onnx_file_and_refuses_to_overwrite(tmp_path, capsys):
    from optc.tools.cli.main import main

    model = captured("bert")[0]
    model_dir = tmp_path / "tiny-bert"
    model.save_pretrained(model_dir)
    out = tmp_path / "out.onnx"
    assert main([str(model_dir), "--backend", "onnx", "-o", str(out), "-q"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(out), full_check=False)
    runner = OnnxModule(out)
    assert runner.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    inputs = padded_inputs(model, captured("bert")[1], 3, 7, seed=2)
    got = runner(**inputs)
    with torch.no_grad():
        want = model(**inputs)
    for name in ("last_hidden_state", "pooler_output"):
        assert max_diff(got[name], want[name]) <= TOLERANCE, name

    before = (out.read_bytes(), out.stat().st_mtime_ns)
    assert main([str(model_dir), "--backend", "onnx", "-o", str(out), "-q"]) == 4
    assert "already exists" in capsys.readouterr().err
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "tiny-bert"]
