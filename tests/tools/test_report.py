"""``optc report``: the HTML page's sections and numbers (checked against ``inspect --json``),
self-containment, optional sections, bad input. Pixels are not tested."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import optc
from optc.ir.attributes import Sparsity
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main
from optc.tools.reports import graph_render, report

SECTIONS = ("summary", "layers", "pipeline", "specialization", "weights", "faster", "graph")
PASSES = "drop-layers{layers=1},prune-heads{heads=0:1},prune-neurons{neurons=0:3,0:7},dce"


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    base = optc.save(optc.capture(tiny_model("bert")), root / "base")
    small = root / "small"
    assert main([str(base), "--passes", PASSES, "-o", str(small), "-q"]) == 0
    other = optc.save(optc.capture(tiny_model("distilbert")), root / "distil")
    return {"root": root, "base": base, "small": small, "distil": other}


def page_data(text: str) -> dict:
    payload = re.search(r'<script type="application/json" id="optc-data">(.*?)</script>', text, re.S)
    return json.loads(payload.group(1).replace("<\\/", "</"))


def section(text: str, sid: str) -> str:
    return re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S).group(1)


def test_report_sections_and_numbers_match_inspect_json(targets, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    code, stdout, err = run(capsys, "report", targets["small"], targets["base"], "-o", out, "-q")
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    text = out.read_text()
    assert [s for s in SECTIONS if f'<section id="{s}">' in text] == list(SECTIONS)
    _, js, _ = run(capsys, "inspect", targets["small"], "--json", "-q")
    _, jb, _ = run(capsys, "inspect", targets["base"], "--json", "-q")
    small, base = json.loads(js), json.loads(jb)
    data = page_data(text)
    for key in ("parameters", "flops", "nonzero_flops", "nodes", "layers", "layer_facts",
                "pipeline", "pass_stats"):
        assert data["model"][key] == small[key], key
        assert data["baseline"]["model"][key] == base[key], key
    summary = section(text, "summary")
    ratio = small["parameters"] / base["parameters"]
    assert f"<td>parameters</td><td>{small['parameters']:,}</td><td>{base['parameters']:,}</td>" \
           f"<td>{ratio:.3f}&#215;</td>" in summary
    assert f"{small['flops'] / 1e9:.3f}" in summary and "not measured" in summary
    disk = sum(f.stat().st_size for f in targets["small"].iterdir())
    assert data["disk_bytes"] == disk


def test_report_layers_pipeline_and_graph(targets, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    assert run(capsys, "report", targets["small"], targets["base"], "-o", out, "-q")[0] == 0
    text = out.read_text()
    layers = section(text, "layers")
    # layer 0 kept 3 of 4 heads (stable ids 0,2,3; head 1 struck) and 126 of 128 neurons
    assert "<td>0</td><td>0</td><td>4 &#8594; 3</td><td>0,2,3 <span class=\"removed\">1</span></td>" \
           "<td>128 &#8594; 126</td>" in layers
    assert "<td>1</td><td>removed</td>" in layers
    assert layers.count("<svg") == 1 and "attention heads kept" in layers and "FFN width" in layers
    assert "weight density" in layers and "bits per weight" in layers
    pipeline = section(text, "pipeline")
    for spec in ("drop-layers{layers=1}", "prune-heads{heads=0:1}", "dce"):
        assert f"<code>{spec}</code>" in pipeline
    assert "heads_removed=1" in pipeline and " ms</td>" in pipeline
    assert "not present" in section(text, "specialization")
    assert "sparsity and quantization attributes: not present" in section(text, "weights")
    assert "latency ratio" in section(text, "faster") and "not measured" in section(text, "faster")
    assert "(diff against the baseline)" in text
    if shutil.which("dot"):
        assert "removed head 0:1" in section(text, "graph") and "<svg" in section(text, "graph")


def test_report_is_self_contained(targets, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    assert run(capsys, "report", targets["small"], "-o", out, "-q")[0] == 0
    text = out.read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)
    assert "<link" not in text and "@import" not in text and "<img" not in text
    assert "<svg" in text and "not present (needs a BASELINE" in section(text, "faster")


def test_report_without_dot_shows_the_dot_source(targets, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(graph_render.shutil, "which", lambda name: None)
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "report", targets["small"], targets["base"], "-o", out, "-q")
    assert code == 0 and "apt-get install graphviz" in err and "Traceback" not in err
    g = section(out.read_text(), "graph")
    assert "<svg" not in g and "digraph optc" in g and "removed head 0:1" in g


def test_report_renders_specialization_history(targets, tmp_path, capsys) -> None:
    # the record optc specialize writes into the artifact's metadata (search.driver summary)
    history = [{"step": i + 1, "kind": "heads", "layer": 0, "units": [i], "label": f"head {i}",
                "mean_loss": None if i == 6 else 0.4 + 0.01 * i, "not_worse": 0.9,
                "metric": 90.0, "accepted": i % 3 == 0, "flops": 10**8 * (7 - i),
                "note": "block removed" if i == 6 else ""} for i in range(7)]
    record = {"history": history, "metric": "accuracy", "dev_metric_before": 91.5,
              "dev_metric_after": 90.75, "baseline_loss": 0.4, "best_loss": 0.43,
              "flops_before": 2 * 10**9, "flops_after": 10**9,
              "params_before": 21506, "params_after": 17282}
    art = optc.save(optc.load_module(targets["small"]), tmp_path / "spec",
                    extra={"specialization": record})
    out = tmp_path / "r.html"
    assert run(capsys, "report", art, targets["base"], "-o", out, "-q")[0] == 0
    spec = section(out.read_text(), "specialization")
    assert "<td>dev accuracy</td><td>91.5</td><td>90.75</td>" in spec
    assert "<td>GFLOPs (batch 1, seq 128)</td><td>2</td><td>1</td>" in spec
    assert "<td>parameters</td><td>21,506</td><td>17,282</td>" in spec
    assert "GFLOPs (batch 1, seq 128)</text>" in spec  # the plot's x axis
    assert "<svg" in spec and "accepted" in spec and "rejected" in spec and "mean loss" in spec
    # the same record in the module's metadata is read too (Python API)
    module = optc.load_module(targets["small"])
    module.meta["specialization"] = record
    assert "dev accuracy" in section(report.report_html(module), "specialization")


def test_report_lists_sparsity_and_precision(targets) -> None:
    module = optc.load_module(targets["small"])
    p = module.params["encoder.layer.0.attention.self.query.weight"]
    keep = torch.rand(p.data.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    p.data = p.data * keep
    p.attrs = {"sparsity": Sparsity(pattern="unstructured", density=0.3)}
    text = report.report_html(module, None, name="sparse")
    weights = section(text, "weights")
    assert "encoder.layer.0.attention.self.query.weight" in weights and "unstructured" in weights
    row = report.layer_rows(report.build_report(module))[0]
    # 30% of one of the layer's 64x64 weights: the layer's density drops by about 0.7*4096/33k
    assert 0.88 < row["density"] < 0.93 and row["bits"] == 32


def test_different_family_baseline_is_said_and_totals_compared(targets, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "report", targets["small"], targets["distil"], "-o", out)
    assert code == 0, err
    assert "different architecture family" in err
    text = out.read_text()
    assert "different architecture family" in text and "model_type" in text
    assert "&#215;</td>" in section(text, "summary")  # totals still have ratios
    assert "(diff against the baseline)" not in text


@pytest.mark.parametrize("case", ["not-a-model", "onnx", "missing", "exists", "no-dir", "suffix"])
def test_report_bad_input_is_one_line(targets, tmp_path, capsys, case) -> None:
    out, target, extra = tmp_path / "r.html", str(targets["small"]), []
    expected = {"not-a-model": 3, "onnx": 3, "missing": 3, "exists": 4, "no-dir": 4, "suffix": 2}
    if case == "not-a-model":
        target = tmp_path / "notes.txt"
        target.write_text("hello")
    elif case == "onnx":
        target = tmp_path / "m.onnx"
        target.write_bytes(b"\x08\x01")
    elif case == "missing":
        target = tmp_path / "nothing-here"
    elif case == "exists":
        out.write_text("old")
    elif case == "no-dir":
        out = tmp_path / "missing" / "r.html"
    elif case == "suffix":
        out = tmp_path / "r.txt"
    code, _, err = run(capsys, "report", target, "-o", out, *extra, "-q")
    assert code == expected[case], err
    assert err.count("\n") == 1 and err.startswith("optc: error:") and "Traceback" not in err
    if case == "exists":
        assert out.read_text() == "old"
        assert run(capsys, "report", targets["small"], "-o", out, "--force", "-q")[0] == 0
        assert out.read_text().startswith("<!DOCTYPE html>")


def test_report_bench_fills_latency_and_the_faster_table(targets, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "report", targets["small"], targets["base"], "-o", out, "--bench", "-q")
    assert code == 0, err
    text = out.read_text()
    data = page_data(text)
    assert {(r["backend"], r["role"]) for r in data["bench"]} == {
        ("eager", "model"), ("eager", "baseline"), ("onnx", "model"), ("onnx", "baseline")}
    summary, faster = section(text, "summary"), section(text, "faster")
    assert "latency eager (median)" in summary and "latency onnx (median)" in summary
    flops = data["model"]["flops"] / data["baseline"]["model"]["flops"]
    assert faster.count(f"<td>{flops:.3f}&#215;</td>") == 2
    assert faster.count("<p>On ") == 2  # one plain sentence per backend


def test_faster_table_says_when_sparsity_saves_flops_but_not_time(targets) -> None:
    base = optc.load_module(targets["base"])
    module = base.clone()
    for name in [n for n in module.params if n.endswith("dense.weight") and "layer" in n]:
        p = module.params[name]
        p.data = p.data * (torch.rand(p.data.shape, generator=torch.Generator().manual_seed(1)) < 0.1)
        p.attrs = {"sparsity": Sparsity(pattern="unstructured", density=0.1)}
    bench = [{"backend": "eager", "role": "model", "median_ms": 1.0},
             {"backend": "eager", "role": "baseline", "median_ms": 1.02},
             {"backend": "onnx", "role": "model", "median_ms": 0.5},
             {"backend": "onnx", "role": "baseline", "median_ms": 0.52}]
    text = report.report_html(module, base, name="sparse", baseline_name="dense", bench=bench)
    faster = section(text, "faster")
    data = page_data(text)
    assert data["model"]["flops"] == data["baseline"]["model"]["flops"]  # dense count unchanged
    ratio = data["nonzero_flops"] / data["baseline"]["nonzero_flops"]
    assert ratio < 0.8
    assert "nonzero FLOPs ratio" in faster and f"<td>{ratio:.3f}&#215;</td>" in faster
    assert faster.count("does not turn into speed here") == 2
    assert f"On eager the model does {ratio:.2f}&#215; the baseline's nonzero FLOPs but takes " \
           "0.98&#215; its time" in faster


def test_screenshot_tool_without_chromium_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from optc.tools.reports import screenshot

    page = tmp_path / "r.html"
    page.write_text("<!DOCTYPE html><p>x</p>")
    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    assert screenshot.main([str(page), str(tmp_path / "s.png")]) == 3
    assert capsys.readouterr().err == "optc: error: no Chromium found (install it: apt-get " \
                                      "install chromium)\n"
    svg = tmp_path / "g.svg"
    svg.write_text('<svg width="200pt" height="500pt" viewBox="0 0 200 500"></svg>')
    assert screenshot._aspect(svg) == 2.5 and screenshot._aspect(page) is None
