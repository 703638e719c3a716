"""Accuracy-aware int8 (quantize{max_drop=...}): a layer whose int8 error is made huge stays
in fp32, the others are quantized, the metric on the validation split (carved from train)
stays within max_drop, and the stats say which layers stayed fp32 and what each cost."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.passes import PassManager
from optc.tests.conftest import assert_refused_unchanged, token_inputs
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.train import finetune

TASK = "text-classification"
POOLER = "pooler.dense.weight"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny BERT fine-tuned on the synthetic task, with its pooler made fragile in int8:
    the last LayerNorm's feature 0 is zero and the pooler reads it with weight 1e4, which
    changes nothing in fp32 but sets every pooler row's int8 scale to 1e4/63, so all its other
    weights round to zero (the pooled output becomes a constant)."""
    root = tmp_path_factory.mktemp("qaccuracy")
    tok = write_tokenizer(root / "tok")
    write_task(root / "task", train=480, dev=32)
    model, module = tiny_bert(layers=2, seed=1)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    finetune(module, TASK, root / "task", tokenizer=tok, max_steps=80, lr=2e-3, batch_size=16,
             eval_split=None)
    norm = "encoder.layer.1.output.LayerNorm"
    for part in ("weight", "bias"):
        p = module.params[f"{norm}.{part}"]
        data = p.data.clone()
        data[0] = 0.0
        p.data = data
    w = module.params[POOLER]
    data = w.data.clone()
    data[:, 0] = 1e4
    w.data = data
    return root, model, module


def test_fragile_layer_stays_fp32_and_the_metric_is_within_max_drop(tuned) -> None:
    root, model, base = tuned
    module = base.clone()
    report = PassManager(f"quantize{{task={TASK},max_drop=1.0,targets=attention,ffn,head,"
                         f"data={root / 'task'}}}").run(module)
    stats = report.records[0].stats
    assert stats["metric"] == "accuracy" and stats["val_examples"] == 72  # 15% of train
    assert stats["fp32_score"] > 90  # the fine-tuned model learned the task
    assert stats["all_int8_score"] < stats["fp32_score"] - 10  # the fragile pooler breaks it
    kept = stats["kept_fp32"].split(",")
    assert kept[0].startswith(f"{POOLER}(cost=")
    assert float(kept[0].split("cost=")[1].rstrip(")")) > 10
    assert stats["fp32_score"] - stats["score"] <= 1.0
    assert stats["worst_int8_cost"] <= 1.0 + 1e-9 or len(kept) > 1
    assert module.params[POOLER].data.dtype == torch.float32
    assert "quantization" not in module.params[POOLER].attrs
    tables = {n.args[1].name for n in module.graph if n.op == "embedding"}
    quantized = [n for n, p in module.params.items() if p.data.dtype == torch.int8
                 and n not in tables]  # the tables are int8 too (embeddings=auto)
    assert stats["linears"] == len(quantized) >= 12 - len(kept) + 1
    assert stats["embeddings"] == len(tables) == 3
    optc.verify(module)
    diffs = check_backends(module, token_inputs(model, 2, 8)).diffs
    assert max(diffs["onnx"].values()) <= 1e-3


def test_static_accuracy_aware_keeps_the_fragile_layer_too(tuned) -> None:
    root, _, base = tuned
    module = base.clone()
    report = PassManager(f"quantize{{mode=static,task={TASK},max_drop=1.0,val_samples=40,"
                         f"targets=head,data={root / 'task'}}}").run(module)
    stats = report.records[0].stats
    assert stats["val_examples"] == 40
    assert stats["kept_fp32"].startswith(POOLER)
    classifier = next(n for n, p in module.params.items()  # the classifier, statically
                      if p.data.dtype == torch.int8 and not n.startswith("embeddings."))
    node = next(n for n in module.graph if n.op == "linear" and n.args[1].name == classifier)
    assert node.arg(4) is not None and node.arg(5) is not None


def test_max_drop_needs_a_task_and_never_reads_the_dev_split(tuned, monkeypatch) -> None:
    root, _, base = tuned
    module = base.clone()
    module.meta.pop("task", None)
    assert_refused_unchanged(module, f"quantize{{max_drop=1,data={root / 'task'}}}",
                             "quantize max_drop trains or scores on a task")
    from optc.tasks.task import Task

    read = Task.read
    splits = []

    def spy(self, split, *args, **kwargs):
        splits.append(split)
        return read(self, split, *args, **kwargs)

    monkeypatch.setattr(Task, "read", spy)
    PassManager(f"quantize{{task={TASK},max_drop=50,targets=head,val_samples=8,"
                f"data={root / 'task'}}}").run(base.clone())
    assert splits and set(splits) == {"val"}
