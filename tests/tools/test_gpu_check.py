"""tools/checks/gpu.py --dry: the CUDA paths' code run on the CPU. The other rows are covered by
their own tests: bf16/fp32 training, resume, eval and several processes in tests/train, the backends'
outputs and the 2:4 check in tests/backends, QAT, L0 and distillation in tests/passes."""

from __future__ import annotations

import types

import pytest
import torch

from optc.tools.checks import gpu as gpu_check

RUN = ["train fp16", "gradual-prune", "self-check eager"]


def test_dry_run_runs_the_training_and_eval_paths_on_the_cpu(capsys) -> None:
    skip = [c for c in gpu_check.CHECKS if c not in RUN]
    assert gpu_check.main(["--dry", "--steps", "2", "--skip", *skip]) == 0
    out = capsys.readouterr().out
    table = out[out.index("check "):]
    for name in RUN:
        assert any(line.startswith(name) and " ok " in line for line in table.splitlines()), name
    assert f"0 failed, {len(RUN)} ok, 0 skipped" in out


def test_a_failing_check_fails_the_script(monkeypatch, capsys) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "check_distill", broken)
    monkeypatch.setattr(gpu_check, "build_fixture",  # no model needed
                        lambda root: types.SimpleNamespace(data=root))
    keep = {"distill"}
    assert gpu_check.main(["--dry", "--skip", *[c for c in gpu_check.CHECKS if c not in keep]]) == 1
    assert "FAIL  distill" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_it_asks_for_dry(capsys) -> None:
    assert gpu_check.main([]) == 2
    assert "--dry" in capsys.readouterr().out
