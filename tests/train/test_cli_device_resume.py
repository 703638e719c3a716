"""optc finetune --device/--precision/--checkpoint-*/--resume and optc eval --device."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.artifacts import load_module
from optc.tools.cli.main import main

TASK = "text-classification"


@pytest.fixture
def artifact(tmp_path, _captured, tokenizer, tok_dir):
    module = _captured[1].clone()
    module.meta["source"]["tokenizer"] = str(tok_dir)
    path = tmp_path / "model"
    optc.save(module, path)
    return path


def _args(artifact, task_dir, out, *extra):
    return ["finetune", str(artifact), "--task", TASK, "--data", str(task_dir), "--max-steps",
            "4", "--batch-size", "16", "--lr", "3e-3", "--eval-split", "none", "-q", "-o",
            str(out), *extra]


def test_resume_from_a_checkpoint_reaches_the_uninterrupted_weights(tmp_path, artifact,
                                                                    task_dir) -> None:
    ck = tmp_path / "ck"
    assert main(_args(artifact, task_dir, tmp_path / "whole", "--checkpoint-dir", str(ck),
                      "--checkpoint-every", "3", "--precision", "bf16", "--device", "cpu")) == 0
    assert [p.name for p in ck.iterdir()] == ["step-000003"]  # none after the last step
    assert main(_args(artifact, task_dir, tmp_path / "resumed", "--resume", str(ck),
                      "--precision", "bf16")) == 0
    whole, resumed = load_module(tmp_path / "whole"), load_module(tmp_path / "resumed")
    assert whole.meta["task"]["trained_steps"] == 4
    assert all(torch.equal(p.data, resumed.params[n].data) for n, p in whole.params.items())
    # another recipe than the checkpoint's is refused, in one line
    assert main(_args(artifact, task_dir, tmp_path / "other", "--resume", str(ck))) == 3


def test_device_and_checkpoint_usage_errors(tmp_path, artifact, task_dir, capsys) -> None:
    if not torch.cuda.is_available():
        assert main(_args(artifact, task_dir, tmp_path / "o", "--device", "cuda")) == 3
        err = capsys.readouterr().err
        assert "torch sees no CUDA device" in err and len(err.strip().splitlines()) == 1
        assert main(["eval", str(artifact), "--device", "cuda", "--task", TASK]) == 3
    assert main(_args(artifact, task_dir, tmp_path / "o", "--checkpoint-every", "2")) == 2
    assert "--checkpoint-every needs --checkpoint-dir" in capsys.readouterr().err
    assert main(_args(artifact, task_dir, tmp_path / "o", "--resume", str(tmp_path))) == 3
    assert "holds no checkpoint" in capsys.readouterr().err
