"""``optc bench`` (targets of every kind, table, JSON, memory, errors), ``optc inspect --diff``
and the CLI's ``--data`` option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main
from optc.tools.measure.bench import format_bench, make_inputs


def save_tiny_tokenizer(path: Path) -> None:
    """A WordPiece tokenizer of 15 tokens (fits the tiny BERT's 120 embedding rows)."""
    from transformers import BertTokenizer

    words = ["the", "a", "short", "sentence", "another", "one", "here", "and", "third", "film"]
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(path)


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT as a model directory, an artifact, a pruned artifact, ONNX and TorchScript."""
    root = tmp_path_factory.mktemp("bench")
    model_dir = root / "bert"
    tiny_model("bert").save_pretrained(model_dir, safe_serialization=True)
    save_tiny_tokenizer(model_dir)
    paths = {"model": model_dir, "artifact": root / "base", "pruned": root / "pruned",
             "onnx": root / "pruned.onnx", "pt": root / "pruned.pt"}
    assert main([str(model_dir), "-o", str(paths["artifact"]), "-q"]) == 0
    assert main([str(paths["artifact"]), "--passes",
                 "drop-layers{layers=1},prune-heads{heads=0:0,0:1},prune-neurons{amount=0.25},dce",
                 "-o", str(paths["pruned"]), "-q"]) == 0
    assert main([str(paths["pruned"]), "--backend", "onnx", "-o", str(paths["onnx"]), "-q"]) == 0
    assert main([str(paths["pruned"]), "--backend", "torchscript", "-o", str(paths["pt"]), "-q"]) == 0
    return paths


def test_bench_table_has_one_row_per_target_with_ratios_to_the_first(targets, capsys):
    code, out, err = run(capsys, "bench", targets["model"], targets["artifact"], targets["onnx"],
                         targets["pt"], "--rounds", 2, "--block", 2, "--seq", 16, "--no-memory", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cpu: ") and ("AVX2" in lines[0] or "?" in lines[0])
    lines = lines[1:]
    assert lines[0].split()[:5] == ["target", "backend", "batch", "seq", "thr"]
    rows = [line.split() for line in lines[1:]]
    assert [r[1] for r in rows] == ["hf", "eager", "onnx", "torchscript"]
    assert rows[0][8] == "1.000"  # the first target is the reference
    assert all(float(r[5]) > 0 for r in rows)  # median ms


def test_bench_json_has_every_figure(targets, capsys):
    code, out, _ = run(capsys, "bench", targets["artifact"], targets["pruned"], "--backends",
                       "eager,onnx", "--batch", 1, 2, "--rounds", 2, "--block", 2, "--seq", 8,
                       "--no-memory", "--json", "-q")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 2 * 2 * 2  # targets x backends x batch sizes
    keys = {"target", "backend", "batch", "seq", "threads", "median_ms", "p10_ms", "p90_ms",
            "ratio", "calls", "parameters", "disk_bytes", "peak_memory_bytes"}
    assert all(set(r) == keys for r in rows)
    assert all(r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in rows)
    assert all(r["calls"] == 4 for r in rows)
    base = [r for r in rows if r["target"].endswith("base")]
    pruned = [r for r in rows if r["target"].endswith("pruned")]
    assert all(p["parameters"] < b["parameters"] for p, b in zip(pruned, base, strict=True))
    assert all(r["disk_bytes"] > 0 for r in rows)


def test_bench_measures_peak_memory_in_a_child_process(targets, capsys):
    code, out, _ = run(capsys, "bench", targets["onnx"], "--rounds", 1, "--block", 1, "--seq", 8,
                       "--json", "-q")
    assert code == 0
    (row,) = json.loads(out)
    # the child loads the model, so its peak is at least the model's size on disk, and it is
    # measured apart from this (larger) test process
    assert row["disk_bytes"] <= row["peak_memory_bytes"] < _rss_of_this_process()


@pytest.mark.parametrize("argv, message", [
    (["missing.onnx"], "does not exist"),
    (["{artifact}", "--backends", "hf"], "is an optc artifact"),
])
def test_bench_errors_are_one_line(targets, capsys, argv, message):
    argv = [a.format(artifact=targets["artifact"]) for a in argv]
    code, out, err = run(capsys, "bench", *argv, "--rounds", 1, "--no-memory", "-q")
    assert code == 3
    assert err.count("\n") == 1 and message in err and out == ""


@pytest.mark.parametrize("argv, message", [
    (["x.onnx", "--seq", 0], "--seq must be at least 1"),
    (["x.onnx", "--warmup", -1], "--warmup must be 0 or more"),
    (["{artifact}", "--backends", "tensorrt"], "unknown backend 'tensorrt'"),
    (["{artifact}", "--backends", "foo"], "choose from eager, torchscript, onnx, hf"),
    (["{artifact}", "--backends", ""], "unknown backend"),
    (["{onnx}", "--backends", "eager"], "can only be timed with onnx"),
    (["{pt}", "--backends", "onnx"], "can only be timed with torchscript"),
    (["{artifact}", "--seq", 65], "--seq 65 is longer than"),
], ids=["seq", "warmup", "tensorrt", "foo", "empty", "onnx-file-eager", "pt-file-onnx", "long-seq"])
def test_bench_usage_errors_exit_2(targets, capsys, argv, message):
    argv = [str(a).format(**targets) for a in argv]
    code, out, err = run(capsys, "bench", *argv, "--rounds", 1, "--no-memory", "-q")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("optc: error:") and message in err
    assert out == ""


def test_bench_default_seq_is_clamped_to_the_positions_with_a_note(targets, capsys):
    code, out, err = run(capsys, "bench", targets["artifact"], "--rounds", 1, "--block", 1,
                         "--warmup", 0, "--no-memory", "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["seq"] == 64  # tiny BERT: 64 positions; the default would be 128
    assert "optc: note: timing at --seq 64" in err and "64 positions" in err


def test_bench_model_directory_knows_its_positions(targets, capsys):
    code, _, err = run(capsys, "bench", targets["model"], "--seq", 100, "--rounds", 1, "-q")
    assert code == 2 and "allows (64 positions): pass --seq 64 or less" in err


def test_bench_file_past_its_positions_is_one_line(targets, capsys):
    code, out, err = run(capsys, "bench", targets["onnx"], "--seq", 100, "--rounds", 1,
                         "--no-memory", "-q")
    assert code == 3
    assert err.count("\n") == 1 and "fails at batch 1, seq 100" in err and "positions" in err


def test_bench_inputs_fit_any_vocabulary():
    inputs = make_inputs(["input_ids", "attention_mask", "token_type_ids"], 2, 5)
    assert inputs["input_ids"].max() < 100 and inputs["attention_mask"].min() == 1
    assert inputs["token_type_ids"].abs().sum() == 0


def test_format_bench_aligns_columns():
    row = {"target": "a", "backend": "onnx", "batch": 1, "seq": 8, "threads": 1, "median_ms": 1.0,
           "p10_ms": 0.9, "p90_ms": 1.1, "ratio": 1.0, "parameters": 1000, "disk_bytes": None,
           "peak_memory_bytes": 2**20}
    text = format_bench([row, {**row, "target": "longer-name", "ratio": 0.5}])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split()[-2:] == ["-", "1.0"]


def test_inspect_diff_shows_removed_layers_heads_and_neurons(targets, capsys):
    code, out, err = run(capsys, "inspect", "--diff", targets["artifact"], targets["pruned"], "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"--- {targets['artifact']}" and lines[1] == f"+++ {targets['pruned']}"
    assert lines[2].startswith("parameters") and "->" in lines[2]
    layer0 = next(line for line in lines if line.startswith("0 "))
    layer1 = next(line for line in lines if line.startswith("1 "))
    assert "4 -> 2" in layer0 and "128 -> 96" in layer0
    assert "removed" in layer1


def test_inspect_diff_json(targets, capsys):
    code, out, _ = run(capsys, "inspect", "--diff", targets["artifact"], targets["pruned"],
                       "--json", "-q")
    assert code == 0
    d = json.loads(out)
    assert d["layers"][0]["heads"] == [4, 2] and d["layers"][0]["ffn"] == [128, 96]
    assert d["layers"][1]["removed"] is True and d["added_layers"] == []
    assert d["parameters"][1] < d["parameters"][0] and d["flops"][1] < d["flops"][0]


def test_inspect_diff_of_a_model_with_itself_changes_nothing(targets, capsys):
    code, out, _ = run(capsys, "inspect", "--diff", targets["artifact"], targets["artifact"],
                       "--json", "-q")
    assert code == 0
    d = json.loads(out)
    assert all(not r["removed"] and r["heads"][0] == r["heads"][1] for r in d["layers"])


def test_inspect_diff_needs_two_models(targets, capsys):
    code, _, err = run(capsys, "inspect", "--diff", targets["artifact"])
    assert code == 2 and "two models" in err
    code, _, err = run(capsys, "inspect", targets["artifact"], targets["pruned"])
    assert code == 2


def test_data_option_feeds_passes_that_measure(targets, tmp_path, capsys):
    data = tmp_path / "calib.txt"
    data.write_text("a short sentence\nanother one here\nand a third\n")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, targets["artifact"], "--passes",
                            "drop-layers{strategy=contribution,count=1},prune-heads{amount=0.25},dce",
                            "--data", data, "--task", "base", "-o", out, "--json", "-q")
    assert code == 0, err
    report = json.loads(stdout)
    specs = [p["pass"] for p in report["passes"]]
    assert specs[0].startswith("drop-layers{strategy=contribution,count=1,data=")
    assert "data=" not in specs[1]  # magnitude needs no data, so it is not given any
    assert "similarity" in report["passes"][0]["stats"]


def test_data_option_with_a_missing_file_fails_before_loading(targets, tmp_path, capsys):
    code, _, err = run(capsys, targets["artifact"], "--passes",
                       "drop-layers{strategy=contribution,count=1}", "--data", tmp_path / "nope.tsv",
                       "-o", tmp_path / "out")
    assert code == 3 and "nope.tsv" in err and not (tmp_path / "out").exists()


def test_measuring_pass_without_data_says_how_to_give_it(targets, tmp_path, capsys):
    code, _, err = run(capsys, targets["artifact"], "--passes",
                       "prune-heads{amount=0.5,criterion=taylor}", "-o", tmp_path / "out")
    assert code == 3 and "--data" in err and not (tmp_path / "out").exists()


def _rss_of_this_process() -> int:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
