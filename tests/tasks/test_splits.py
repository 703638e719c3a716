"""The validation split carved from train: seeded, disjoint, covering, stratified."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from optc.errors import InputError
from optc.tasks import get_task, validation_split
from optc.tasks.records import SquadRecord
from optc.tests.tasks.helpers import write


def test_sst2_split_is_deterministic_disjoint_covering_and_stratified(data_env):
    task = get_task("sst2")
    full = task.read("train", val_size=0)
    train, val = validation_split("classification", [e.label for e in full], None, len(full))
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(len(full)))
    assert len(val) == math.ceil(0.15 * len(full))
    assert validation_split("classification", [e.label for e in full], None, len(full)) == (train, val)
    other = validation_split("classification", [e.label for e in full], None, len(full), seed=1)
    assert other[1] != val
    # stratified: the positive rate is the same on both sides (to rounding)
    rate = np.mean([e.label for e in full])
    assert abs(np.mean([full[i].label for i in val]) - rate) < 1e-3
    assert abs(np.mean([full[i].label for i in train]) - rate) < 1e-3
    # Task.read gives the two parts in file order
    assert task.read("val") == [full[i] for i in val]
    assert len(task.read("train")) == len(train)


def test_val_size_as_count_and_seed(tmp_path):
    rows = "".join(f"text {i}\t{i % 3}\n" for i in range(60))
    write(tmp_path / "train.tsv", "text\tlabel\n" + rows)
    task = get_task("text-classification", num_labels=3)
    val = task.read("val", tmp_path, val_size=12, seed=7)
    assert len(val) == 12 and Counter(e.label for e in val) == {0: 4, 1: 4, 2: 4}
    assert val == task.read("val", tmp_path, val_size=12, seed=7)
    train = task.read("train", tmp_path, val_size=12, seed=7)
    assert len(train) == 48 and not set(e.text for e in train) & set(e.text for e in val)


def test_tiny_class_falls_back_to_a_plain_split():
    labels = [0] * 19 + [1]  # class 1 has a single example: cannot stratify
    train, val = validation_split("classification", labels, None, 20, val_size=0.25)
    assert len(val) == 5 and sorted(train + val) == list(range(20))


def test_regression_split_is_stratified_by_score_bins(data_env):
    full = get_task("stsb").read("train", val_size=0)
    scores = np.array([e.label for e in full])
    train, val = validation_split("regression", scores.tolist(), None, len(full))
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(full)
    assert abs(scores[val].mean() - scores.mean()) < 0.05
    assert abs(np.median(scores[val]) - np.median(scores)) < 0.25


def _records(n_contexts: int, per_context: int) -> list[SquadRecord]:
    return [SquadRecord(f"q{c}-{q}", f"t{c % 4}", f"question {q}?", f"context number {c}.",
                        ("number",), (8,))
            for c in range(n_contexts) for q in range(per_context)]


def test_qa_split_keeps_each_context_on_one_side():
    records = _records(20, 3)
    contexts = [r.context for r in records]
    train, val = validation_split("extractive-qa", None, contexts, len(records), val_size=0.25)
    assert {contexts[i] for i in train}.isdisjoint({contexts[i] for i in val})
    assert sorted(train + val) == list(range(len(records)))
    assert len({contexts[i] for i in val}) == 5
    assert (train, val) == validation_split("extractive-qa", None, contexts, len(records),
                                            val_size=0.25)


def test_qa_val_from_squad_dev_file(data_root):
    task = get_task("squad")
    val = task.read("val", data_root / "squad/dev-v1.1.json", val_size=0.1)
    train = task.read("train", data_root / "squad/dev-v1.1.json", val_size=0.1)
    assert len(val) + len(train) == 10570
    assert {r.context for r in val}.isdisjoint({r.context for r in train})


@pytest.mark.parametrize("size, message", [
    (0.0, "strictly between 0 and 1"), (1.5, "strictly between 0 and 1"),
    (20, "below the 20 training examples"), ("a", "must be a fraction"),
    (0.99, "leaves no training examples"),
])
def test_bad_val_size(size, message):
    with pytest.raises(InputError, match=message):
        validation_split("classification", [0, 1] * 10, None, 20, val_size=size)


def test_val_with_zero_size_is_refused(data_env):
    with pytest.raises(InputError, match="split 'val' of task 'rte' is empty with val_size=0"):
        get_task("rte").read("val", val_size=0)
