"""tools/bench/specialize.py on a tiny model: a row per task with every column, and the saved
models and row (the tool's real runs fine-tune MiniLM; here the artifact is already there)."""

from __future__ import annotations

import json

import pytest

import optc
from optc.artifacts import is_artifact
from optc.tests.search.conftest import TASK
from optc.tools.bench import specialize as bench_specialize


@pytest.fixture
def untimed(monkeypatch):
    """Skip the row's timings (ONNX exports and runs of three models, the search tricks' timed
    evaluations) in tests of what the search reads and writes: the timed columns are checked
    in test_bench_specialize_reports_and_saves_each_task."""
    monkeypatch.setattr(bench_specialize, "_onnx_latency", lambda modules, **kw: [1.0] * len(modules))
    monkeypatch.setattr(bench_specialize, "_trick_speedups", lambda *args: {})


def _models(module, tmp_path):
    """A --models directory holding ``module`` as the task's fine-tuned model."""
    models = tmp_path / "models"
    models.mkdir()
    optc.save(module, models / f"{TASK}-minilm", extra={"task": module.meta["task"]})
    return models


def test_bench_specialize_reports_and_saves_each_task(module, task_dir, tmp_path, capsys):
    models = _models(module, tmp_path)
    code = bench_specialize.main(["--tasks", TASK, "--models", str(models), "--data",
                                  str(task_dir), "--rule", "metric",
                                  "--tolerance", "100", "--kinds", "ffn,attention",
                                  "--sweeps", "2", "--then", "dce", "--save", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    tag = "metric-100-ffn+attention-sweeps2"
    row = json.loads((models / f"{TASK}-spec-{tag}.json").read_text())
    assert row["task"] == TASK and row["rule"] == tag
    # a tolerance of 100 points accepts every block: the model keeps only embeddings and head
    assert row["accepted"] == 4 and row["sweeps"] == 2 and row["flops"] < 0.1
    assert row["latency"] > 0 and row["latency_then"] > 0 and row["evals"] == 5
    low, high = row["dev_spec_ci"]
    assert low <= row["dev_spec"] - row["dev"] <= high
    assert row["drop_flops"] < 1 and set(row["tricks"]) == {"prefix reuse", "full model",
                                                            "unsorted batches"}
    for kind in ("spec", "drop", "then"):
        assert is_artifact(models / f"{TASK}-{kind}-{tag}")
    spec = optc.load_module(models / f"{TASK}-spec-{tag}")
    assert spec.num_parameters() < module.num_parameters()
    table = out[out.index("task  dev"):]
    assert f"\n{TASK}  " in table and "dev then" in table and "prefix reuse" in table
    # validation figures: the input's, the committed model's and after --then dce (which
    # keeps the function)
    assert row["val"] is not None and row["val_spec"] == pytest.approx(row["val_then"])
    assert "val base/spec" in table and "val then" in table
    # --retime times what --save wrote, without searching again
    assert bench_specialize.main(["--tasks", f"{TASK},sst2", "--models", str(models), "--rule",
                                  "metric", "--tolerance", "100", "--kinds", "ffn,attention",
                                  "--sweeps", "2", "--retime"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = next(line for line in lines if line.startswith(f"{TASK}  ")).split()
    assert len(cells) == 5 and all(float(c) > 0 for c in cells[1:])
    assert any(line.startswith("sst2  (no saved models") for line in lines)


def test_bench_specialize_data_takes_one_task(task_dir, capsys):
    with pytest.raises(SystemExit) as info:
        bench_specialize.main(["--tasks", "sst2,rte", "--data", str(task_dir)])
    assert info.value.code == 2
    assert "give one task with --tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        bench_specialize.main(["--tasks", "sst2,rte", "--val-data", str(task_dir / "dev.tsv")])
    assert info.value.code == 2
    assert "give one task with --tasks" in capsys.readouterr().err


def test_bench_specialize_searches_a_given_validation_file(module, task_dir, tmp_path, capsys,
                                                           untimed):
    models = _models(module, tmp_path)
    code = bench_specialize.main(["--tasks", TASK, "--models", str(models), "--data",
                                  str(task_dir), "--val-data", str(task_dir / "dev.tsv"),
                                  "--rule", "metric", "--kinds", "ffn", "--save"])
    assert code == 0
    row = json.loads((models / f"{TASK}-spec-metric-0-ffn-valfile-dev.json").read_text())
    # searched on the dev file: the input's validation metric is its dev metric
    assert row["val"] == pytest.approx(row["dev"]) and row["val_spec"] == pytest.approx(row["dev_spec"])


def test_bench_specialize_confirms_on_a_held_out_part(module, task_dir, tmp_path, capsys, untimed):
    models = _models(module, tmp_path)
    code = bench_specialize.main(["--tasks", TASK, "--models", str(models), "--data",
                                  str(task_dir), "--val-data", str(task_dir / "dev.tsv"),
                                  "--confirm", "0.5", "--rule", "metric", "--tolerance", "100",
                                  "--kinds", "ffn", "--save"])
    assert code == 0
    row = json.loads((models / f"{TASK}-spec-metric-100-ffn-valfile-dev-confirm0.5.json")
                     .read_text())
    # a 100-point tolerance passes everywhere: every acceptance is confirmed
    assert row["accepted"] > 0 and row["confirmed"] == [f"{row['accepted']}/{row['accepted']}"]
    held = row["confirmation"][0]
    assert held["examples"] == 20 and [p["passes"] for p in held["prefixes"]] == [True]
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("task  dev"))
    assert lines[header].endswith("confirmed per round")
    assert lines[header + 1].endswith(f"  {row['accepted']}/{row['accepted']}")


def test_bench_specialize_searches_the_split_the_fine_tuning_held_out(module, task_dir,
                                                                       tmp_path, capsys, untimed):
    module.meta["task"] = {**module.meta["task"], "holdout": {"val_size": 0.3, "seed": 5}}
    models = _models(module, tmp_path)
    common = ["--tasks", TASK, "--models", str(models), "--data", str(task_dir), "--rule",
              "metric", "--kinds", "ffn", "--save"]
    assert bench_specialize.main(common) == 0
    spec = optc.load_module(models / f"{TASK}-spec-metric-0-ffn")
    assert spec.meta["specialization"]["validation"] == {"val_size": 0.3, "seed": 5}
    assert "warning" not in capsys.readouterr().err
    # another seed is searched when asked for, with a warning that the model trained on it
    assert bench_specialize.main([*common, "--seed", "1"]) == 0
    spec = optc.load_module(models / f"{TASK}-spec-metric-0-ffn")
    assert spec.meta["specialization"]["validation"] == {"val_size": 0.3, "seed": 1}
    assert f"warning: {TASK}: the validation split (val_size=0.3, seed=1) is not the one " \
        "held out" in capsys.readouterr().err
    # --max-flips reaches the search and names the saved run
    assert bench_specialize.main([*common, "--max-flips", "0"]) == 0
    spec = optc.load_module(models / f"{TASK}-spec-metric-0-ffn-flips0")
    assert spec.meta["specialization"]["max_flips"] == 0
