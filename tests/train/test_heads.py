"""Task heads added in the IR: shapes, outputs, initialization, refusals, recorded task."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.errors import InputError
from optc.ir.cleanup import eliminate_dead_code
from optc.tasks import get_task
from optc.tests.train.conftest import tiny_bert
from optc.train import add_task_head, has_task_head, task_from_meta


def test_classification_head_on_the_pooler(bert, batch) -> None:
    _, module = bert
    base = optc.to_eager(module)(**batch)
    assert add_task_head(module, "sst2", seed=3)
    optc.verify(module)
    assert list(module.graph.outputs) == ["logits"]
    w, b = module.params["classifier.weight"].data, module.params["classifier.bias"].data
    assert w.shape == (2, 32) and b.shape == (2,)
    assert torch.count_nonzero(b) == 0
    assert 0.01 < float(w.std()) < 0.03
    logits = optc.to_eager(module)(**batch)["logits"]
    assert logits.shape == (6, 2)
    torch.testing.assert_close(logits, base["pooler_output"] @ w.T + b, rtol=1e-5, atol=1e-6)
    assert module.meta["task"] == {"name": "sst2", "kind": "classification", "num_labels": 2,
                                   "labels": ["negative", "positive"], "metric": "accuracy",
                                   "metrics": ["accuracy"], "pooling": "pooler", "spec": "sst2"}


def test_head_init_is_seeded(bert) -> None:
    _, module = bert
    a, b, c = module.clone(), module.clone(), module.clone()
    for m, seed in ((a, 0), (b, 0), (c, 1)):
        add_task_head(m, "stsb", seed=seed)
    assert torch.equal(a.params["classifier.weight"].data, b.params["classifier.weight"].data)
    assert not torch.equal(a.params["classifier.weight"].data, c.params["classifier.weight"].data)
    assert a.params["classifier.weight"].data.shape == (1, 32)  # regression: one output


def test_first_token_without_a_pooler(bert, batch) -> None:
    _, module = bert
    module.graph.remove_output("pooler_output")
    eliminate_dead_code(module)
    hidden = optc.to_eager(module)(**batch)["last_hidden_state"]
    add_task_head(module, "text-classification{labels=a,b,c}")
    optc.verify(module)
    w, b = module.params["classifier.weight"].data, module.params["classifier.bias"].data
    torch.testing.assert_close(optc.to_eager(module)(**batch)["logits"], hidden[:, 0] @ w.T + b,
                               rtol=1e-5, atol=1e-6)


def test_question_answering_head(bert, batch) -> None:
    _, module = bert
    hidden = optc.to_eager(module)(**batch)["last_hidden_state"]
    assert add_task_head(module, "squad")
    optc.verify(module)
    assert list(module.graph.outputs) == ["start_logits", "end_logits"]
    assert not any(n.startswith("pooler") for n in module.params)  # dead pooler removed
    out = optc.to_eager(module)(**batch)
    w, b = module.params["qa_outputs.weight"].data, module.params["qa_outputs.bias"].data
    assert w.shape == (2, 32)
    both = hidden @ w.T + b
    assert out["start_logits"].shape == batch["input_ids"].shape
    torch.testing.assert_close(out["start_logits"], both[..., 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["end_logits"], both[..., 1], rtol=1e-5, atol=1e-6)
    assert module.meta["task"]["name"] == "squad"


def test_existing_fitting_head_is_kept_and_the_task_recorded(bert) -> None:
    _, module = bert
    add_task_head(module, "sst2")
    params, nodes = list(module.params), len(module.graph)
    assert not add_task_head(module, "rte")  # also 2 labels: the head fits
    assert (list(module.params), len(module.graph)) == (params, nodes)
    assert module.meta["task"]["name"] == "rte"
    assert has_task_head(module, "mrpc")


def test_head_with_the_wrong_number_of_labels_is_refused() -> None:
    _, module = tiny_bert(layers=1, head="sequence-classification")  # 3 labels
    text = optc.print_module(module)
    with pytest.raises(InputError, match="head with 3 labels but task 'sst2' needs 2") as info:
        add_task_head(module, "sst2")
    assert "\n" not in str(info.value)
    assert optc.print_module(module) == text
    assert "task" not in module.meta


def test_qa_head_for_classification_and_back_is_refused(bert) -> None:
    _, module = bert
    qa = module.clone()
    add_task_head(qa, "squad")
    with pytest.raises(InputError, match="question-answering head"):
        add_task_head(qa, "sst2")
    cls = module.clone()
    add_task_head(cls, "sst2")
    with pytest.raises(InputError, match="classification head"):
        add_task_head(cls, "squad")


def test_task_from_meta_round_trip(bert) -> None:
    _, module = bert
    for spec in ("sst2", "stsb", "squad"):
        m = module.clone()
        add_task_head(m, spec)
        assert task_from_meta(m.meta) == get_task(spec)
    m = module.clone()
    add_task_head(m, get_task("text-classification", labels="neg,pos"))
    assert task_from_meta(m.meta).label_names == ("neg", "pos")
    assert task_from_meta({}) is None
