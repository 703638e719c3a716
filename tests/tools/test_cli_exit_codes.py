"""Exit codes agree with the README's table: a bad option value is 2, whichever command."""

from __future__ import annotations

from pathlib import Path

import pytest

import optc
from optc.errors import PipelineSpecError
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main


@pytest.mark.parametrize("argv", [
    ["inspect", "no-such-model", "--task", "nope"],  # compile's --task says 2 as well
    ["no-such-model", "--task", "nope"],
    ["no-such-model", "-o", ""],  # empty -o: not "no output" (it used to exit 0)
    ["no-such-model", "-o", "  "],
    ["inspect", "no-such-model", "--graph", ""],
    ["specialize", "no-such-model", "-o", ""],
    ["finetune", "no-such-model", "--task", "sst2", "-o", ""],
    ["report", "no-such-model", "-o", ""],
])
def test_bad_option_values_exit_2_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("optc: error:")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_backend_an_artifact_is_not(tmp_path: Path) -> None:
    module = optc.capture(tiny_model("bert"))
    with pytest.raises(PipelineSpecError, match="backend='nope' is not one: valid: 'eager'"):
        optc.save(module, tmp_path / "a", backend="nope")
    assert not (tmp_path / "a").exists()
