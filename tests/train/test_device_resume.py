"""Devices, precisions and resumable runs of finetune/distill on a tiny random BERT."""

from __future__ import annotations

import pytest
import torch

from optc.errors import InputError
from optc.ir.analysis import analyze
from optc.ir.attributes import Sparsity
from optc.passes.gradual_prune import GradualPrune
from optc.tasks import get_task
from optc.train import TrainingInterrupted, finetune
from optc.train.gates import L0Gates, size_model

TASK = "text-classification"


@pytest.fixture
def fresh(_captured):
    """A new copy of the session's captured tiny BERT on each call (capturing is slow)."""
    return lambda: _captured[1].clone()


def _data(task_dir):
    task = get_task(TASK)
    train = task.read("train", task_dir, val_size=0)[:24]
    evals = task.read("dev", task_dir)[:16]
    return {"train_examples": train, "eval_examples": evals}


def _weights(module) -> dict[str, torch.Tensor]:
    return {name: p.data for name, p in module.params.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu_and_writes_back_fp32(precision, fresh, task_dir,
                                                                tokenizer) -> None:
    module = fresh()
    name = next(n for n in module.params if n.endswith("intermediate.dense.weight"))
    data = module.params[name].data.clone()
    data[data.abs() < data.abs().median()] = 0
    module.params[name].data = data
    module.params[name].attrs["sparsity"] = Sparsity("unstructured", 0.5)
    dtypes = {n: p.data.dtype for n, p in module.params.items()}
    report = finetune(module, TASK, tokenizer=tokenizer, max_steps=3, batch_size=8, lr=3e-3,
                      eval_split=None, device="cpu", precision=precision, **_data(task_dir))
    assert report.extra["precision"] == precision and report.extra["device"] == "cpu"
    assert all(torch.isfinite(torch.tensor(report.losses)))
    assert {n: p.data.dtype for n, p in module.params.items() if n in dtypes} == dtypes
    trained = module.params[name].data
    assert trained.device.type == "cpu" and not torch.equal(trained, data)
    assert torch.count_nonzero(trained[data == 0]) == 0  # masks stay exact under autocast


def test_bad_devices_and_precisions_are_refused(fresh, task_dir, tokenizer) -> None:
    module = fresh()
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="torch sees no CUDA device"):
            finetune(module, TASK, tokenizer=tokenizer, device="cuda", **_data(task_dir))
    with pytest.raises(InputError, match="unknown device"):
        finetune(module, TASK, tokenizer=tokenizer, device="tpu9", **_data(task_dir))
    with pytest.raises(InputError, match="unknown precision"):
        finetune(module, TASK, tokenizer=tokenizer, precision="fp8", **_data(task_dir))
    with pytest.raises(InputError, match="checkpoint_every needs checkpoint_dir"):
        finetune(module, TASK, tokenizer=tokenizer, checkpoint_every=2, **_data(task_dir))
    assert "classifier.weight" not in module.params  # refused before the head was added


def _stop_at(step: int):
    def progress(info) -> None:
        if info.step == step:
            raise KeyboardInterrupt
    return progress


def _run(module, tokenizer, task_dir, **kw):
    return finetune(module, TASK, tokenizer=tokenizer, max_steps=5, batch_size=8, lr=3e-3,
                    eval_split="val", seed=3, **_data(task_dir), **kw)


def test_an_interrupted_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, fresh, task_dir,
                                                                  tokenizer) -> None:
    whole = fresh()
    expected = _run(whole, tokenizer, task_dir)  # 3 steps per epoch: evaluations at 3 and 5
    module = fresh()
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted) as stopped:  # at an epoch's end, before its eval
        _run(module, tokenizer, task_dir, checkpoint_dir=ckpt, checkpoint_every=2,
             progress=_stop_at(3))
    assert stopped.value.step == 3 and stopped.value.checkpoint.name == "step-000003"
    assert [p.name for p in ckpt.iterdir()] == ["step-000003"]  # only the newest is kept
    module = fresh()  # a fresh process would start from the model again
    resumed = _run(module, tokenizer, task_dir, checkpoint_dir=ckpt, resume=ckpt)
    assert resumed.extra["resumed_from_step"] == 3
    assert resumed.losses == expected.losses and resumed.steps == expected.steps == 5
    assert [e.score for e in resumed.evals] == [e.score for e in expected.evals]
    assert resumed.best.step == expected.best.step
    got, want = _weights(module), _weights(whole)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[n], want[n]) for n in want)  # bit for bit
    with pytest.raises(InputError, match="batch_size 8, this run has 4"):
        finetune(fresh(), TASK, tokenizer=tokenizer, max_steps=5, batch_size=4,
                 lr=3e-3, eval_split="val", seed=3, resume=ckpt, **_data(task_dir))


def _prune_hooks(module):
    return GradualPrune(task=TASK, sparsity=0.5, frequency=1, end_step=3).make_hooks(module)


def _l0_hooks(module):
    return L0Gates(size_model(module, analyze(module), "flops", seq=16), 0.7, seed=1)


@pytest.mark.parametrize("make", [_prune_hooks, _l0_hooks], ids=["gradual-prune", "l0-gates"])
def test_hooks_with_state_resume_bit_for_bit(make, tmp_path, fresh, task_dir, tokenizer) -> None:
    def run(module, hooks, **kw):
        edit = hooks.edit if isinstance(hooks, L0Gates) else None
        return finetune(module, TASK, tokenizer=tokenizer, max_steps=5, batch_size=8, lr=3e-3,
                        eval_split=None, seed=2, hooks=hooks, edit=edit, **_data(task_dir), **kw)

    whole = fresh()
    hooks = make(whole)
    expected = run(whole, hooks)
    module = fresh()
    with pytest.raises(TrainingInterrupted):
        run(module, make(module), checkpoint_dir=tmp_path, progress=_stop_at(3))
    module = fresh()
    again = make(module)
    resumed = run(module, again, resume=tmp_path)
    assert resumed.losses == expected.losses
    assert all(torch.equal(module.params[n].data, whole.params[n].data) for n in whole.params)
    if isinstance(hooks, L0Gates):
        assert again.history == hooks.history
        assert all(torch.equal(again.log_alpha[k], hooks.log_alpha[k]) for k in hooks.log_alpha)
    else:
        assert again.updates == hooks.updates and again.sparsity == pytest.approx(0.5, abs=0.01)
