"""optc eval with a token limit or tokenizer that does not fit the model: one line on stderr
with the documented exit code (2: a bad --max-length; 3: a tokenizer larger than the model's
vocabulary), never a tokenizer panic or an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf

from optc.frontends.huggingface import load_tokenizer
from optc.tools.cli.main import main


def _qa_dir(path: Path, vocab: int) -> Path:
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, vocab_size=vocab, max_position_embeddings=64)
    tf.AutoModelForQuestionAnswering.from_config(config).save_pretrained(path)
    load_tokenizer(None).save_pretrained(path)  # MiniLM's 30522 tokens
    return path


@pytest.fixture(scope="module")
def qa_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa")
    return {"fits": _qa_dir(root / "fits", 30522), "small-vocab": _qa_dir(root / "small", 1000)}


@pytest.mark.parametrize("model, options, code, message", [
    ("fits", [], 0, None),  # the default 384 tokens, clamped to the 64 positions
    ("fits", ["--max-length", "100"], 2,
     "max_length 100 (--max-length) is longer than the model's position table: give at most 64 "
     "tokens"),
    ("fits", ["--max-length", "12"], 2, "which leaves no room for the context: give a max_length "
     "(--max-length) above"),
    ("small-vocab", [], 3, "evaluating squad: the tokenizer has 30522 tokens but the model's "
     "embedding table has 1000 rows"),
], ids=["default-clamped", "past-positions", "no-room-for-context", "tokenizer-past-vocab"])
def test_eval_squad_limits(capsys, qa_dirs, data_dir: Path, model, options, code, message):
    capsys.readouterr()
    got = main(["eval", str(qa_dirs[model]), "--task", "squad", "--data", str(data_dir / "squad"),
                "--limit", "3", "-q", *options])
    _, err = capsys.readouterr()
    assert got == code, err
    assert "Traceback" not in err and "panicked" not in err
    if message is not None:
        lines = [line for line in err.splitlines() if line.startswith("optc: error:")]
        assert len(lines) == 1 and message in lines[0], err
