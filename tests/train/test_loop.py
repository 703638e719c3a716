"""finetune and distill on a tiny random BERT and a synthetic separable task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import optc
from optc.errors import InputError
from optc.ir.attributes import Sparsity
from optc.tasks import evaluate, get_task
from optc.tests.train.conftest import sentences, tiny_bert
from optc.train import add_task_head, distill, finetune, layer_ids, layer_map

TASK = "text-classification"


def _fast(**kw):
    return {"batch_size": 16, "lr": 3e-3, **kw}


def test_finetune_lowers_the_loss_and_raises_accuracy(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    before = module.clone()
    add_task_head(before, TASK)
    dev = get_task(TASK).read("dev", task_dir)
    start = evaluate(TASK, optc.to_eager(before), dev, tokenizer)
    steps = []
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, epochs=4, holdout=0,
                      eval_split="dev", progress=steps.append, **_fast())
    assert report.head_added and report.steps == 4 * 12 and report.epochs == 4
    assert report.loss_at(False) < 0.85 * report.loss_at(True)
    assert report.score > start.score + 20
    assert len(report.evals) == 4 and report.best.score == max(e.score for e in report.evals)
    assert [s.step for s in steps] == list(range(1, 49)) and steps[-1].total == 48
    assert steps[-1].eta_seconds == 0 and all(s.step_seconds > 0 for s in steps)
    assert max(s.lr for s in steps) == pytest.approx(3e-3)  # warm-up reaches the peak ...
    assert steps[-1].lr < 3e-3 * 0.05  # ... then decays linearly
    # the best weights are in the IR: evaluating the IR gives the reported score
    assert evaluate(TASK, optc.to_eager(module), dev, tokenizer).score == report.score
    assert module.meta["task"]["name"] == TASK
    optc.verify(module)


def test_finetune_holds_out_the_validation_split(task_dir, tokenizer) -> None:
    task = get_task(TASK)
    val = task.read("val", task_dir, val_size=0.25, seed=3)
    everything = task.read("train", task_dir, val_size=0)
    _, module = tiny_bert(layers=1)
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=2, holdout=0.25,
                      seed=3, **_fast())
    assert report.train_examples == len(everything) - len(val)  # the search's split is unseen
    assert module.meta["task"]["holdout"] == {"val_size": 0.25, "seed": 3}
    _, module = tiny_bert(layers=1)
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=2, holdout=0,
                      eval_split="dev", **_fast())
    assert report.train_examples == len(everything)
    assert module.meta["task"]["holdout"]["val_size"] == 0
    with pytest.raises(InputError, match="holdout must be > 0"):
        finetune(tiny_bert(layers=1)[1], TASK, task_dir, tokenizer=tokenizer, max_steps=1,
                 holdout=0, eval_split="val", **_fast())
    with pytest.raises(InputError, match="the default.*holdout must be > 0"):  # the default is val
        finetune(tiny_bert(layers=1)[1], TASK, task_dir, tokenizer=tokenizer, max_steps=1,
                 holdout=0, **_fast())


def test_finetune_is_seeded_and_stops_at_max_steps(task_dir, tokenizer) -> None:
    losses = []
    for _ in range(2):
        _, module = tiny_bert(layers=1)
        report = finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=3,
                          eval_split=None, **_fast())
        assert report.steps == 3 and report.best is None and report.evals == []
        losses.append(report.losses)
    assert losses[0] == losses[1]


def test_finetune_on_a_validation_split(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=2,
                      eval_split="val", **_fast())
    assert report.train_examples == 192 - len(get_task(TASK).read("val", task_dir))
    assert report.evals and report.evals[-1].step == 2


def test_sparse_weights_stay_exactly_zero(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    name = next(n for n in module.params if n.endswith("intermediate.dense.weight"))
    param = module.params[name]
    data = param.data.clone()
    data[data.abs() < data.abs().median()] = 0
    param.data = data
    param.attrs["sparsity"] = Sparsity("unstructured", 0.51)
    zeros = data == 0
    finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=5, eval_split=None, **_fast())
    trained = module.params[name].data
    assert trained is not data and torch.count_nonzero(trained[zeros]) == 0
    assert not torch.equal(trained, data)
    optc.verify(module)  # the Sparsity attribute still holds


def test_bad_inputs_are_refused(tmp_path, task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.tsv").write_text("text\tlabel\n")
    (empty / "dev.tsv").write_text("text\tlabel\ngood\t1\n")
    with pytest.raises(InputError, match="has no examples"):
        finetune(module.clone(), TASK, empty, tokenizer=tokenizer)
    with pytest.raises(InputError, match="no training examples"):
        finetune(module.clone(), TASK, task_dir, tokenizer=tokenizer, train_examples=[])
    with pytest.raises(InputError, match="needs the model's tokenizer"):
        finetune(module.clone(), TASK, task_dir)
    with pytest.raises(InputError, match="eval_split must be"):
        finetune(module.clone(), TASK, task_dir, tokenizer=tokenizer, eval_split="test")
    with pytest.raises(InputError, match="epochs must be positive"):
        finetune(module.clone(), TASK, task_dir, tokenizer=tokenizer, epochs=0)
    _, three = tiny_bert(layers=1, head="sequence-classification")
    with pytest.raises(InputError, match="head with 3 labels"):
        finetune(three, TASK, task_dir, tokenizer=tokenizer)


def _kl(student, teacher, tokenizer) -> float:
    texts = [s for s, _ in sentences(64, 9)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    s = optc.to_eager(student)(**inputs)["logits"]
    t = optc.to_eager(teacher)(**inputs)["logits"]
    return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                          reduction="batchmean"))


def test_distill_reduces_the_kl_to_the_teacher(task_dir, tokenizer) -> None:
    _, teacher = tiny_bert(layers=2, seed=1)
    add_task_head(teacher, TASK, seed=5)
    with torch.no_grad():  # a confident teacher (new tensor, not an in-place edit)
        teacher.params["classifier.weight"].data = teacher.params["classifier.weight"].data * 100
    _, student = tiny_bert(layers=1, seed=2)
    add_task_head(student, TASK, seed=6)
    before = _kl(student, teacher, tokenizer)
    report = distill(student, teacher, TASK, task_dir, tokenizer=tokenizer, alpha_soft=1.0,
                     temperature=1.0, epochs=2, eval_split=None, **_fast())
    assert report.extra["soft_targets"] is True and report.extra["layer_map"] == "-"
    after = _kl(student, teacher, tokenizer)
    assert after < 0.5 * before


def test_distill_hidden_states_from_a_bare_teacher(task_dir, tokenizer) -> None:
    _, teacher = tiny_bert(layers=2, seed=1)
    _, student = tiny_bert(layers=1, seed=2)
    with pytest.raises(InputError, match="no sequence-classification head"):
        distill(student.clone(), teacher, TASK, task_dir, tokenizer=tokenizer)
    pairs = ",".join(f"{s}:{t}" for s, t in layer_map(student, teacher))
    report = distill(student, teacher, TASK, task_dir, tokenizer=tokenizer, hidden_mse=1.0,
                     max_steps=3, eval_split=None, **_fast())
    assert report.extra["soft_targets"] is False and report.extra["layer_map"] == pairs
    assert all(math.isfinite(x) for x in report.losses)


def test_layer_map_follows_stable_layer_ids(bert) -> None:
    _, teacher = bert
    _, student = tiny_bert(layers=1)
    for module in (teacher, student):  # without stable ids (a frontend that records none)
        for node in module.graph:
            if node.op in ("attention", "linear") and node.attr("layer") is not None:
                node.kwargs = {k: v for k, v in node.kwargs.items() if k != "layer"}
    assert layer_map(student, teacher) == [(0, 1)]  # no ids: evenly, last with last
    for module, ids in ((teacher, [0, 1]), (student, [0])):
        attention = [n for n in module.graph if n.op == "attention"]
        for node, lid in zip(attention, ids, strict=True):
            node.set_attr("layer", lid)
    assert layer_map(student, teacher) == [(0, 0)]  # the student kept layer 0
    assert layer_map(student, teacher, "0:1") == [(0, 1)]
    with pytest.raises(InputError, match="out of range"):
        layer_map(student, teacher, "0:5")


def test_layer_map_follows_a_dropped_layer(bert) -> None:
    _, teacher = bert
    student = teacher.clone()
    optc.run_pipeline(student, "drop-layers{layers=0}")
    if None in layer_ids(teacher):
        pytest.skip("capture records no stable layer ids")
    assert layer_map(student, teacher) == [(0, 1)]  # the student's only layer is teacher's 1
