"""``optc inspect`` and optc.tools.reports.inspection: the IR, the per-layer table, JSON, and FLOPs
checked against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optc
from optc.ir import Module, parse_module, print_module
from optc.ir.types import TensorType
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main
from optc.tools.reports.inspection import format_summary, summarize

HIDDEN, FFN, HEADS, LAYERS = 64, 128, 4, 2  # the tiny BERT of tests/conftest.py


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def layer_flops(seq: int, h: int = HIDDEN, ffn: int = FFN) -> int:
    """Batch 1: q/k/v/out linears, the two FFN linears, and QK^T plus AV."""
    return 4 * (2 * seq * h * h) + 2 * (2 * seq * h * ffn) + 4 * seq * seq * h


@pytest.fixture(scope="module")
def hf_bert() -> torch.nn.Module:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, hf_bert) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "m"
    hf_bert.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    module = optc.capture(model_dir)
    return optc.save(module, tmp_path_factory.mktemp("art") / "out")


def table_rows(text: str) -> list[list[str]]:
    """The per-layer table: the lines from the header row on, split into cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["layer"])
    return [line.split() for line in lines[start:]]


# -- text ---------------------------------------------------------------------------------------
def test_text_output_has_ir_and_layer_table(capsys, artifact: Path) -> None:
    code, out, err = run(capsys, "inspect", artifact, "-q")
    assert code == 0
    assert err == ""
    assert out.startswith("module @BertModel {")
    assert out.index("module @") < out.index("GFLOPs")
    rows = table_rows(out)
    assert rows[0] == ["layer", "heads", "head_dim", "ffn", "params", "GFLOPs@128", "density",
                       "precision"]
    assert [r[:4] for r in rows[1:3]] == [["0", "4", "16", "128"], ["1", "4", "16", "128"]]
    assert [r[6:] for r in rows[1:3]] == [["1.000", "f32"], ["1.000", "f32"]]
    assert rows[3][:3] == ["total", "8", "256"]
    assert rows[1][5] == f"{layer_flops(128) / 1e9:.3f}"
    assert len(rows) == 4


def test_no_ir_prints_only_the_summary(capsys, artifact: Path) -> None:
    code, out, _ = run(capsys, "inspect", artifact, "--no-ir", "-q")
    assert code == 0
    assert "module @" not in out
    assert "graph(" not in out
    assert out.startswith("model      BertModel from ")
    assert "pipeline   (none)" in out
    assert table_rows(out)[0][0] == "layer"


def test_layer_params_match_the_hf_layers(capsys, artifact: Path, hf_bert) -> None:
    code, out, _ = run(capsys, "inspect", artifact, "--json", "-q")
    assert code == 0
    info = json.loads(out)
    for entry, layer in zip(info["layers"], hf_bert.encoder.layer, strict=True):
        assert entry["params"] == sum(p.numel() for p in layer.parameters())
    rows = table_rows(format_summary(info))
    assert rows[1][4] == f"{info['layers'][0]['params']:,}"


# -- JSON ---------------------------------------------------------------------------------------
def test_json_has_summary_layers_and_ir(capsys, artifact: Path) -> None:
    code, out, _ = run(capsys, "inspect", artifact, "--json", "-q")
    assert code == 0
    info = json.loads(out)
    assert {"name", "parameters", "flops", "seq", "layers", "ir"} <= set(info)
    assert info["name"] == "BertModel"
    assert info["seq"] == 128
    assert info["parameters"] == optc.load_module(artifact).num_parameters()
    assert len(info["layers"]) == LAYERS
    for i, layer in enumerate(info["layers"]):
        assert set(layer) == {"layer", "id", "heads", "attention_raised", "head_dim", "head_ids", "ffn", "params", "flops",
                              "density", "precision"}
        assert (layer["density"], layer["precision"]) == (1.0, "f32")
        assert (layer["layer"], layer["heads"], layer["head_dim"], layer["ffn"]) == (i, HEADS, 16, FFN)
        assert (layer["id"], layer["head_ids"]) == (i, list(range(HEADS)))
    assert info["ir"] == print_module(optc.load_module(artifact))
    assert parse_module(info["ir"]).name == "BertModel"


@pytest.mark.parametrize("seq", [1, 64, 128])
def test_flops_match_hand_computation(capsys, artifact: Path, seq: int) -> None:
    code, out, _ = run(capsys, "inspect", artifact, "--json", "--seq", seq, "-q")
    assert code == 0
    info = json.loads(out)
    assert info["seq"] == seq
    for layer in info["layers"]:
        assert layer["flops"] == layer_flops(seq)
    pooler = 2 * HIDDEN * HIDDEN  # the pooler's linear reads one token per sequence
    assert info["flops"] == LAYERS * layer_flops(seq) + pooler


def test_seq_changes_flops_quadratically_in_attention(capsys, artifact: Path) -> None:
    flops = {}
    for seq in (64, 128):
        code, out, _ = run(capsys, "inspect", artifact, "--json", "--seq", seq, "-q")
        assert code == 0
        flops[seq] = json.loads(out)["layers"][0]["flops"]
    linear_part = 4 * 2 * HIDDEN * HIDDEN + 2 * 2 * HIDDEN * FFN  # per token
    # doubling seq doubles the linears and quadruples attention
    assert flops[128] - 2 * flops[64] == 4 * 128 * 128 * HIDDEN - 2 * 4 * 64 * 64 * HIDDEN
    assert flops[64] == 64 * linear_part + 4 * 64 * 64 * HIDDEN


def test_inspect_model_directory(capsys, model_dir: Path, artifact: Path) -> None:
    code, out, err = run(capsys, "inspect", model_dir, "--json", "-q")
    assert code == 0, err
    from_dir = json.loads(out)
    code, out, _ = run(capsys, "inspect", artifact, "--json", "-q")
    from_artifact = json.loads(out)
    assert from_dir["source"]["model"] == str(model_dir)
    assert from_dir["layers"] == from_artifact["layers"]
    assert from_dir["flops"] == from_artifact["flops"]


def test_inspect_missing_target_is_input_error(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "inspect", tmp_path / "nothing-here", "-q")
    assert code == 3
    assert err.startswith("optc: error:") and len(err.splitlines()) == 1
    assert out == ""


# -- the library functions ----------------------------------------------------------------------
def test_summary_of_a_module_without_layers() -> None:
    f4 = TensorType(torch.float32, (4,))
    module = Module("plain")
    x = module.graph.add_input("x", f4)
    relu = module.graph.create_node("aten.relu.default", (x,), output_types=[f4], names="r")
    module.graph.set_output("out", relu.output)
    info = summarize(module, seq=16)
    assert info["layers"] == []
    assert info["flops"] == 0
    assert info["parameters"] == 0
    assert info["inputs"] == {"x": str(f4)}
    text = format_summary(info)
    assert "(no transformer layers found)" in text
    assert "pipeline   (none)" in text
    assert "GFLOPs     0.000 (batch 1, seq 16)" in text


@pytest.mark.slow
def test_minilm_flops_by_hand(minilm_module) -> None:
    info = summarize(minilm_module, seq=128)
    h, ffn, seq = 384, 1536, 128
    assert len(info["layers"]) == 6
    for layer in info["layers"]:
        assert (layer["heads"], layer["head_dim"], layer["ffn"]) == (12, 32, ffn)
        assert layer["flops"] == layer_flops(seq, h, ffn)
    assert info["flops"] == 6 * layer_flops(seq, h, ffn) + 2 * h * h
