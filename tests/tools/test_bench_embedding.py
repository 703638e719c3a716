"""tools/bench/embedding.py: its unlabeled text comes from training sentences only (never dev),
search and held-out texts are disjoint, and the no-search anchor drops middle layers."""

from __future__ import annotations

import pytest

from optc.errors import InputError
from optc.ir.analysis import analyze, module_flops
from optc.tasks import get_task
from optc.tasks.reuse import reuse_reads
from optc.tests.train.conftest import tiny_bert
from optc.tools.bench.embedding import TEXT_TASKS, _middle_drop, search_texts


def test_search_texts_are_training_sentences_disjoint_and_seeded(data_dir) -> None:
    with reuse_reads():  # each GLUE file parsed once
        search, held = search_texts(300, 200, seed=3, root=data_dir)
        assert len(search) == 300 and len(held) == 200 and not set(search) & set(held)
        assert (search, held) == search_texts(300, 200, seed=3, root=data_dir)
        with pytest.raises(InputError, match="the training sentences hold"):
            search_texts(10**7, 1, root=data_dir)
    dev = set()
    for name in TEXT_TASKS:
        task = get_task(name)
        for e in task.read("dev", data_dir / str(task.data_path)):
            dev.update({e.text.strip(), (e.text_pair or "").strip()})
    train_only = [t for t in search + held if t not in dev]
    assert len(train_only) >= 0.95 * 500  # a few sentences occur in both splits of GLUE


def test_middle_drop_removes_the_middle_layers_first() -> None:
    _, module = tiny_bert(layers=4, seed=1)
    full = module_flops(module, 128)
    dropped, count = _middle_drop(module, full - 1)
    assert count == 1 and module_flops(dropped, 128) < full
    assert len(analyze(dropped).layers) == 3
    two, count = _middle_drop(module, module_flops(dropped, 128) - 1)
    assert count == 2 and len(analyze(two).layers) == 2
