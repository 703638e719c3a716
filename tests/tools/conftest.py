"""Fixtures shared by the CLI tests: a tiny BERT model directory and an artifact of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT saved as a Hugging Face directory (safetensors)."""
    path = tmp_path_factory.mktemp("tiny") / "m"
    tiny_model("bert").save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """``optc MODEL_DIR -o OUT``: an optc artifact of the tiny BERT (do not modify)."""
    out = tmp_path_factory.mktemp("art") / "a"
    assert main([str(model_dir), "-o", str(out), "-q"]) == 0
    return out
