"""A token limit past the model's position table and a vocabulary larger than its embedding
table are caught before anything is tokenized: the default limit is clamped with one note, an
explicit one and a mismatched tokenizer or teacher are refused with one line naming both sizes
(optc.tasks.limits, used by evaluate, finetune and distill)."""

from __future__ import annotations

import logging

import pytest
import transformers as tf

import optc
from optc.errors import InputError, PipelineSpecError
from optc.frontends.capture import max_sequence_length
from optc.tasks import evaluate, get_task
from optc.tasks.limits import ModelLimits, model_limits
from optc.tasks.records import Example
from optc.tests.conftest import tiny_model
from optc.tests.train.conftest import VOCAB, sentences
from optc.train import distill, finetune

EXAMPLES = [Example(text, None, label) for text, label in sentences(8, 0)]
TRAIN = {"train_examples": EXAMPLES, "eval_split": None, "max_steps": 1, "batch_size": 4}


def long_examples(n: int = 4) -> list[Example]:
    """Sentences of 100 words: past a 64-position table unless truncated to it."""
    return [Example(" ".join([text] * 20), None, label) for text, label in sentences(n, 1)]


def test_limits_of_modules_models_and_padded_tables(bert):
    model, module = bert
    assert model_limits(module) == ModelLimits(64, len(VOCAB))
    assert model_limits(optc.to_eager(module)) == ModelLimits(64, len(VOCAB))
    assert model_limits(model) == ModelLimits(64, len(VOCAB))
    assert model_limits(lambda **kw: kw) == ModelLimits()
    roberta = tiny_model("roberta")  # a table of 66 rows, the first 2 reserved for padding
    assert model_limits(roberta).positions == 64
    assert model_limits(optc.capture(roberta)).positions == 64
    assert max_sequence_length(tf.MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == 512


def test_default_max_length_is_clamped_with_a_note(bert, tokenizer, caplog):
    _, module = bert
    note = "the default max_length 128 is longer than the model's position table: using 64 tokens"
    with caplog.at_level(logging.WARNING, logger="optc"):
        finetune(module, "sst2", tokenizer=tokenizer,
                 **{**TRAIN, "train_examples": long_examples()})
    assert module.meta["task"]["max_length"] == 64
    assert [r.getMessage() for r in caplog.records] == [note]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="optc"):
        result = evaluate("sst2", optc.to_eager(module), long_examples(), tokenizer)
    assert result.num_examples == 4
    assert [r.getMessage() for r in caplog.records] == [note]


@pytest.mark.parametrize("run", ["evaluate", "finetune"])
def test_explicit_max_length_past_the_positions_is_refused(bert, tokenizer, run):
    model, module = bert
    with pytest.raises(PipelineSpecError, match=r"^max_length 65 \(--max-length\) is longer than "
                       r"the model's position table: give at most 64 tokens$"):
        if run == "evaluate":
            evaluate("sst2", model, EXAMPLES, tokenizer, max_length=65)
        else:
            finetune(module, "sst2", tokenizer=tokenizer, max_length=65, **TRAIN)
    assert "task" not in module.meta  # refused before anything changed


@pytest.mark.parametrize("run", ["evaluate", "finetune"])
def test_tokenizer_larger_than_the_vocabulary_is_refused(bert, run):
    from optc.frontends.huggingface import load_tokenizer

    _, module = bert
    big = load_tokenizer(None)  # MiniLM's 30522 tokens for a model of len(VOCAB) rows
    what = "evaluating sst2" if run == "evaluate" else "training sst2"
    with pytest.raises(InputError, match=rf"^{what}: the tokenizer has 30522 tokens but the "
                       rf"model's embedding table has {len(VOCAB)} rows, so its ids would index "
                       r"past it: use the model's own tokenizer"):
        if run == "evaluate":
            evaluate("sst2", optc.to_eager(module), EXAMPLES, big)
        else:
            finetune(module, "sst2", tokenizer=big, **TRAIN)


def test_teacher_with_another_vocabulary_is_refused(bert, tokenizer):
    _, student = bert
    torch_teacher = tf.BertForSequenceClassification(tf.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=len(VOCAB) + 7, max_position_embeddings=64, num_labels=2)).eval()
    teacher = optc.capture(torch_teacher)
    task = get_task("sst2")
    with pytest.raises(InputError, match=rf"^distill: the teacher's embedding table has "
                       rf"{len(VOCAB) + 7} rows but the student's embedding table has "
                       rf"{len(VOCAB)} rows: distill from a teacher with the student's "
                       r"vocabulary"):
        distill(student, teacher, task, tokenizer=tokenizer, **TRAIN)
