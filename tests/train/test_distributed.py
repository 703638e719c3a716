"""Data-parallel training: 2 gloo processes give the weights 1 process gives on the same
global batches (dropout 0).

Tolerance, per weight tensor: ``max|a - b| <= 1e-5 * max|a| + 1e-7``. Sums run in another order
(each rank sums its rows, then the all-reduce sums the ranks), which moves the weights by about
1e-6 of their scale after 4 AdamW steps here (7.5e-7 measured); the absolute 1e-7 covers weights
whose gradient is zero in exact arithmetic (attention key biases: softmax ignores a constant
shift), where Adam turns rounding noise (~1e-9) into steps of ~1e-8 either way."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import optc
from optc.artifacts import load_module
from optc.tools.cli.main import main
from optc.tools.cli.train import _without_nproc
from optc.train.distributed import Share, World, shard

TASK = "text-classification"


def test_shards_cover_each_global_batch_once() -> None:
    rows = list(range(7))
    parts = [shard(rows, World(r, 3, "gloo")) for r in range(3)]
    assert sorted(sum(parts, [])) == rows and [len(p) for p in parts] == [3, 2, 2]
    assert Share() == Share(1.0, 1.0)
    assert _without_nproc(["m", "--nproc", "2", "--npr=3", "--seed", "1"]) == ["m", "--seed", "1"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_gloo_processes_train_the_weights_one_process_trains(tmp_path, _captured, tokenizer,
                                                                  tok_dir,
                                                                  task_dir) -> None:
    module = _captured[1].clone()
    module.meta["source"]["tokenizer"] = str(tok_dir)
    model = tmp_path / "model"
    optc.save(module, model)
    common = [str(model), "--task", TASK, "--data", str(task_dir), "--max-steps", "4",
              "--batch-size", "16", "--lr", "1e-3", "--dropout", "0", "--seed", "0",
              "--eval-split", "val", "--threads", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    two = subprocess.run([sys.executable, "-m", "optc", "finetune", *common, "--nproc", "2",
                          "-o", str(tmp_path / "two"), "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert '"processes": 2' in two.stdout  # one report, from rank 0
    assert main(["finetune", *common, "-o", str(tmp_path / "one")]) == 0
    one, got = load_module(tmp_path / "one"), load_module(tmp_path / "two")
    assert got.meta["task"]["trained_steps"] == one.meta["task"]["trained_steps"] == 4
    assert got.meta["task"]["eval"]["step"] == 4  # rank 0 evaluated
    for name, param in one.params.items():
        a, b = param.data, got.params[name].data
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.is_floating_point():
            gap = float((a - b).abs().max())
            assert gap <= 1e-5 * float(a.abs().max()) + 1e-7, f"@{name} differs by {gap:.2e}"
        else:
            assert torch.equal(a, b)
    assert any(not torch.equal(one.params[n].data, module.params[n].data)
               for n in module.params)  # training moved the weights
