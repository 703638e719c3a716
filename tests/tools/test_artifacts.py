"""optc.save / optc.load / optc.load_module: round trip, overwrite rules, atomic writes, and
refusal of damaged, incomplete, newer or pickled artifacts."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import optc
from optc.artifacts import FORMAT_VERSION, is_artifact, read_metadata
from optc.backends.eager import EagerModule
from optc.errors import ArtifactError, InputError, OptcError, OutputError
from optc.ir import collect_problems, print_module
from optc.tests.conftest import tiny_model, token_inputs

FILES = ["metadata.json", "model.optc", "weights.safetensors"]


@pytest.fixture(scope="module")
def hf_bert() -> torch.nn.Module:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def module(hf_bert) -> optc.Module:
    """The captured tiny BERT; tests must not modify it."""
    return optc.capture(hf_bert, source={"model": "tiny-bert"})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, module) -> Path:
    """An artifact of ``module``; copy it before damaging it."""
    return optc.save(module, tmp_path_factory.mktemp("saved") / "art")


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "art"
    shutil.copytree(saved, target)
    return target


def assert_close(got: dict[str, torch.Tensor], want, atol: float = 1e-5) -> None:
    for key, value in got.items():
        assert (value - want[key]).abs().max().item() <= atol, key


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith((f".{name}.tmp-", f".{name}.old-"))]


# -- round trip ---------------------------------------------------------------------------------
def test_save_then_load_matches_the_model(saved: Path, module, hf_bert) -> None:
    assert sorted(p.name for p in saved.iterdir()) == FILES
    assert is_artifact(saved)
    meta = read_metadata(saved)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["source"]["model"] == "tiny-bert"
    assert meta["parameters"] == module.num_parameters()
    compiled = optc.load(saved)
    assert isinstance(compiled, EagerModule)
    assert print_module(compiled.ir) == print_module(module)
    inputs = token_inputs(hf_bert, 3, 9)
    with torch.no_grad():
        assert_close(compiled(**inputs), hf_bert(**inputs))


def test_saved_files_have_ordinary_permissions(saved: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o777 & ~umask
    for name in FILES:
        assert (saved / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_module_is_verified_and_complete(saved: Path, module) -> None:
    loaded = optc.load_module(saved)
    assert collect_problems(loaded) == []
    assert set(loaded.params) == set(module.params)
    for name, param in module.params.items():
        assert torch.equal(loaded.params[name].data, param.data), name


def test_save_of_a_loaded_module(saved: Path, tmp_path: Path, hf_bert) -> None:
    compiled = optc.load(saved)
    again = optc.save(compiled, tmp_path / "again")
    assert sorted(p.name for p in again.iterdir()) == FILES
    assert print_module(optc.load_module(again)) == print_module(compiled.ir)
    inputs = token_inputs(hf_bert, 2, 6)
    with torch.no_grad():
        assert_close(optc.load(again)(**inputs), hf_bert(**inputs))


def test_save_rejects_what_is_not_a_module(tmp_path: Path) -> None:
    with pytest.raises(OptcError, match="needs an optc IR module"):
        optc.save(torch.nn.Linear(2, 2), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_extra_metadata_is_recorded(module, tmp_path: Path) -> None:
    path = optc.save(module, tmp_path / "x", extra={"note": "hello"}, backend="eager")
    assert read_metadata(path)["note"] == "hello"


# -- overwrite rules and atomic writes ----------------------------------------------------------
def test_save_refuses_existing_path_without_force(module, saved: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    shutil.copytree(saved, target)
    (target / "model.optc").write_text("module @old {}\n")
    with pytest.raises(OutputError, match="already exists"):
        optc.save(module, target)
    assert (target / "model.optc").read_text() == "module @old {}\n"

    optc.save(module, target, force=True)
    assert sorted(p.name for p in target.iterdir()) == FILES
    assert optc.load_module(target).num_parameters() == module.num_parameters()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_never_replaces_a_directory_that_is_not_an_artifact(module, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(OutputError, match="not an optc artifact"):
            optc.save(module, target, force=force)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"
    assert leftovers(tmp_path, "out") == []


def test_force_never_replaces_foreign_metadata(module, copy: Path) -> None:
    (copy / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(OutputError, match="not an optc artifact"):
        optc.save(module, copy, force=True)
    assert json.loads((copy / "metadata.json").read_text()) == {"format": "something-else"}


def test_force_never_replaces_a_file_with_an_artifact(module, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(OutputError, match="not a directory"):
        optc.save(module, target, force=True)
    assert target.read_text() == "a file"


def test_force_never_replaces_the_input_or_what_contains_it(module, copy: Path) -> None:
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(OutputError, match="input model"):
        optc.save(module, copy, force=True, inputs=[copy])
    with pytest.raises(OutputError, match="contains the input"):
        optc.save(module, copy, force=True, inputs=[copy / "model.optc"])
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert leftovers(copy.parent, copy.name) == []


@pytest.mark.parametrize("where", [".", "..", "here"])
def test_force_never_replaces_the_current_directory(module, saved: Path, tmp_path: Path,
                                                    monkeypatch, where: str) -> None:
    cwd = tmp_path / "work"
    shutil.copytree(saved, cwd)  # even when the current directory is an artifact
    monkeypatch.chdir(cwd)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    target = cwd if where == "here" else Path(where)
    with pytest.raises(OutputError, match="current directory|new name"):
        optc.save(module, target, force=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_save_and_load_refuse_bad_arguments(module, hf_bert, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="optc.capture"):
        optc.save(hf_bert, tmp_path / "x")
    with pytest.raises(InputError, match="path of an artifact"):
        optc.save(module, None)
    with pytest.raises(InputError, match="path of an artifact"):
        optc.load(None)
    with pytest.raises(InputError, match="path of an artifact"):
        optc.load_module(3)
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_directory(module, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        optc.save(module, tmp_path / "no" / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_nothing(module, tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        optc.save(module, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_replace_keeps_the_old_artifact(module, copy: Path, monkeypatch) -> None:
    import optc.outputs

    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def failing_exchange(a, b):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(optc.outputs, "_exchange", failing_exchange)
    with pytest.raises(OutputError, match="Input/output error"):
        optc.save(module, copy, force=True)
    monkeypatch.undo()
    assert leftovers(copy.parent, copy.name) == []
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_failed_replace_without_atomic_swap_rolls_back(module, copy: Path, monkeypatch) -> None:
    import optc.outputs

    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new artifact's rename into place
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(optc.outputs, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OutputError):
        optc.save(module, copy, force=True)
    monkeypatch.undo()
    assert len(calls) == 3  # aside, failed install, put back
    assert leftovers(copy.parent, copy.name) == []
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_replace_without_atomic_swap(module, copy: Path, monkeypatch) -> None:
    import optc.outputs

    (copy / "model.optc").write_text("module @old {}\n")
    monkeypatch.setattr(optc.outputs, "_exchange", lambda a, b: False)
    optc.save(module, copy, force=True)
    assert print_module(optc.load_module(copy)) == print_module(module)
    assert leftovers(copy.parent, copy.name) == []


def test_interrupted_replace_keeps_the_old_artifact(module, copy: Path, monkeypatch) -> None:
    import safetensors.torch

    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optc.save(module, copy, force=True)
    assert leftovers(copy.parent, copy.name) == []
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


# -- loading never unpickles --------------------------------------------------------------------
def test_load_never_unpickles(saved: Path, hf_bert, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("optc.load must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    compiled = optc.load(saved)
    inputs = token_inputs(hf_bert, 2, 5)
    with torch.no_grad():
        out = compiled(**inputs)
    monkeypatch.undo()
    with torch.no_grad():
        assert_close(out, hf_bert(**inputs))


# -- damaged artifacts --------------------------------------------------------------------------
def test_newer_format_version_is_refused(copy: Path) -> None:
    meta = json.loads((copy / "metadata.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer optc"):
        optc.load(copy)


def test_foreign_metadata_is_refused(copy: Path) -> None:
    (copy / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an optc artifact"):
        optc.load_module(copy)


def test_unparseable_metadata_is_refused(copy: Path) -> None:
    (copy / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="metadata.json"):
        optc.load_module(copy)


@pytest.mark.parametrize("text", ['[1, 2]', '{"format": "optc-artifact", "format_version": "abc"}',
                                  '{"format": "optc-artifact", "format_version": null}'],
                         ids=["list", "string-version", "null-version"])
def test_malformed_metadata_is_artifact_error(copy: Path, text: str) -> None:
    (copy / "metadata.json").write_text(text)
    with pytest.raises(ArtifactError):
        optc.load_module(copy)


def test_missing_weights_file(copy: Path) -> None:
    (copy / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        optc.load(copy)


@pytest.mark.parametrize("keep", [0, 4, 0.5], ids=["empty", "4-bytes", "half"])
def test_truncated_weights(copy: Path, keep: float) -> None:
    weights = copy / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ArtifactError, match="cannot read .*weights.safetensors"):
        optc.load_module(copy)


def test_weights_missing_a_parameter(copy: Path) -> None:
    weights = load_file(str(copy / "weights.safetensors"))
    del weights["pooler.dense.bias"]
    save_file(weights, str(copy / "weights.safetensors"))
    with pytest.raises(ArtifactError, match="@pooler.dense.bias"):
        optc.load_module(copy)


def test_weights_with_the_wrong_shape(copy: Path) -> None:
    weights = load_file(str(copy / "weights.safetensors"))
    weights["pooler.dense.bias"] = torch.zeros(3)
    save_file(weights, str(copy / "weights.safetensors"))
    with pytest.raises(OptcError, match="pooler.dense.bias") as info:
        optc.load_module(copy)
    assert info.value.exit_code == 3


def test_damaged_ir_text(copy: Path) -> None:
    (copy / "model.optc").write_text("module @x {")
    with pytest.raises(OptcError, match="IR parse error") as info:
        optc.load_module(copy)
    assert info.value.exit_code == 3


def test_ir_text_that_is_not_utf8(copy: Path) -> None:
    (copy / "model.optc").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(ArtifactError):
        optc.load_module(copy)


def test_load_of_nonexistent_or_non_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        optc.load(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not an optc artifact"):
        optc.load(tmp_path / "file")
    assert not is_artifact(tmp_path / "file")
    assert not is_artifact(tmp_path)


def test_a_corrupted_model_optc_with_a_huge_line_is_one_short_error(artifact, tmp_path, capsys):
    import shutil

    from optc.tools.cli.main import main

    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    text = (broken / "model.optc").read_text()
    (broken / "model.optc").write_text(text.replace("\n", "\n  " + "x" * 5_000_000 + "\n", 1))
    code = main(["inspect", str(broken), "--no-ir", "-q"])
    err = capsys.readouterr().err
    assert code == 3
    assert len(err.splitlines()) == 1 and err.startswith("optc: error: IR parse error")
    assert len(err) < 500, err[:600]


def test_an_unknown_op_is_named_as_missing_not_damage(saved: Path, tmp_path: Path) -> None:
    """An artifact using an op this optc does not register (a newer optc's, or a plugin's that
    is not installed) says so, instead of calling the artifact damaged."""
    copy = tmp_path / "newer"
    shutil.copytree(saved, copy)
    ir = copy / "model.optc"
    text = ir.read_text()
    assert "= layer_norm(" in text
    ir.write_text(text.replace("= layer_norm(", "= fancy_norm(", 1))
    with pytest.raises(ArtifactError, match=r"uses unknown op 'fancy_norm'; did you mean "
                       r"'layer_norm'.*newer optc or with a plugin op that is not installed"):
        optc.load_module(copy)
