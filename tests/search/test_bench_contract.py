"""tools/bench/specialize.py --max-drop: the contract's row per task on a tiny model."""

from __future__ import annotations

import json

import optc
from optc.artifacts import is_artifact
from optc.tests.search.conftest import TASK
from optc.tools.bench import specialize as bench_specialize


def test_bench_contract_reports_and_saves_a_row(module, task_dir, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    optc.save(module, models / f"{TASK}-minilm", extra={"task": module.meta["task"]})
    recipe = tmp_path / "fast.toml"
    recipe.write_text("kinds = ['heads']\nk = 3\nneuron_groups = 3\n")
    code = bench_specialize.main(["--tasks", TASK, "--models", str(models), "--data",
                                  str(task_dir), "--val-size", "0.4", "--max-drop", "100",
                                  "--backend", "eager", "--int8", "off", "--recipe",
                                  str(recipe), "--save"])
    assert code == 0
    out = capsys.readouterr().out
    row = json.loads((models / f"{TASK}-contract-100.json").read_text())
    assert row["task"] == TASK and row["held_examples"] == 40 and not row["int8"]
    assert row["held_ci"][0] <= row["held_after"] - row["held"] <= row["held_ci"][1]
    assert row["dev_ci"][0] <= row["dev_after"] - row["dev"] <= row["dev_ci"][1]
    assert row["held_after"] >= row["held"] - 100
    assert row["speedup"] > 0 and (row["removed"] == 0) == bool(row["fallback"])
    assert is_artifact(models / f"{TASK}-contract-100")
    assert "held-out -> after" in out and f"\n{TASK}  " in out
