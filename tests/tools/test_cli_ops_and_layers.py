"""optc ops, damaged artifacts, inspect's raising report and stable ids on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import optc
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("art") / "a"
    optc.save(optc.capture(tiny_model("bert")), path)
    return path


def test_ops_lists_every_op_with_operands_attributes_and_lowerings(capsys):
    code, out, _ = run(capsys, "ops", "--json")
    assert code == 0
    ops = {op["name"]: op for op in json.loads(out)}
    assert {"linear", "attention", "layer_norm", "embedding", "gelu"} <= set(ops)
    attention = ops["attention"]
    assert [o["name"] for o in attention["operands"]] == ["query", "key", "value", "mask",
                                                          "int8_scale", "int8_zero_point"]
    assert {a["name"]: a["required"] for a in attention["attributes"]}["num_heads"] is True
    assert attention["lowerings"] == {"eager": "kernel", "torchscript": "script", "onnx": "custom"}
    assert attention["traits"] == ["attention"] and attention["samples"] >= 1
    assert ops["gelu"]["traits"] == ["activation", "ffn-activation"]
    code, text, _ = run(capsys, "ops")
    assert code == 0 and "linear(x: float, weight: " in text and "bias?: float" in text
    assert "(projection)" in text


def test_a_typo_in_model_optc_names_the_unknown_op_with_a_hint(capsys, artifact, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    ir = broken / "model.optc"
    ir.write_text(ir.read_text().replace("= linear(", "= linaer(", 1))
    code, _, err = run(capsys, "inspect", broken, "-q")
    assert code == 3
    assert err.count("\n") == 1
    assert "uses unknown op 'linaer'; did you mean 'linear'?" in err and "edited" in err
    assert "`optc ops`" in err


def test_inspect_reports_raised_ops_and_layer_ids(capsys, artifact, tmp_path):
    code, out, _ = run(capsys, "inspect", artifact, "--no-ir", "-q")
    assert code == 0 and "raised     attention 2, embedding 3, " in out
    pruned = tmp_path / "pruned"
    code, _, _ = run(capsys, artifact, "--passes", "drop-layers{layers=0}", "-o", pruned, "-q")
    assert code == 0
    code, out, _ = run(capsys, "inspect", pruned, "--json", "-q")
    info = json.loads(out)
    assert [(x["layer"], x["id"]) for x in info["layers"]] == [(0, 1)]
    assert info["raising"]["misses"] == []
    code, out, _ = run(capsys, "inspect", pruned, "--no-ir", "-q")
    assert "\n0 (id 1) " in out


def test_inspect_lists_why_attention_was_not_raised(capsys, tmp_path):
    from optc.tests.ir.test_foundation import _ReturnsProbabilities

    module = optc.capture(_ReturnsProbabilities().eval(), (torch.randn(2, 5, 16),))
    optc.save(module, tmp_path / "plain")
    code, out, _ = run(capsys, "inspect", tmp_path / "plain", "--no-ir", "-q")
    assert code == 0
    assert "not raised 1 pattern(s); structural passes do not see them:" in out
    assert "probabilities are used elsewhere" in out


@pytest.mark.parametrize(("spec", "message"), [
    ("drop-layers{strategy=top}", "needs count=N"),
    ("drop-layers{layers=0,count=1}", "count=N goes with strategy"),
])
def test_drop_layers_option_mistakes_are_usage_errors(capsys, artifact, tmp_path, spec, message):
    code, _, err = run(capsys, artifact, "--passes", spec, "-o", tmp_path / "x", "-q")
    assert code == 2 and message in err
    assert not (tmp_path / "x").exists()


def test_eval_and_finetune_are_subcommands(capsys):
    code, out, _ = run(capsys, "eval", "--help")
    assert code == 0 and "optc eval" in out
    code, _, err = run(capsys, "finetune", "--epochs", "0", "-o", "x")
    assert code == 2 and err.startswith("optc: error:")
