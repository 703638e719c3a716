"""The CLI's --data feeds quantize{mode=static}; each backend's output passes the compile-time
self-check; static mode without data fails before anything is written, naming --data."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from optc.tests.conftest import tiny_model
from optc.tests.tools.test_bench_and_diff import run, save_tiny_tokenizer
from optc.tools.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qcli")
    model_dir = root / "bert"
    tiny_model("bert").save_pretrained(model_dir, safe_serialization=True)
    save_tiny_tokenizer(model_dir)
    data = root / "calib.txt"
    data.write_text("a short sentence\nanother one here\nand a third film\nthe film\n")
    return model_dir, data


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnx"])
def test_data_option_feeds_static_quantization_on_every_backend(setup, tmp_path, capsys,
                                                                 backend) -> None:
    model_dir, data = setup
    out = tmp_path / ("out.onnx" if backend == "onnx" else "out.pt" if backend == "torchscript"
                      else "out")
    code, stdout, err = run(capsys, model_dir, "--passes", "quantize{mode=static,observer=percentile}",
                            "--data", data, "--backend", backend, "-o", out, "--json", "-q")
    assert code == 0, err
    record = json.loads(stdout)["passes"][0]
    assert record["pass"] == f"quantize{{mode=static,observer=percentile,data={data}}}"
    assert record["stats"]["activation_scales"] == 8 and record["stats"]["linears"] == 12
    assert out.exists()
    if backend == "onnx":
        ops = [n.op_type for n in onnx.load(str(out)).graph.node]
        assert "QuantizeLinear" in ops and "DynamicQuantizeMatMul" not in ops


def test_static_without_data_fails_before_writing(setup, tmp_path, capsys) -> None:
    model_dir, _ = setup
    out = tmp_path / "out"
    code, _, err = run(capsys, model_dir, "--passes", "quantize{mode=static}", "-o", out)
    assert code != 0 and "--data" in err and "mode=static" in err
    assert not out.exists()
    assert main([str(model_dir), "--passes", "quantize", "-o", str(out), "-q"]) == 0
