"""optc.outputs: what --force may replace, atomic replacement, no leftovers, interrupts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import optc.outputs as outputs
from optc.errors import OutputError
from optc.outputs import atomic_file, check_output, deferred_interrupts, staged_output


def names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_new_path_is_fine(tmp_path: Path) -> None:
    assert check_output(tmp_path / "x.onnx", False) == tmp_path
    assert check_output(tmp_path / "x", False, kind="artifact") == tmp_path


def test_existing_file_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_text("old")
    with pytest.raises(OutputError, match="--force"):
        check_output(target, False)
    assert check_output(target, True) == tmp_path


@pytest.mark.parametrize("kind", ["file", "artifact"])
def test_plain_directory_is_never_replaced(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="will not replace|not an optc artifact"):
        check_output(target, True, kind=kind)


def test_file_is_not_replaced_by_an_artifact(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("mine")
    with pytest.raises(OutputError, match="not a directory"):
        check_output(target, True, kind="artifact")


def test_symlink_is_never_replaced(tmp_path: Path) -> None:
    real = tmp_path / "real.onnx"
    real.write_text("x")
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output(link, True)


def test_input_file_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("weights")
    with pytest.raises(OutputError, match="input model"):
        check_output(target, True, inputs=[target])
    with pytest.raises(OutputError, match="input model"):
        check_output(tmp_path / "." / "model.safetensors", True, inputs=[str(target)])


@pytest.mark.parametrize("where", [".", "..", "", "cwd"])
def test_current_directory_and_parents_are_refused(tmp_path: Path, monkeypatch, where: str) -> None:
    cwd = tmp_path / "w"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(OutputError):
        check_output(cwd if where == "cwd" else where, True, kind="artifact")


def test_atomic_file_replaces_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    target.write_text("old")
    with atomic_file(target, True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert names(tmp_path) == ["m.pt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_file_failure_keeps_the_old_file(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "m.pt"
    target.write_text("old")
    with pytest.raises(error), atomic_file(target, True) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert names(tmp_path) == ["m.pt"]


@pytest.mark.parametrize("kind", ["file", "artifact"])
def test_staged_output_installs_only_when_complete(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    with staged_output(target, False, kind=kind) as staged:
        assert not staged.exists() and staged.parent != tmp_path
        if kind == "file":
            staged.write_text("new")
        else:
            staged.mkdir()
            (staged / "model.optc").write_text("x")
    assert names(tmp_path) == ["out"]
    with pytest.raises(KeyboardInterrupt), staged_output(tmp_path / "other", False, kind=kind) as staged:
        staged.write_text("half") if kind == "file" else staged.mkdir()
        raise KeyboardInterrupt
    assert names(tmp_path) == ["out"]


def test_staged_output_needs_the_writer_to_write(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="produced no file"), staged_output(tmp_path / "o", False, kind="file"):
        pass
    assert names(tmp_path) == []


def test_deferred_interrupts_hold_ctrl_c_until_the_section_ends() -> None:
    # Python's own handler, as in a user's process (a test run earlier in the same process may
    # have left another one, e.g. the CLI's in-process interrupt handling)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("signalled")  # the handler has run by now, without raising
                done.append("finished")
        assert done == ["signalled", "finished"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_exchange_swaps_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "1").write_text("a")
    (b / "2").write_text("b")
    if not outputs._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert names(a) == ["2"] and names(b) == ["1"]


def test_only_model_files_are_replaced(tmp_path: Path) -> None:
    for name in ("m.onnx", "m.pt", "m.ts", "m.jit"):
        (tmp_path / name).write_text("old")
        assert check_output(tmp_path / name, True) == tmp_path
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(OutputError, match="not a model file"):
        check_output(notes, True)
