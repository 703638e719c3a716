"""Metrics against hand-computed values (percentages, as GLUE and SQuAD report them)."""

from __future__ import annotations

import math

import pytest

from optc.errors import InputError
from optc.tasks import (
    accuracy,
    f1,
    matthews_correlation,
    normalize_answer,
    pearson,
    spearman,
    squad_exact_match,
    squad_f1,
    squad_metrics,
)


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50.0)
    assert accuracy([2, 2, 0], [2, 2, 0]) == pytest.approx(100.0)


def test_f1_of_positive_class():
    # tp=2 fp=1 fn=1: precision 2/3, recall 2/3, F1 2/3
    assert f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(200 / 3)
    assert f1([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0, no warning


def test_matthews_correlation():
    # tp=2 tn=1 fp=1 fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert matthews_correlation([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(100 / 6)
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction


def test_pearson_and_spearman():
    # x = 1,2,3 ; y = 1,3,2: cov = 0.5*... -> r = 0.5 ; ranks equal the values -> rho = 0.5
    assert pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(50.0)
    assert spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(50.0)
    # monotone but not linear: spearman 100, pearson below
    assert spearman([1.0, 2.0, 10.0], [1.0, 2.0, 3.0]) == pytest.approx(100.0)
    assert pearson([1.0, 2.0, 10.0], [1.0, 2.0, 3.0]) < 100.0
    assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0  # constant: 0, never NaN


def test_metric_input_checks():
    with pytest.raises(InputError, match="one prediction per reference"):
        accuracy([1, 0], [1])
    with pytest.raises(InputError, match="at least one"):
        accuracy([], [])


@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),
    ("  an   apple, a pear and THE plum. ", "apple pear and plum"),
    ("theory", "theory"),  # articles only as whole words
    ("Denver Broncos'", "denver broncos"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_squad_exact_match_and_f1():
    assert squad_exact_match("The Cat!", ["cat"]) == 1.0
    assert squad_exact_match("a dog", ["cat", "the dog"]) == 1.0  # best gold answer counts
    assert squad_exact_match("dog", ["cat"]) == 0.0
    # pred 'black cat sat' vs gold 'the cat sat down': common cat, sat -> P 2/3, R 2/3
    assert squad_f1("black cat sat", ["the cat sat down"]) == pytest.approx(2 / 3)
    assert squad_f1("Denver", ["Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    assert squad_f1("dog", ["cat"]) == 0.0
    # unanswerable (v2): only the empty answer is right
    assert squad_exact_match("", []) == 1.0 and squad_f1("", []) == 1.0
    assert squad_exact_match("cat", []) == 0.0 and squad_f1("cat", []) == 0.0


def test_squad_metrics_averages_and_v2_breakdown():
    v1 = squad_metrics(["The Cat!", "black cat sat"], [["cat"], ["the cat sat down"]])
    assert v1 == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
    v2 = squad_metrics(["cat", "", "x"], [["cat"], [], []])
    assert v2["exact_match"] == pytest.approx(200 / 3)
    assert v2["has_answer_exact_match"] == 100.0 and v2["no_answer_exact_match"] == 50.0
    assert not math.isnan(v2["f1"])
    with pytest.raises(InputError, match="one prediction per question"):
        squad_metrics(["a"], [])


@pytest.mark.parametrize("name", ["accuracy", "f1", "matthews_correlation", "pearson",
                                  "spearman"])
def test_batched_metrics_equal_the_metric_row_by_row(name):
    """The bootstrap's batched metrics equal scikit-learn/scipy's on every row, edge rows
    included (constant predictions or references, no positive, 3 classes, tied scores)."""
    import numpy as np

    from optc.tasks.metrics import BATCHED_METRICS, METRICS

    rng = np.random.default_rng(0)
    n = 23
    if name in ("pearson", "spearman"):
        refs = np.round(rng.random((40, n)) * 5, 1)  # ties for spearman
        preds = refs + rng.normal(0, 1, (40, n))
        preds[0] = 1.0
        refs[1] = 2.0
        preds[2] = np.round(preds[2])
    else:
        classes = 3 if name == "matthews_correlation" else 2
        refs = rng.integers(0, classes, (40, n))
        preds = np.where(rng.random((40, n)) < 0.7, refs, rng.integers(0, classes, (40, n)))
        preds[0] = 0
        refs[1] = 0
        preds[2], refs[2] = 0, 0
        refs[3] = 1
    got = BATCHED_METRICS[name](preds, refs)
    want = [METRICS[name](list(p), list(r)) for p, r in zip(preds, refs, strict=True)]
    assert np.allclose(got, want, atol=1e-9), (got[:4], want[:4])
