"""tools/gpu_check.py --dry: the CUDA paths' code run on the CPU (the slow rows — ONNX export,
the 2:4 check, several processes, QAT, resume — are covered by their own tests)."""

from __future__ import annotations

import pytest
import torch

from optc.tools import gpu_check

SLOW = ["semi-structured 2:4", "self-check onnx", "self-check torchscript", "self-check hf",
        "2 processes", "qat", "resume", "search evaluation"]


def test_dry_run_runs_the_training_and_eval_paths_on_the_cpu(capsys) -> None:
    assert gpu_check.main(["--dry", "--steps", "2", "--skip", *SLOW]) == 0
    out = capsys.readouterr().out
    table = out[out.index("check "):]
    for name in ("train fp32", "train bf16", "train fp16", "distill", "gradual-prune", "l0-prune",
                 "eval", "self-check eager"):
        assert any(line.startswith(name) and " ok " in line for line in table.splitlines()), name
    assert "0 failed, 8 ok, 0 skipped" in out


def test_a_failing_check_fails_the_script(monkeypatch, capsys) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "check_distill", broken)
    keep = {"distill"}
    assert gpu_check.main(["--dry", "--skip", *[c for c in gpu_check.CHECKS if c not in keep]]) == 1
    assert "FAIL  distill" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_it_asks_for_dry(capsys) -> None:
    assert gpu_check.main([]) == 2
    assert "--dry" in capsys.readouterr().out
