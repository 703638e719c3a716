"""Fixtures for optc.train: a tiny random BERT with a matching word-level tokenizer and a
synthetic, separable text-classification task written as TSV files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import optc

FILLER = ["the", "a", "movie", "film", "was", "is", "very", "plot", "actors", "story", "and",
          "it", "this", "quite", "really", "scene", "music", "ending"]
POSITIVE = ["good", "great", "wonderful", "excellent", "fun"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + FILLER + POSITIVE + NEGATIVE


def write_tokenizer(directory: Path):
    """A BERT WordPiece tokenizer over :data:`VOCAB`, saved in ``directory``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab={word: i for i, word in enumerate(VOCAB)}, do_lower_case=True)
    tok.save_pretrained(str(directory))
    return tok


def sentences(count: int, seed: int) -> list[tuple[str, int]]:
    """(sentence, label): label 1 iff the sentence holds a positive word."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        words = rng.choices(FILLER, k=rng.randint(3, 9))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_task(directory: Path, train: int = 192, dev: int = 64) -> Path:
    """train.tsv and dev.tsv (columns text, label) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 0), ("dev", dev, 1)):
        lines = ["text\tlabel"] + [f"{s}\t{y}" for s, y in sentences(count, seed)]
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def tiny_bert(layers: int = 2, seed: int = 0, head: str = "base"):
    """A tiny random BERT (hidden 32, 4 heads) over :data:`VOCAB`, captured."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64)
    if head == "sequence-classification":
        config.num_labels = 3
        model = tf.BertForSequenceClassification(config).eval()
    else:
        model = tf.BertModel(config).eval()
    return model, optc.capture(model)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tok_dir):
    return write_tokenizer(tok_dir)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="session")
def _captured():
    return tiny_bert()


@pytest.fixture
def bert(_captured, tok_dir, tokenizer):
    """(HF model, a fresh clone of its captured IR with the tokenizer recorded)."""
    model, module = _captured
    module = module.clone()
    module.meta["source"]["tokenizer"] = str(tok_dir)
    return model, module


@pytest.fixture
def batch(tokenizer):
    """A padded batch of model inputs from the synthetic sentences."""
    texts = [s for s, _ in sentences(6, 5)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny BERT saved as a Hugging Face directory, with its tokenizer."""
    import transformers as tf

    path = tmp_path_factory.mktemp("hf-tiny")
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64)
    tf.BertModel(config).save_pretrained(str(path))
    write_tokenizer(path)
    return path
