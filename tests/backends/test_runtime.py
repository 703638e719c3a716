"""The runtime helper runs any backend's output on a list of texts: batches sorted by length
and padded to their own longest row give the same rows as each text run alone, in input order.

A tiny random BERT (hidden 32) over a word-level tokenizer, captured from a directory so that
its outputs record the tokenizer; the ONNX file is written once per module (~2 s).
"""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.runtime import open_output
from optc.backends.writers import write_unchecked
from optc.errors import InputError
from optc.tasks.runtime import Runner
from optc.tests.train.conftest import VOCAB, sentences, write_tokenizer

ATOL = 2e-5

# lengths 1..19 words, shuffled so that input order is not length order
TEXTS = [s for s, _ in sentences(24, 3)] + ["good", "the movie was very very very good and "
                                            "the story was quite fun and the ending really great"]
TEXTS = [TEXTS[i] for i in torch.randperm(len(TEXTS), generator=torch.Generator().manual_seed(1))]


def _model_dir(path, head: str):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64,
                           num_labels=3)
    getattr(tf, head)(config).eval().save_pretrained(str(path))
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{kind: target} for an encoder: the IR module, its artifact and its ONNX file."""
    root = tmp_path_factory.mktemp("runtime")
    module = optc.capture(str(_model_dir(root / "hf", "BertModel")))
    artifact = optc.save(module, root / "art", check=False)
    onnx_file = write_unchecked(module, "onnx", root / "model.onnx")
    return {"module": module, "artifact": artifact, "onnx": onnx_file}


def _alone(runner: Runner, texts) -> torch.Tensor:
    return torch.cat([runner.encode([t], batch_size=1) for t in texts])


@pytest.mark.parametrize("kind", ["artifact", "onnx"])
def test_sorted_buckets_equal_each_text_alone_in_input_order(outputs, kind) -> None:
    runner = Runner.open(outputs[kind])
    got = runner.encode(TEXTS, batch_size=8)
    assert got.shape == (len(TEXTS), 32)
    assert torch.allclose(got, _alone(runner, TEXTS), atol=ATOL)
    # the batches really are length-sorted buckets padded to their own longest row
    widths = [len(runner.tokenizer(t)["input_ids"]) for t in TEXTS]
    calls = list(runner.batches(TEXTS, batch_size=8))
    firsts = [max(widths[i] for i in index) for index, _ in calls]
    assert firsts == sorted(firsts, reverse=True) and firsts[0] > firsts[-1]
    assert sorted(i for index, _ in calls for i in index) == list(range(len(TEXTS)))


def test_onnx_and_eager_agree_and_the_tokenizer_travels_with_the_file(outputs, tmp_path) -> None:
    eager = Runner.open(outputs["module"])(TEXTS)
    onnx = Runner.open(outputs["onnx"], threads=1)
    assert onnx.loaded.record is not None and onnx.loaded.record.tokenizer_files
    assert torch.allclose(eager, onnx(TEXTS), atol=1e-4)


def test_mean_pooling_by_default_and_pooling_option(outputs) -> None:
    runner = Runner.open(outputs["module"])
    assert runner.pooling.modes == ("mean",)
    cls = Runner.open(outputs["module"], pooling="cls+normalize").encode(TEXTS[:3])
    assert torch.allclose(cls.norm(dim=-1), torch.ones(3), atol=1e-5)
    ids = runner.tokenizer(TEXTS[:1], return_tensors="pt")
    hidden = runner.loaded.model(**{k: ids[k] for k in runner.input_names})["last_hidden_state"]
    assert torch.allclose(runner.encode(TEXTS[:1])[0], hidden[0].mean(0), atol=ATOL)


def test_classifier_returns_logits_for_texts_and_pairs(tmp_path) -> None:
    module = optc.capture(str(_model_dir(tmp_path / "cls", "BertForSequenceClassification")))
    runner = Runner.open(module)
    logits = runner(TEXTS, batch_size=5)
    assert logits.shape == (len(TEXTS), 3)
    assert torch.allclose(logits, _alone(runner, TEXTS), atol=ATOL)
    pairs = list(zip(TEXTS[:6], TEXTS[6:12], strict=True))
    assert torch.allclose(runner(pairs, batch_size=4), _alone(runner, pairs), atol=ATOL)


def test_refusals(outputs, tmp_path) -> None:
    runner = Runner.open(outputs["module"])
    with pytest.raises(InputError, match="not one string"):
        runner.encode("a text")
    with pytest.raises(InputError, match="text 1 is a int"):
        runner.encode(["a", 3])
    with pytest.raises(InputError, match="not an optc output"):
        open_output(tmp_path / "model.bin")
    with pytest.raises(InputError, match="does not exist"):
        open_output(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="position table"):
        Runner.open(outputs["module"], max_length=1000)
    with pytest.raises(InputError, match="positive integer"):
        Runner.open(outputs["module"], max_length=0)
    assert Runner.open(outputs["module"], max_length=5).encode(TEXTS[:2]).shape == (2, 32)
    assert runner.encode([]).shape[0] == 0
