"""Tiny Hugging Face models and their captured IR, shared by the frontend and backend tests."""

from __future__ import annotations

import functools

import torch

import optc
from optc.ir import Module
from optc.tests.conftest import TINY, tiny_model

ENCODERS = [
    ("bert", "base"),
    ("roberta", "base"),
    ("distilbert", "base"),
    ("electra", "base"),
    ("xlm-roberta", "base"),
    ("bert", "sequence-classification"),
    ("bert", "question-answering"),
]
"""Bidirectional (family, head) pairs; GPT-2 is tested on its own (causal, Conv1D, gelu_new)."""

OUTPUTS = {
    ("bert", "base"): ["last_hidden_state", "pooler_output"],
    ("roberta", "base"): ["last_hidden_state", "pooler_output"],
    ("xlm-roberta", "base"): ["last_hidden_state", "pooler_output"],
    ("distilbert", "base"): ["last_hidden_state"],
    ("electra", "base"): ["last_hidden_state"],
    ("bert", "sequence-classification"): ["logits"],
    ("bert", "question-answering"): ["start_logits", "end_logits"],
    ("gpt2", "base"): ["last_hidden_state"],
}
"""The IR's output names: the Hugging Face output fields."""

SIZES = [(1, 5), (3, 7), (2, 31)]
"""(batch, seq) pairs to compare numbers on; padding is in every other row."""


def make_model(family: str, head: str = "base", attn: str = "sdpa") -> torch.nn.Module:
    """``tiny_model``, except that question answering gets the 2 labels (start, end) it needs."""
    if head == "question-answering":
        import transformers as tf

        torch.manual_seed(0)
        model = tf.BertForQuestionAnswering(tf.BertConfig(**TINY, num_labels=2)).eval()
    else:
        model = tiny_model(family, head)
    model.config._attn_implementation = attn
    return model


@functools.cache
def captured(family: str, head: str = "base", attn: str = "sdpa") -> tuple[torch.nn.Module, Module]:
    """The model and its captured IR, captured once per session: clone before mutating."""
    model = make_model(family, head, attn)
    return model, optc.capture(model)
