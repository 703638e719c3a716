"""CLI: ``hard-attention{k=..,fraction=..}`` is a bad option (exit 2), and a fraction written
with ``--backend hf`` is a backend refusal (exit 6); one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from optc.tools.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_k_with_fraction_exit_2(capsys, artifact: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, artifact, "--passes=hard-attention{k=2,fraction=0.5}",
                         "-o", tmp_path / "o", "-q")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "k or fraction, not both" in err
    assert list(tmp_path.iterdir()) == []


def test_fraction_with_backend_hf_exit_6(capsys, artifact: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, artifact, "--passes=hard-attention{fraction=0.5}",
                         "--backend", "hf", "-o", tmp_path / "o", "-q")
    assert code == 6 and out == ""
    assert len(err.splitlines()) == 1 and "fraction=0.5" in err and "hf backend" in err
    assert list(tmp_path.iterdir()) == []
