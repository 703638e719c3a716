"""The paired bootstrap of a metric change (optc.tasks.significance)."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import InputError
from optc.tasks import get_task, paired_bootstrap


def _noisy(labels, correct, rng):
    return [y if rng.random() < correct else 1 - y for y in labels]


def test_identical_predictions_change_nothing():
    labels = [0, 1] * 50
    preds = _noisy(labels, 0.7, np.random.default_rng(0))
    d = paired_bootstrap(get_task("sst2"), preds, preds, labels, resamples=100)
    assert d.delta == 0 and d.low == 0 == d.high and not d.significant
    assert d.describe() == "+0.00 [95% CI +0.00, +0.00]"


def test_a_clearly_better_model_is_significant_and_a_small_sample_is_not():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400).tolist()
    before = _noisy(labels, 0.6, rng)
    after = list(labels)  # always right
    d = paired_bootstrap(get_task("sst2"), before, after, labels, resamples=300)
    assert d.before == pytest.approx(100 * np.mean(np.array(before) == np.array(labels)))
    assert d.after == 100 and d.significant and 0 < d.low < d.delta < d.high
    few = paired_bootstrap(get_task("sst2"), before[:10], before[:9] + [1 - before[9]],
                           labels[:10], resamples=300)
    assert not few.significant and few.low < 0 <= few.high  # one example differs
    # the same seed draws the same resamples
    again = paired_bootstrap(get_task("sst2"), before, after, labels, resamples=300)
    assert (again.low, again.high) == (d.low, d.high)
    wider = paired_bootstrap(get_task("sst2"), before, after, labels, resamples=300,
                             confidence=0.99)
    assert wider.low <= d.low and wider.high >= d.high


def test_main_metric_of_the_task_is_compared():
    rng = np.random.default_rng(2)
    gold = (rng.random(300) * 5).tolist()
    before = [g + rng.normal(0, 2) for g in gold]
    after = [g + rng.normal(0, 0.5) for g in gold]
    d = paired_bootstrap(get_task("stsb"), before, after, gold, resamples=200)
    assert d.metric == "pearson" and d.significant and d.delta > 0
    labels = rng.integers(0, 2, 200).tolist()
    m = paired_bootstrap(get_task("cola"), _noisy(labels, 0.8, rng), labels, labels,
                         resamples=200)
    assert m.metric == "matthews_correlation" and m.after == pytest.approx(100.0)


def test_bad_input_is_one_line():
    task = get_task("sst2")
    with pytest.raises(InputError, match="same examples: got 2 and 3 for 3"):
        paired_bootstrap(task, [0, 1], [0, 1, 1], [0, 1, 1])
    with pytest.raises(InputError, match="at least 2 examples"):
        paired_bootstrap(task, [0], [0], [0])
    with pytest.raises(InputError, match=r"fraction in \(0, 1\)"):
        paired_bootstrap(task, [0, 1], [0, 1], [0, 1], confidence=1.0)
