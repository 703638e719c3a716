"""Label-free distillation on the user's own text: ``distill`` with task ``embedding{data=FILE}``
trains a layer-dropped student so its pooled embeddings match the uncompressed teacher's
(1 - cosine), picks the best weights by the mean cosine on the validation texts carved from
the file, records the pooling, and is seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optc
from optc.backends import to_eager
from optc.errors import InputError
from optc.tasks import evaluate, get_task, read_pooling
from optc.tests.tasks.helpers import write
from optc.tests.train.conftest import sentences, tiny_bert, write_tokenizer
from optc.train import distill, finetune

STEPS = 18


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(teacher, tokenizer, texts file): a tiny 3-layer BERT whose source directory declares
    sentence-transformers mean pooling + Normalize, and 80 texts, one per line."""
    root = tmp_path_factory.mktemp("emb-distill")
    tok = write_tokenizer(root / "model")
    write(root / "model" / "modules.json", json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    write(root / "model" / "1_Pooling" / "config.json", json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    _, teacher = tiny_bert(layers=3, seed=1)
    with torch.no_grad():  # a middle layer that matters, so that dropping it costs agreement
        for name in ("attention.output.dense.weight", "output.dense.weight"):
            teacher.params[f"encoder.layer.1.{name}"].data.mul_(6.0)
    teacher.meta["source"] = {**teacher.meta.get("source", {}), "tokenizer": str(root / "model")}
    texts = write(root / "texts.txt", "\n".join(s for s, _ in sentences(80, 11)) + "\n")
    return teacher, tok, texts


def _student(teacher):
    student = teacher.clone()
    optc.run_pipeline(student, "drop-layers{layers=1},dce")
    return student


def _distill(setup, **extra):
    teacher, tok, texts = setup
    student = _student(teacher)
    report = distill(student, teacher, f"embedding{{data={texts}}}", tokenizer=tok,
                     max_steps=STEPS, epochs=100, lr=1e-3, batch_size=8, seed=3, dropout=0.0,
                     **extra)
    return student, report


def _val_cosine(setup, module) -> float:
    teacher, tok, texts = setup
    task = get_task(f"embedding{{data={texts}}}")
    pooling = read_pooling(Path(teacher.meta["source"]["tokenizer"]))
    options = dict(seed=3, pooling=pooling)  # the validation split distill carves: 15%
    reference = evaluate(task, to_eager(teacher), "val", tok, reference="self", **options)
    return evaluate(task, to_eager(module), "val", tok, reference=reference, **options).score


def test_distillation_on_unlabeled_text_raises_the_agreement_and_is_seeded(setup) -> None:
    teacher, _, _ = setup
    before = _val_cosine(setup, _student(teacher))
    student, report = _distill(setup)
    assert report.task == "embedding" and report.metric == "cosine" and report.steps == STEPS
    assert report.extra["soft_targets"] and report.extra["pooling"] == "mean+normalize"
    assert report.extra["eval_split"] == "val" and report.evals  # chosen on the carved texts
    assert report.losses[-1] < report.losses[0]
    after = _val_cosine(setup, student)
    assert after == pytest.approx(report.best.score, abs=1e-3)  # the kept weights are the best
    assert 100 - after < (100 - before) / 2, (before, after)  # the disagreement at least halves
    assert report.best.metrics["top10_agreement"] >= 0
    recorded = student.meta["task"]
    assert recorded["kind"] == "embedding-agreement" and recorded["pooling"] == "mean+normalize"
    assert get_task(recorded["spec"]).kind == "embedding-agreement"
    again, second = _distill(setup)
    assert second.losses == report.losses
    for name, param in student.params.items():
        assert torch.equal(param.data, again.params[name].data), name
    _scored_on_sentence_pairs(setup, student)


def _scored_on_sentence_pairs(setup, student) -> None:
    """optc eval scores the distilled artifact (its recorded task: embedding) on sentence
    pairs too: both embedding tasks read the pooled token states."""
    from optc.tools.cli.train import cmd_eval

    _, _, texts = setup
    rows = sentences(12, 4)
    pairs = [f"{a}\t{b}\t{(i % 5) + 0.5}" for i, ((a, _), (b, _)) in enumerate(zip(rows, rows[1:]))]
    sts = write(texts.parent / "sts" / "dev.tsv", "sentence1\tsentence2\tscore\n" + "\n".join(pairs))
    optc.save(student, texts.parent / "distilled")
    assert cmd_eval([str(texts.parent / "distilled"), "--task", "sentence-similarity", "--data",
                     str(sts), "-q"]) == 0


def test_the_label_free_task_is_distilled_not_fine_tuned(setup) -> None:
    teacher, tok, texts = setup
    with pytest.raises(InputError, match="finetune cannot use task 'embedding' .* no labels"):
        finetune(_student(teacher), f"embedding{{data={texts}}}", tokenizer=tok, max_steps=1)
    _, classifier = tiny_bert(layers=1, head="sequence-classification")
    with pytest.raises(InputError, match="pools the token states .* without its task head"):
        distill(classifier, classifier, f"embedding{{data={texts}}}", tokenizer=tok, max_steps=1)
