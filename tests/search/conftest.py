"""Fixtures for optc.search: a tiny random BERT with a classification head whose logits vary
(so candidates change the losses), a word-level tokenizer and a synthetic task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.train import add_task_head

TASK = "text-classification"


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tok_dir):
    return write_tokenizer(tok_dir)


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("search-task"), train=200, dev=40)


def headed(layers: int = 2, seed: int = 0):
    """A captured tiny BERT with a task head scaled up so that its logits differ per example."""
    _, module = tiny_bert(layers=layers, seed=seed)
    add_task_head(module, TASK)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, param in module.params.items():
        if name.startswith("classifier") and name.endswith("weight"):
            param.data = torch.randn(param.data.shape, generator=gen) * 2.0
    return module


@pytest.fixture(scope="session")
def _headed():
    return headed(seed=2)


def with_tokenizer(headed, tok_dir: Path):
    """A clone of ``headed`` whose source names the tokenizer in ``tok_dir``."""
    m = headed.clone()
    m.meta["source"] = {**(m.meta.get("source") or {}), "tokenizer": str(tok_dir)}
    return m


@pytest.fixture
def module(_headed, tok_dir, tokenizer):
    return with_tokenizer(_headed, tok_dir)
