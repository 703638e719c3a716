"""The fused ONNX Runtime route (the benchmarks' baseline), the benches' tables, CPU features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optc.backends.cpu_features import cpu_features, describe, parse_flags
from optc.tests.conftest import tiny_model, token_inputs
from optc.tools.bench.fused_route import (
    build_fused,
    fusion_counts,
    int8_operand_types,
    onnx_bytes,
    quantize_fused,
)
from optc.tools.bench.onnx import compare_files, format_comparison


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    model = tiny_model("bert")
    work = tmp_path_factory.mktemp("fused")
    return model, build_fused(model, work), work


def test_fused_route_fuses_attention_and_skip_layer_norm(fused) -> None:  # noqa: ANN001
    model, route, work = fused
    layers = model.config.num_hidden_layers
    assert route.fused.get("Attention") == layers
    assert route.fused.get("SkipLayerNormalization", 0) >= layers
    assert route.fused.get("EmbedLayerNormalization") == 1
    assert route.outputs == ("last_hidden_state", "pooler_output")
    from optc.backends.onnx import OnnxModule

    feeds = token_inputs(model, 3, 11)  # other batch and length than the export's example
    feeds["token_type_ids"] = torch.zeros_like(feeds["input_ids"])
    got = OnnxModule(route.path)(**feeds)["last_hidden_state"]
    with torch.no_grad():
        want = model(**feeds).last_hidden_state
    keep = feeds["attention_mask"].bool()
    assert torch.allclose(got[keep], want[keep], atol=1e-4)

    int8 = quantize_fused(route.path, work / "fused-int8.onnx")
    counts = fusion_counts(int8)
    assert "Attention" not in counts  # became QAttention
    kinds = int8_operand_types(int8)
    assert kinds["QAttention"] == {"u8 x s8"} and kinds["MatMulInteger"] == {"u8 x s8"}
    assert int8_operand_types(route.path) == {}
    assert onnx_bytes(int8)["weights"] < 0.5 * onnx_bytes(route.path)["weights"]


def test_bench_onnx_table_has_one_row_per_threads_and_batch(fused, tmp_path: Path) -> None:  # noqa: ANN001
    model, route, _ = fused
    files = {"fused int8": quantize_fused(route.path, tmp_path / "q.onnx"),
             "fused route": route.path}
    batch = token_inputs(model, 4, 9)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    result = compare_files(files, model, [batch], threads=[1], sizes=[1, 2], seq=8, rounds=1,
                           block=1, settle=0.0)
    assert [(r["threads"], r["batch"]) for r in result["rows"]] == [(1, 1), (1, 2)]
    mean, low = result["agreement"]["fused route"]
    assert 0.9999 < mean <= 1.0001 and low <= mean
    mean, low = result["agreement"]["fused int8"]
    assert 0.9 < mean < 0.99999 and low <= mean  # int8 rounding shows
    for name in files:
        assert result["bytes"][name]["weights"] <= result["bytes"][name]["file"]
    lines = format_comparison(result, {"int8/fp32": ("fused int8", "fused route")}, 4)
    assert lines[1].startswith("fused int8") and lines[2].startswith("fused route")
    table = lines[lines.index("") + 1:]
    assert "int8/fp32" in table[0] and len(table) == 2 + 2  # header, rule, two rows
    assert all(len(row.split()) == 3 + 2 * 2 + 1 for row in table[2:])


def test_cpu_features_from_flags_and_without_proc(tmp_path: Path) -> None:
    f = parse_flags({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}, "x86_64")
    assert f.vnni and f.bf16 and f.avx512f and not f.amx
    g = parse_flags({"avx2", "fma", "avx_vnni"}, "x86_64")
    assert g.vnni and g.bf16 is False and "no AVX-512" in describe(g)
    missing = cpu_features(tmp_path / "no-cpuinfo")
    assert missing.source.startswith("torch") and missing.avx512_bf16 is None
    assert "BF16?" in describe(missing)
    here = cpu_features()
    assert here.machine and describe(here)


def test_int8_operand_types_follow_qdq(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    inits = [nh.from_array(np.ones((4, 3), np.int8), "w"), nh.from_array(np.float32(0.1), "s"),
             nh.from_array(np.uint8(128), "zp"), nh.from_array(np.ones(3, np.float32), "ws")]
    graph = h.make_graph(
        [h.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
         h.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
         h.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=1),
         h.make_node("MatMul", ["xd", "wd"], ["y"])], "qdq",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 3])], inits)
    path = tmp_path / "qdq.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 19)]), str(path))
    assert int8_operand_types(path) == {"MatMul (QDQ)": {"u8 x s8"}}
