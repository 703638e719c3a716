"""``optc tasks``: every registered task with its head, files, metrics and options."""

from __future__ import annotations

import json

import pytest

from optc.tasks import all_tasks
from optc.tools.cli.main import main


def test_lists_every_task_with_head_files_and_metrics(capsys):
    assert main(["tasks", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == list(all_tasks())
    by_name = {t["name"]: t for t in listed}
    assert by_name["sst2"]["head"] == "sequence-classification"
    assert by_name["sst2"]["data"] == "glue/SST-2" and by_name["sst2"]["metrics"] == ["accuracy"]
    assert by_name["squad"]["metrics"][0] == "f1"  # the main metric first
    options = {o["name"]: o["default"] for o in by_name["text-classification"]["options"]}
    assert options["header"] is True and "labels" in options
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in all_tasks())


def test_one_task_and_unknown_names(capsys):
    assert main(["tasks", "sts-b"]) == 0  # an alias
    out = capsys.readouterr().out
    assert out.startswith("stsb") and "pearson" in out
    assert main(["tasks", "text-classification"]) == 0
    assert "  header=true" in capsys.readouterr().out
    assert main(["tasks", "nope"]) == 3
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err and len(err.strip().splitlines()) == 1
