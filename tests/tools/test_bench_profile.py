"""``optc bench --profile``: per-op-kind time from each runtime's profiler next to each kind's
FLOPs from the IR's cost model, on a tiny BERT artifact (eager through torch.profiler, ONNX
through ONNX Runtime's profiler)."""

from __future__ import annotations

import json

import pytest

import optc
from optc.ir.analysis import module_flops
from optc.tests.conftest import tiny_model
from optc.tools.cli import main
from optc.tools.profile import KINDS, OpKindRow, format_profile, ir_costs, runtime_kind

ARGS = ["--backends", "eager,onnx", "--no-memory", "--rounds", "1", "--block", "1",
        "--warmup", "0", "--batch", "2", "--seq", "16", "--profile", "--profile-calls", "3", "-q"]


@pytest.fixture(scope="module")
def module():
    return optc.capture(tiny_model("bert"))


@pytest.fixture(scope="module")
def artifact(module, tmp_path_factory):
    return optc.save(module, tmp_path_factory.mktemp("profile") / "a", check=False)


def test_profile_json_lists_timed_kinds_with_the_ir_flops(artifact, module, capsys) -> None:
    assert main(["bench", str(artifact), *ARGS, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["backend"] for r in rows] == ["eager", "onnx"]
    for row in rows:
        kinds = {k["kind"]: k for k in row["profile"]}
        assert set(kinds) <= set(KINDS) and {"linear", "attention", "norm"} <= set(kinds)
        assert all(k["ms_per_call"] > 0 and k["ops"] for k in kinds.values())
        # every FLOP of the IR is in exactly one kind, whichever way the runtime groups q/k/v
        assert sum(k["flops"] for k in kinds.values()) == module_flops(module, 16, batch=2)
    eager = {k["kind"]: k for k in rows[0]["profile"]}
    onnx = {k["kind"]: k for k in rows[1]["profile"]}
    assert "aten::addmm" in eager["linear"]["ops"]
    assert onnx["attention"]["ops"] == {"Attention": 2}  # ORT's fused Attention, one per layer
    # ORT's fused Attention holds the q/k/v projections: their FLOPs move to attention
    assert onnx["attention"]["flops"] > eager["attention"]["flops"]
    assert onnx["linear"]["flops"] + onnx["attention"]["flops"] == \
        eager["linear"]["flops"] + eager["attention"]["flops"]
    text = format_profile("a", "onnx", [OpKindRow(k["kind"], k["ms_per_call"] / 1e3, k["ops"],
                                                  k["flops"], k["bytes"])
                                        for k in rows[1]["profile"]], 2, 16, 1, 3)
    assert "attention+qkv" in text and "SkipLayerNormalization" in text


def test_profile_table_follows_the_latency_table(artifact, capsys) -> None:
    args = [a if a != "eager,onnx" else "eager" for a in ARGS]  # no export: eager only
    assert main(["bench", str(artifact), *args]) == 0
    out = capsys.readouterr().out
    assert out.index("median ms") < out.index("profile:") < out.index("(eager), batch 2, seq 16")
    table = out[out.index("profile:"):]
    assert "GFLOP/s" in table and "aten::addmm" in table and "\nlinear " in table


def test_kinds_and_costs(module) -> None:
    assert runtime_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert runtime_kind("MatMulInteger") == "linear" and runtime_kind("Reshape") == "other"
    plain, fused = ir_costs(module, 1, 8), ir_costs(module, 1, 8, qkv_in_attention=True)
    qkv = 2 * 2 * 3 * 8 * 64 * 64  # layers x q,k,v x (2 x seq x hidden x hidden)
    assert fused["attention"][0] - plain["attention"][0] == qkv
    assert plain["linear"][0] - fused["linear"][0] == qkv
    text = format_profile("m", "onnx", [OpKindRow("linear", 0.002, {"MatMul": 6}, 10**9, 2**20)],
                          1, 8, 1, 5)
    assert "linear" in text and "500.0" in text and "MatMul x6" in text  # 1 GFLOP in 2 ms
