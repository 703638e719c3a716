"""Graph pictures (optc.tools.reports.graph, ``optc inspect --graph``): the DOT text is always
checked; rendering through Graphviz's ``dot`` only where it is installed; a missing ``dot`` is
simulated."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

import optc
from optc.errors import OutputError, PipelineSpecError
from optc.ir.attributes import Quantization, Sparsity
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main
from optc.tools.reports import graph, graph_render

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
REMOVED = {(0, 1), (1, 0), (1, 2)}
PIPELINE = "prune-heads{heads=0:1,1:0,1:2},prune-neurons{neurons=0:3},dce"


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base() -> optc.ir.Module:
    return optc.capture(tiny_model("bert"))


@pytest.fixture(scope="module")
def pruned(base) -> optc.ir.Module:
    module = base.clone()
    optc.run_pipeline(module, PIPELINE)
    return module


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, base, pruned) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("graph")
    dropped = pruned.clone()
    optc.run_pipeline(dropped, "drop-layers{layers=1},dce")
    return {"base": optc.save(base, root / "base"), "pruned": optc.save(pruned, root / "pruned"),
            "dropped": optc.save(dropped, root / "dropped")}


def clusters(dot: str) -> list[str]:
    return re.findall(r"subgraph (cluster_\w+)", dot)


# -- DOT text --------------------------------------------------------------------------------------
def test_overview_has_a_cluster_per_layer_and_labels_what_matters(pruned) -> None:
    dot = graph.overview_dot(pruned, title="pruned")
    assert clusters(dot) == ["cluster_layer0", "cluster_layer1"]
    assert "3 heads &#215; 16" in dot and "head ids 0,2-3" in dot  # layer 0 lost head 1
    assert "2 heads &#215; 16" in dot and "head ids 1,3" in dot
    assert "64 &#8594; 127 (FFN width)" in dot and "64 &#8594; 128 (FFN width)" in dot
    assert "heads 3&#215;16 &#183; FFN 127" in dot
    per_layer = summarize_params(pruned)
    assert all(f"{p:,} params</FONT>>" in dot for p in per_layer)
    # raised ops only: ATen glue (views, adds, mask building) is collapsed into edges
    assert "aten" not in dot and "unsqueeze" not in dot
    assert dot.count("linear (query)") == 2 and dot.count("gelu") == 2
    assert "style=dashed" in dot  # edges through collapsed glue (residual adds)


def summarize_params(module) -> list[int]:
    from optc.tools.reports.inspection import summarize

    return [x["params"] for x in summarize(module)["layers"]]


def test_overview_labels_sparsity_int8_and_hard_attention(pruned) -> None:
    module = pruned.clone()
    q = module.params["encoder.layer.0.attention.self.query.weight"]
    q.attrs = {"sparsity": Sparsity(pattern="n:m", density=0.5, n=2, m=4)}
    k = module.params["encoder.layer.1.attention.self.key.weight"]
    k.data = torch.zeros(k.data.shape, dtype=torch.int8)
    k.attrs = {"quantization": Quantization(scheme="symmetric", axis=0)}
    att = next(n for n in module.graph if n.op == "attention")
    att.set_attr("kind", "topk")
    att.set_attr("topk", 8)
    dot = graph.overview_dot(module)
    assert dot.count("2:4 sparse, density 0.50") == 1
    assert dot.count("int8 symmetric per-channel") == 1
    assert dot.count("hard attention, top-8") == 1


def test_diff_marks_exactly_the_removed_heads(base, pruned) -> None:
    dot = graph.diff_dot(base, pruned)
    removed = {tuple(map(int, m)) for m in re.findall(r'TOOLTIP="removed head (\d+):(\d+)"', dot)}
    kept = {tuple(map(int, m)) for m in re.findall(r'TOOLTIP="head (\d+):(\d+)"', dot)}
    assert removed == REMOVED
    assert kept == {(layer, h) for layer in (0, 1) for h in range(4)} - REMOVED
    assert "heads 4 &#8594; 3" in dot and "heads 4 &#8594; 2" in dot
    assert "out 128 &#8594; 127 (-0.8%)" in dot  # layer 0's FFN up lost neuron 3
    assert "removed" not in re.sub(r"removed.head", "", dot)  # no layer or block is gone


def test_diff_of_a_model_with_itself_marks_nothing(base) -> None:
    dot = graph.diff_dot(base, base)
    assert "removed head" not in dot and "%)" not in dot  # no "a -> b (-x%)" changes
    assert "#d35400" not in dot  # nothing in the changed colour


def test_diff_greys_a_removed_layer(artifacts) -> None:
    a, b = optc.load_module(artifacts["base"]), optc.load_module(artifacts["dropped"])
    dot = graph.diff_dot(a, b)
    assert "<<S><B>layer 1</B></S>" in dot and "removed</FONT>>" in dot
    layer1 = dot[dot.index("cluster_layer1"):]
    assert layer1.count("style=\"rounded,filled,dashed\"") >= 7  # q, k, v, attention, out, up, act, down ...
    assert len(re.findall(r'TOOLTIP="removed head 1:\d"', dot)) == 4  # all of layer 1's heads


def test_detail_draws_every_node_of_one_layer(base) -> None:
    dot = graph.detail_dot(base, 1)
    assert clusters(dot) == ["cluster_d"]
    assert "linear (query)" in dot and "attention" in dot and ">add<" in dot  # ATen glue too
    assert "@encoder.layer.1.attention.self.query.weight" in dot
    assert "encoder.layer.0." not in dot
    with pytest.raises(PipelineSpecError, match="layers 0..1"):
        graph.detail_dot(base, 2)


def test_detail_with_a_second_module_draws_before_and_after(base, pruned) -> None:
    dot = graph.detail_dot(base, 0, pruned, names=("A", "B"))
    assert clusters(dot) == ["cluster_a", "cluster_b"]
    assert "f32[batch,seq,48]" in dot and "f32[batch,seq,64]" in dot  # 3 of 4 heads after


# -- rendering ---------------------------------------------------------------------------------------
def test_dot_output_needs_no_graphviz(base, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(graph_render.shutil, "which", lambda name: None)
    written, note = graph.render(graph.overview_dot(base), tmp_path / "g.dot")
    assert note is None and written.read_text().startswith("digraph")


def test_missing_dot_writes_the_dot_source_and_says_so(base, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(graph_render.shutil, "which", lambda name: None)
    written, note = graph.render(graph.overview_dot(base), tmp_path / "g.svg")
    assert written == tmp_path / "g.dot" and not (tmp_path / "g.svg").exists()
    assert "apt-get install graphviz" in note and "\n" not in note
    assert graph.to_svg("digraph { a }") is None


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_render_svg_and_png(base, tmp_path, suffix, magic) -> None:
    written, note = graph.render(graph.overview_dot(base), tmp_path / f"g{suffix}")
    assert note is None and written.read_bytes().startswith(magic)
    svg = graph.to_svg(graph.overview_dot(base))
    assert svg.startswith("<svg") and "cluster_layer1" in svg


# -- CLI ------------------------------------------------------------------------------------------------
def test_inspect_diff_graph(artifacts, tmp_path, capsys) -> None:
    out = tmp_path / "diff.dot"
    code, stdout, err = run(capsys, "inspect", "--diff", artifacts["base"], artifacts["pruned"],
                            "--graph", out, "-q")
    assert code == 0, err
    assert f"wrote {out}" in err and stdout.startswith("---")
    removed = {tuple(map(int, m)) for m in re.findall(r'removed head (\d+):(\d+)', out.read_text())}
    assert removed == REMOVED
    code, _, err = run(capsys, "inspect", "--diff", artifacts["base"], artifacts["pruned"],
                       "--graph", out, "-q")
    assert code == 4 and "--force" in err
    code, _, err = run(capsys, "inspect", "--diff", artifacts["base"], artifacts["pruned"],
                       "--graph", out, "--force", "--detail", "0", "-q")
    assert code == 0 and "cluster_b" in out.read_text()


def test_inspect_graph_without_dot_is_one_line(artifacts, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(graph_render.shutil, "which", lambda name: None)
    code, _, err = run(capsys, "inspect", artifacts["pruned"], "--graph", tmp_path / "g.svg",
                       "--no-ir", "-q")
    assert code == 0
    assert err.count("\n") == 1 and "apt-get install graphviz" in err and "Traceback" not in err
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_inspect_graph_bad_usage(artifacts, tmp_path, capsys) -> None:
    code, _, err = run(capsys, "inspect", artifacts["base"], "--graph", tmp_path / "g.txt")
    assert code == 2 and ".svg, .png or .dot" in err
    code, _, err = run(capsys, "inspect", artifacts["base"], "--detail", "0")
    assert code == 2 and "--graph" in err
    code, _, err = run(capsys, "inspect", artifacts["base"], "--graph", tmp_path / "g.dot",
                       "--detail", "5", "-q")
    assert code == 2 and "--detail 5" in err and "layers 0..1" in err  # a bad option value
    code, _, err = run(capsys, "inspect", artifacts["base"], "--graph",
                       tmp_path / "missing" / "g.dot", "-q")
    assert code == 4 and "does not exist" in err


def test_diff_against_an_unrelated_model_says_so(base) -> None:
    other = optc.capture(tiny_model("distilbert"))
    for node in other.graph:  # a module from before stable ids: matched by parameter names
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "layer"}
    dot = graph.diff_dot(base, other, title="A -> B")
    assert "no layer in common" in dot


def test_diff_greys_a_removed_block_and_keeps_the_rest(base) -> None:
    module = base.clone()
    optc.run_pipeline(module, "drop-layers{layers=0,blocks=attention},dce")
    dot = graph.diff_dot(base, module)
    layer0 = dot[dot.index("subgraph cluster_layer0"):dot.index("subgraph cluster_layer1")]
    assert "heads block removed" in layer0 and "FFN 128" in layer0
    gone = re.findall(r"<S>(linear \(\w+[^<]*|attention)</S>", layer0)
    assert sorted(gone) == ["attention", "linear (key)", "linear (output proj)", "linear (query)",
                            "linear (value)"]
    assert {int(h) for h in re.findall(r"removed head 0:(\d)", layer0)} == {0, 1, 2, 3}
    assert "removed head 1:" not in dot


def test_missing_dot_checks_the_dot_file_it_would_write(base, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(graph_render.shutil, "which", lambda name: None)
    (tmp_path / "g.dot").write_text("old")
    with pytest.raises(OutputError, match="--force"):
        graph.check_graph_output(tmp_path / "g.svg", force=False)
    written, _ = graph.render(graph.overview_dot(base), tmp_path / "g.svg", force=True)
    assert written.read_text().startswith("digraph")
    (tmp_path / "d.svg").mkdir()
    with pytest.raises(OutputError, match="not a"):
        graph.check_file_output(tmp_path / "d.svg", True, graph.GRAPH_SUFFIXES)


def test_diff_marks_hard_attention_in_orange(base) -> None:
    module = base.clone()
    att = [n for n in module.graph if n.op == "attention"][1]
    att.set_attr("kind", "topk")
    att.set_attr("topk", 4)
    dot = graph.diff_dot(base, module)
    assert dot.count('<FONT COLOR="#d35400">hard attention, top-4</FONT>') == 1
    assert "removed head" not in dot
