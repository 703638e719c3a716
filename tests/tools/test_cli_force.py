"""``--force`` replaces only optc's own outputs of the same kind, never an input, the current
directory, or anything that is not an optc output; replacing is atomic and leaves nothing."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from optc.tools.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error:"), err
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def no_leftovers(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


@pytest.fixture
def work(tmp_path: Path, model_dir: Path, artifact: Path) -> Path:
    shutil.copytree(model_dir, tmp_path / "m")
    shutil.copytree(artifact, tmp_path / "a")
    return tmp_path


def test_force_refuses_artifact_input_as_output(capsys, work: Path) -> None:
    before = snapshot(work / "a")
    code, _, err = run(capsys, work / "a", "-o", work / "a", "--force", "-q")
    assert code == 4
    assert "input model" in one_line(err)
    assert snapshot(work / "a") == before
    no_leftovers(work)


def test_force_refuses_hf_model_directory_input(capsys, work: Path) -> None:
    before = snapshot(work / "m")
    code, _, err = run(capsys, work / "m", "-o", work / "m", "--force", "-q")
    assert code == 4
    assert "input model" in one_line(err)
    assert snapshot(work / "m") == before
    no_leftovers(work)


def test_force_refuses_a_directory_containing_the_input(capsys, work: Path, monkeypatch) -> None:
    monkeypatch.chdir(work / "m")
    before = snapshot(work)
    code, _, err = run(capsys, work / "a", "-o", work, "--force", "-q")
    assert code == 4
    one_line(err)
    assert snapshot(work) == before


@pytest.mark.parametrize("out", [".", ".."])
def test_force_refuses_the_current_directory(capsys, work: Path, monkeypatch, out: str) -> None:
    monkeypatch.chdir(work / "a")  # even an artifact, when it is where we stand
    before = snapshot(work)
    code, _, err = run(capsys, work / "m", "-o", out, "--force", "-q")
    assert code == 4
    one_line(err)
    assert snapshot(work) == before
    assert sorted(p.name for p in work.iterdir()) == ["a", "m"]


def test_force_refuses_a_directory_that_is_not_an_artifact(capsys, work: Path) -> None:
    target = work / "docs"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, work / "a", "-o", target, "--force", "-q")
    assert code == 4
    assert "not an optc artifact" in one_line(err)
    assert (target / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]
    no_leftovers(work)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_force_refuses_a_directory_where_a_file_goes(capsys, work: Path, backend: str) -> None:
    before = snapshot(work / "a")
    code, _, err = run(capsys, work / "m", "--backend", backend, "-o", work / "a", "--force", "-q")
    assert code == 4
    assert "directory" in one_line(err)
    assert snapshot(work / "a") == before


def test_force_refuses_a_file_where_an_artifact_goes(capsys, work: Path) -> None:
    target = work / "model.pt"
    target.write_bytes(b"not mine")
    code, _, err = run(capsys, work / "a", "-o", target, "--force", "-q")
    assert code == 4
    one_line(err)
    assert target.read_bytes() == b"not mine"


def test_force_refuses_the_data_file(capsys, work: Path) -> None:
    data = work / "calib.txt"
    data.write_text("a sentence\n")
    code, _, err = run(capsys, work / "a", "--data", data, "--backend", "torchscript", "-o", data,
                       "--force", "-q")
    assert code == 4
    assert "input" in one_line(err)
    assert data.read_text() == "a sentence\n"


def test_force_replaces_an_artifact(capsys, work: Path) -> None:
    code, _, err = run(capsys, work / "m", "--passes=dce", "-o", work / "a", "--force", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (work / "a").iterdir()) == ["metadata.json", "model.optc",
                                                             "weights.safetensors"]
    no_leftovers(work)


def test_force_replaces_a_torchscript_file(capsys, work: Path) -> None:
    target = work / "model.pt"
    target.write_bytes(b"old build")
    code, _, err = run(capsys, work / "a", "--backend", "torchscript", "-o", target, "--force", "-q")
    assert code == 0, err
    scripted = torch.jit.load(str(target))
    assert "input_ids" in [a.name for a in scripted.forward.schema.arguments]
    assert sorted(p.name for p in work.iterdir()) == ["a", "m", "model.pt"]


def test_force_refuses_a_file_that_is_not_a_model_file(capsys, work: Path) -> None:
    notes = work / "notes.txt"
    notes.write_text("my notes")
    code, _, err = run(capsys, work / "a", "--backend", "torchscript", "-o", notes, "--force", "-q")
    assert code == 4
    assert "not a model file" in one_line(err)
    assert notes.read_text() == "my notes"
