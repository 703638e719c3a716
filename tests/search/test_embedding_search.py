"""The search on the embedding tasks: the gated runner scores pooled token states (no head)
exactly as the task's own evaluation scores the committed module, and ``optc specialize``
runs the tolerance contract on a user's unlabeled texts, reporting on the texts the search
never read."""

from __future__ import annotations

import json

import pytest
import torch

import optc
import optc.search.contract as contract_module
from optc.backends.eager import to_eager
from optc.errors import InputError
from optc.ir.analysis import analyze
from optc.search import Config, GatedRunner, prepare_batches
from optc.search.candidates import Candidate, commit
from optc.search.runner import attach_reference
from optc.tasks import evaluate, get_task
from optc.tests.search.test_contract import _latency
from optc.tests.train.conftest import sentences, tiny_bert
from optc.tools.cli.main import main

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def encoder():
    _, module = tiny_bert(layers=2, seed=4)
    return module


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedding-texts") / "texts.txt"
    path.write_text("\n".join(s for s, _ in sentences(160, 7)) + "\n")
    return path


def _removal(module) -> Config:
    layers = analyze(module).layers
    return Config(frozenset({Candidate("heads", layers[0].id, (1, 3)),
                             Candidate("ffn", layers[1].id, ())}))


def test_the_runner_scores_embeddings_as_the_task_scores_the_committed_module(
        encoder, texts, tokenizer):
    task = get_task(f"embedding{{data={texts},pooling=mean}}")
    examples = task.read("val", val_size=60)
    batches = prepare_batches(task, examples, tokenizer, 16, None, NAMES)
    assert all("attention_mask" in b for b in batches)
    reference = GatedRunner(encoder, task, batches, NAMES, prefix_reuse=False).embeddings()
    runner = GatedRunner(encoder, task, attach_reference(batches, reference), NAMES)
    same = runner.evaluate(Config())
    assert task.compute_metrics(same.predictions, [None] * 60) == pytest.approx(
        {"cosine": 100.0, "top10_agreement": 100.0}, abs=1e-4)
    config = _removal(encoder)
    gated = runner.evaluate(config)
    committed = encoder.clone()
    commit(committed, config)
    base = evaluate(task, to_eager(encoder), examples, tokenizer, reference="self")
    after = evaluate(task, to_eager(committed), examples, tokenizer, reference=base)
    assert torch.allclose(gated.losses, after.losses, atol=1e-5)
    metrics = task.compute_metrics(gated.predictions, [None] * 60)
    assert metrics["cosine"] < 99.999  # the removal changed the embeddings (tiny weights: a little)
    assert metrics == pytest.approx(after.metrics, abs=1e-3)
    # without the reference attached, the label-free task cannot be scored: one line
    with pytest.raises(InputError, match="attach_reference"):
        GatedRunner(encoder, task, batches, NAMES).evaluate(Config())


def test_sentence_similarity_pairs_are_embedded_apart_as_the_task_does(encoder, tokenizer,
                                                                      tmp_path):
    rows = sentences(80, 3)
    lines = ["sentence1\tsentence2\tscore"] + [
        f"{a}\t{b}\t{(i * 7) % 6}" for i, ((a, _), (b, _)) in enumerate(zip(rows, rows[1:]))]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    task = get_task(f"sentence-similarity{{data={tmp_path}}}")
    examples = task.read("train", val_size=0)
    batches = prepare_batches(task, examples, tokenizer, 16, None, NAMES)
    assert sum(len(b["index"]) for b in batches) == 2 * len(examples)
    config = _removal(encoder)
    gated = GatedRunner(encoder, task, batches, NAMES).evaluate(config)
    committed = encoder.clone()
    commit(committed, config)
    expected = evaluate(task, to_eager(committed), examples, tokenizer)
    assert len(gated.predictions) == len(examples)
    assert gated.predictions == pytest.approx(expected.predictions, abs=1e-5)
    scores = [e.label for e in examples]
    assert task.compute_metrics(gated.predictions, scores)["spearman"] == pytest.approx(
        expected.score, abs=1e-3)


def test_specialize_runs_the_contract_on_unlabeled_texts(encoder, texts, tok_dir, tokenizer, tmp_path,
                                                         capsys, monkeypatch):
    monkeypatch.setattr(contract_module, "backend_latencies", _latency)
    model = tmp_path / "encoder"
    module = encoder.clone()
    module.meta["source"] = {**(module.meta.get("source") or {}), "tokenizer": str(tok_dir)}
    optc.save(module, model)
    out = tmp_path / "fast"
    code = main(["specialize", str(model), "--task", f"embedding{{data={texts}}}",
                 "--max-drop", "60", "--val-size", "0.5", "--k", "3", "--groups", "3",
                 "--kinds", "ffn,attention,heads", "--int8", "off", "-q"] + ["-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "held-out cosine" in printed and "unsearched cosine (80 ex.)" in printed, printed
    written = optc.load_module(out)
    assert written.num_parameters() < module.num_parameters()  # something fit 60 points
    record = json.loads((out / "metadata.json").read_text())["specialization"]
    assert record["dev_split"] == "unsearched"
    held = record["contract"]["held_out_change"]
    assert held["before"] == pytest.approx(100.0) and held["after"] >= 40.0
    # the unsearched texts are the file less the validation split: never the search's
    assert record["dev_change"]["examples"] == 80


def test_a_task_head_is_refused_for_an_embedding_search(texts, tokenizer):
    from optc.search.driver import check_searchable
    from optc.tests.search.conftest import headed

    with pytest.raises(InputError, match="last_hidden_state"):
        check_searchable(headed(seed=1), get_task(f"embedding{{data={texts}}}"))


def test_heads_are_tried_after_a_rejected_block_on_the_label_free_task(encoder, texts,
                                                                       tokenizer):
    """The fine-grained threshold is a ratio to the best loss, 0 for the reference itself:
    the label-free search tries every head instead of none."""
    from optc.search import SearchOptions, specialize

    task = get_task(f"embedding{{data={texts}}}")
    options = SearchOptions(rule="metric", tolerance=1e-6, kinds=("attention", "heads"),
                            val_size=40, prefix_reuse=True)
    result = specialize(encoder, task, tokenizer, None, options)
    blocks = [h for h in result.history if h.kind == "attention"]
    heads = [h for h in result.history if h.kind == "heads"]
    assert blocks and not any(h.accepted for h in blocks)
    assert len(heads) == 2 * 4  # every head of both layers was tried
