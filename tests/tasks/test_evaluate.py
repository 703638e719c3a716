"""Batching, evaluation with fake models, and task losses."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
)

from optc.tasks import EvalResult, batches, build_features, evaluate, get_task
from optc.tasks.records import Example
from optc.tests.tasks.helpers import lookup_model


def _key(tokenizer, example: Example, max_length: int = 128) -> tuple[int, ...]:
    return tuple(tokenizer(example.text, example.text_pair, truncation=True,
                           max_length=max_length)["input_ids"])


def gold_model(task, examples, tokenizer, scale: float = 10.0):
    """A model_fn returning the gold label of each example as logits."""
    table: dict[tuple[int, ...], torch.Tensor] = {}
    for example in examples:
        if task.kind == "regression":
            value = torch.tensor([float(example.label)])
        else:
            value = F.one_hot(torch.tensor(example.label), task.num_labels).float() * scale
        key = _key(tokenizer, example)
        assert key not in table or torch.equal(table[key], value), "conflicting duplicate"
        table[key] = value
    return lookup_model(table, "logits")


def test_batches_sort_pad_and_index(tokenizer):
    examples = [Example("short", None, 0), Example("a much longer sentence than the others", None, 1),
                Example("medium length text", None, 1)]
    out = list(batches(examples, tokenizer, batch_size=2, max_length=8))
    assert [b["index"].tolist() for b in out] == [[1, 2], [0]]  # longest first
    first = out[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    assert first["input_ids"].shape == (2, 8)  # truncated to max_length
    assert first["attention_mask"][1].tolist() == [1] * 5 + [0] * 3
    assert first["input_ids"][1, 5:].tolist() == [tokenizer.pad_token_id] * 3
    assert first["labels"].dtype == torch.int64 and first["labels"].tolist() == [1, 1]
    assert out[1]["input_ids"].shape == (1, 3)  # padded per batch, not globally
    plain = next(batches(examples, tokenizer, 3, input_names=["input_ids", "attention_mask"],
                         sort=False))
    assert "token_type_ids" not in plain and plain["index"].tolist() == [0, 1, 2]
    pairs = next(batches([Example("a", "b c", 2.5)], tokenizer, 4))
    assert pairs["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert pairs["labels"].dtype == torch.float32


def test_gold_model_scores_100_and_constant_model_the_majority(data_env, tokenizer):
    task = get_task("sst2")
    dev = task.read("dev")
    seen: list[tuple[int, int]] = []
    result = evaluate(task, gold_model(task, dev, tokenizer), "dev", tokenizer, batch_size=64,
                      progress=lambda done, total: seen.append((done, total)))
    assert isinstance(result, EvalResult)
    assert result.metrics == {"accuracy": 100.0} and result.score == 100.0
    assert result.num_examples == 872 and result.examples_per_second > 0
    assert result.predictions == [e.label for e in dev]
    assert result.losses.shape == (872,) and float(result.losses.max()) < 1e-3
    assert seen[-1] == (872, 872) and len(seen) == 14

    def constant(input_ids, **_):  # numpy outputs, as an ONNX Runtime session gives them
        return {"logits": np.array([[0.0, 1.0]] * input_ids.shape[0], dtype=np.float32)}

    result = evaluate("sst2", constant, dev, tokenizer)
    majority = Counter(e.label for e in dev).most_common(1)[0][1]
    assert result.score == pytest.approx(100 * majority / len(dev))
    expected = F.cross_entropy(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert result.losses[[i for i, e in enumerate(dev) if e.label == 0]].allclose(expected)


def test_pair_tasks_with_f1_and_regression(data_env, tokenizer):
    mrpc = get_task("mrpc")
    dev = mrpc.read("dev")[:100]
    result = evaluate(mrpc, gold_model(mrpc, dev, tokenizer), dev, tokenizer, batch_size=16)
    assert result.metrics == {"f1": 100.0, "accuracy": 100.0} and result.main_metric == "f1"
    stsb = get_task("stsb")
    dev = stsb.read("dev", limit=200)
    result = evaluate(stsb, gold_model(stsb, dev, tokenizer), "dev", tokenizer, limit=200)
    assert result.metrics == pytest.approx({"pearson": 100.0, "spearman": 100.0})
    assert result.predictions == pytest.approx([e.label for e in dev])
    assert float(result.losses.abs().max()) < 1e-8


def test_val_split_evaluation(data_env, tokenizer):
    task = get_task("rte")
    val = task.read("val", val_size=50, seed=3)
    result = evaluate(task, gold_model(task, val, tokenizer), "val", tokenizer, val_size=50,
                      seed=3)
    assert result.num_examples == 50 and result.score == 100.0


def test_qa_evaluation_with_gold_span_logits(data_root, tokenizer):
    task = get_task("squad")
    records = task.read("dev", data_root / "squad")[::101][:60]
    features = build_features(records, tokenizer, 384, 128)
    table = {}
    for f in features:
        logits = torch.full((2, len(f)), -5.0)
        logits[0, f.start_position] = logits[1, f.end_position] = 5.0
        table[f.input_ids] = logits
    model = lookup_model(table, ("start_logits", "end_logits"))
    result = evaluate(task, model, records, tokenizer, batch_size=8)
    assert result.num_examples == 60 and result.extra["num_features"] == len(features)
    assert result.metrics["exact_match"] >= 95.0 and result.main_metric == "f1"
    assert len(result.predictions) == 60
    assert result.losses.shape == (len(features),)
    assert result.loss_example_index.tolist() == [f.example_index for f in features]
    # padding (logit 0, above every wrong -5) never counts: CE = log(e^5 + (n-1) e^-5) - 5
    lengths = torch.tensor([len(f) for f in features], dtype=torch.float64)
    expected = torch.log(torch.exp(torch.tensor(5.0)) + (lengths - 1) * torch.exp(torch.tensor(-5.0))) - 5
    assert result.losses.double().allclose(expected, atol=1e-5)


def test_task_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    sst2 = get_task("sst2")
    per = sst2.loss({"logits": logits}, labels, reduction="none")
    assert per.allclose(F.cross_entropy(logits, labels, reduction="none"))
    assert sst2.loss({"logits": logits}, labels).allclose(per.mean())
    assert sst2.loss({"logits": logits}, labels, "sum").allclose(per.sum())
    stsb = get_task("stsb")
    assert stsb.loss({"logits": torch.tensor([[1.0], [3.0]])}, torch.tensor([2.0, 2.0]),
                     "none").tolist() == [1.0, 1.0]
    squad = get_task("squad")
    start = torch.tensor([[0.0, 3.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 3.0]])
    positions = {"start_positions": torch.tensor([1]), "end_positions": torch.tensor([2])}
    span = squad.loss({"start_logits": start, "end_logits": end}, positions, "none")
    expected = (F.cross_entropy(start, torch.tensor([1])) + F.cross_entropy(end, torch.tensor([2]))) / 2
    assert span.allclose(expected)
    masked = squad.loss({"start_logits": start, "end_logits": end}, positions, "none",
                        attention_mask=torch.tensor([[1, 1, 1]]))
    assert masked.allclose(expected)


@pytest.mark.parametrize("head", ["sequence-classification", "question-answering"])
def test_hugging_face_model_outputs(data_root, tokenizer, head):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)
    if head == "sequence-classification":
        model = AutoModelForSequenceClassification.from_config(config).eval()
        result = evaluate("rte", model, "dev", tokenizer, data=data_root / "glue/RTE", limit=40,
                          batch_size=16)
        assert 0.0 <= result.score <= 100.0 and result.losses.shape == (40,)
        assert set(result.predictions) <= {0, 1}
    else:
        model = AutoModelForQuestionAnswering.from_config(config).eval()
        result = evaluate("squad", model, "dev", tokenizer, data=data_root / "squad", limit=10,
                          batch_size=4, max_length=128)
        assert set(result.metrics) == {"exact_match", "f1"} and len(result.predictions) == 10
        assert result.losses.shape[0] == result.extra["num_features"] >= 10
    assert torch.isfinite(result.losses).all()
