"""``optc bench --profile``: per-op-kind time from each runtime's profiler next to each kind's
FLOPs from the IR's cost model, on a tiny BERT artifact (eager through torch.profiler, ONNX
through ONNX Runtime's profiler)."""

from __future__ import annotations

import json

import pytest

import optc
from optc.backends.writers import write_unchecked
from optc.ir.analysis import module_flops
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main
from optc.tools.measure.bench import make_inputs, make_runners, run_profile
from optc.tools.measure.profile import (
    KINDS,
    OpKindRow,
    format_profile,
    ir_costs,
    profile,
    runtime_kind,
)

ARGS = ["--backends", "eager", "--no-memory", "--rounds", "1", "--block", "1", "--warmup", "0",
        "--batch", "2", "--seq", "16", "--profile", "--profile-calls", "3", "-q"]


@pytest.fixture(scope="module")
def module():
    return optc.capture(tiny_model("bert"))


@pytest.fixture(scope="module")
def artifact(module, tmp_path_factory):
    return optc.save(module, tmp_path_factory.mktemp("profile") / "a", check=False)


def _kinds(rows: list[OpKindRow]) -> dict[str, OpKindRow]:
    return {r.kind: r for r in rows}


def test_profile_json_lists_timed_kinds_with_the_ir_flops(artifact, module, capsys) -> None:
    assert main(["bench", str(artifact), *ARGS, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    kinds = {k["kind"]: k for k in row["profile"]}
    assert set(kinds) <= set(KINDS) and {"linear", "attention", "norm"} <= set(kinds)
    assert all(k["ms_per_call"] > 0 and k["ops"] for k in kinds.values())
    assert "aten::addmm" in kinds["linear"]["ops"]
    # every FLOP of the IR is in exactly one kind
    assert sum(k["flops"] for k in kinds.values()) == module_flops(module, 16, batch=2)


def test_onnx_runtime_profile_next_to_the_ir_flops(artifact, module, tmp_path) -> None:
    path = write_unchecked(module, "onnx", tmp_path / "m.onnx")
    (eager,) = make_runners([str(artifact)], ["eager"], 1, tmp_path)
    (onnx,) = make_runners([str(path)], None, 1, tmp_path)
    text, _ = run_profile([onnx], 2, 16, 1, calls=3)
    assert "\nlinear " in text and "-" in text  # a bare .onnx file: no IR, no FLOPs
    onnx.module = module  # what the CLI sets for an artifact lowered to onnx
    found = _kinds(profile(onnx, make_inputs(onnx.input_names, 2, 16), 1, calls=3,
                           module=module, batch=2, seq=16))
    mine = _kinds(profile(eager, make_inputs(eager.input_names, 2, 16), 1, calls=3,
                          module=module, batch=2, seq=16))
    assert all(r.seconds > 0 and r.ops for r in found.values())
    assert found["attention"].ops == {"Attention": 2}  # ORT's fused Attention, one per layer
    assert "SkipLayerNormalization" in found["norm"].ops
    # ORT's fused Attention holds the q/k/v projections: their FLOPs move to attention
    assert found["attention"].flops > mine["attention"].flops
    assert sum(r.flops for r in found.values()) == module_flops(module, 16, batch=2)
    text = format_profile("m", "onnx", list(found.values()), 2, 16, 1, 3)
    assert "attention+qkv" in text and "GFLOP/s" in text


def test_profile_table_follows_the_latency_table(artifact, capsys) -> None:
    assert main(["bench", str(artifact), *ARGS]) == 0
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
