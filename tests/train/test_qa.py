"""Extractive QA through optc.train: a SQuAD-format file alone is split into train and
validation; the QA head, span loss and soft targets on start/end logits."""

from __future__ import annotations

import json
import random

import optc
from optc.tests.train.conftest import FILLER, POSITIVE, tiny_bert
from optc.train import add_task_head, distill, finetune, layer_map


def _squad(path, count: int = 40):
    rng = random.Random(0)
    paragraphs = []
    for i in range(count):
        words = rng.choices(FILLER, k=8)
        answer = rng.choice(POSITIVE)
        words.insert(rng.randint(0, 8), answer)
        context = " ".join(words)
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{i}", "question": "what is good",
            "answers": [{"text": answer, "answer_start": context.index(answer)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_finetune_qa_on_one_file(tmp_path, tokenizer) -> None:
    data = _squad(tmp_path / "dev-v1.1.json")
    _, module = tiny_bert(layers=1)
    report = finetune(module, "squad", data, tokenizer=tokenizer, max_steps=4, batch_size=8,
                      max_length=48, lr=3e-3)
    assert report.extra["eval_split"] == "val" and report.train_examples == 34
    assert set(report.best.metrics) == {"exact_match", "f1"}
    assert list(module.graph.outputs) == ["start_logits", "end_logits"]
    assert module.meta["task"]["eval"]["split"] == "val"
    optc.verify(module)


def test_distill_qa_with_soft_start_and_end_targets(tmp_path, tokenizer) -> None:
    data = _squad(tmp_path / "squad.json")
    _, teacher = tiny_bert(layers=2, seed=1)
    add_task_head(teacher, "squad", seed=1)
    _, student = tiny_bert(layers=1, seed=2)
    pairs = ",".join(f"{a}:{b}" for a, b in layer_map(student, teacher))
    report = distill(student, teacher, "squad", data, tokenizer=tokenizer, alpha_soft=0.7,
                     hidden_mse=0.5, max_steps=2, batch_size=8, max_length=48, eval_split=None)
    assert report.extra["soft_targets"] is True and report.extra["layer_map"] == pairs
    assert report.steps == 2 and all(loss > 0 for loss in report.losses)
