"""Task metrics, reported as GLUE and SQuAD papers report them: percentages (x100).

Classification and regression metrics take predictions and references as sequences (or
arrays) of the same length and wrap scikit-learn and scipy; the SQuAD metrics compare answer
texts after the official answer normalization.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from optc.errors import InputError

__all__ = [
    "METRICS",
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearman",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
    "BATCHED_METRICS",
]


def _arrays(predictions: Sequence[Any], references: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.shape != refs.shape or preds.ndim != 1:
        raise InputError(f"metrics need one prediction per reference: got {preds.shape[0] if preds.ndim else 0} "
                         f"predictions for {refs.shape[0] if refs.ndim else 0} references")
    if preds.size == 0:
        raise InputError("metrics need at least one example, got none")
    return preds, refs


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Percentage of predictions equal to their reference."""
    preds, refs = _arrays(predictions, references)
    return 100.0 * float(accuracy_score(refs, preds))


def f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP; 0 when
    neither predictions nor references contain a positive."""
    preds, refs = _arrays(predictions, references)
    return 100.0 * float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0))


def matthews_correlation(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0 when either side is constant."""
    preds, refs = _arrays(predictions, references)
    return 100.0 * float(matthews_corrcoef(refs, preds))


def _correlation(fn: Callable[..., Any], predictions: Sequence[float],
                 references: Sequence[float]) -> float:
    preds, refs = _arrays(predictions, references)
    preds, refs = preds.astype(np.float64), refs.astype(np.float64)
    if preds.size < 2 or np.all(preds == preds[0]) or np.all(refs == refs[0]):
        return 0.0  # undefined for constant input; 0 like matthews_corrcoef, never NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(preds, refs)[0])
    return 0.0 if np.isnan(value) else 100.0 * value


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation (STS-B); 0 when either side is constant."""
    return _correlation(stats.pearsonr, predictions, references)


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (STS-B); 0 when either side is constant."""
    return _correlation(stats.spearmanr, predictions, references)


METRICS: Mapping[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}
"""Classification and regression metrics by the name tasks list them under."""


# --------------------------------------------------------------------------------------------
# The same metrics over many resamples at once (rows), for the paired bootstrap: numpy over a
# [resamples, examples] array instead of one scikit-learn call per resample (1,000 calls took
# seconds per interval). Each equals its metric above row by row (tests/tasks/test_metrics.py).

def _rows_accuracy(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    return 100.0 * (preds == refs).mean(axis=-1)


def _rows_f1(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    p, r = preds == 1, refs == 1
    tp = (p & r).sum(axis=-1)
    denominator = p.sum(axis=-1) + r.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 100.0 * 2 * tp / denominator, 0.0)


def _rows_matthews(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    classes = np.unique(np.concatenate([preds.ravel(), refs.ravel()]))
    p = np.searchsorted(classes, preds)
    r = np.searchsorted(classes, refs)
    k, n = len(classes), preds.shape[-1]
    rows = np.arange(preds.shape[0])[:, None] * k * k
    confusion = np.bincount((rows + r * k + p).ravel(), minlength=preds.shape[0] * k * k)
    confusion = confusion.reshape(preds.shape[0], k, k).astype(np.float64)
    t, q = confusion.sum(axis=2), confusion.sum(axis=1)  # true / predicted counts per class
    c = np.trace(confusion, axis1=1, axis2=2)
    cov_pr = c * n - (t * q).sum(axis=1)
    cov_pp = n * n - (q * q).sum(axis=1)
    cov_rr = n * n - (t * t).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = cov_pr / np.sqrt(cov_pp * cov_rr)
    return 100.0 * np.where((cov_pp * cov_rr) > 0, value, 0.0)


def _rows_pearson(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    x = preds.astype(np.float64) - preds.mean(axis=-1, keepdims=True)
    y = refs.astype(np.float64) - refs.mean(axis=-1, keepdims=True)
    constant = (np.ptp(preds, axis=-1) == 0) | (np.ptp(refs, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    value = np.clip(value, -1.0, 1.0)
    return np.where(constant | np.isnan(value), 0.0, 100.0 * value)


def _rows_spearman(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    return _rows_pearson(stats.rankdata(preds, axis=-1), stats.rankdata(refs, axis=-1)) * \
        np.where((np.ptp(preds, axis=-1) == 0) | (np.ptp(refs, axis=-1) == 0), 0.0, 1.0)


BATCHED_METRICS: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _rows_accuracy,
    "f1": _rows_f1,
    "matthews_correlation": _rows_matthews,
    "pearson": _rows_pearson,
    "spearman": _rows_spearman,
}
""":data:`METRICS` over ``[rows, examples]`` arrays of predictions and references: one value
per row (a bootstrap resample), equal to the metric of that row."""


# --------------------------------------------------------------------------------------------
# SQuAD. No maintained library offers these without pulling in `evaluate`/`datasets`; the
# definitions below follow the official SQuAD v1.1 evaluation script (normalize_answer,
# exact_match_score, f1_score, max over gold answers), with the v2.0 script's rule for empty
# answers (an unanswerable question has the gold answer "", and F1 of two token lists one of
# which is empty is 1 when both are empty, else 0).

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer, else 0.0; no gold
    answers means the question is unanswerable and only "" matches."""
    return max(_exact(prediction, gold) for gold in (gold_answers or [""]))


def squad_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """Best token-overlap F1 (0..1) of the normalized prediction against any gold answer."""
    return max(_f1(prediction, gold) for gold in (gold_answers or [""]))


def squad_metrics(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """``exact_match`` and ``f1`` (percentages) of answer texts against the gold answers of
    each question, in the same order. When some questions have no gold answer (SQuAD v2.0)
    the split into ``has_answer_*`` and ``no_answer_*`` is reported as well."""
    if len(predictions) != len(gold_answers):
        raise InputError(f"metrics need one prediction per question: got {len(predictions)} "
                         f"predictions for {len(gold_answers)} questions")
    if not predictions:
        raise InputError("metrics need at least one question, got none")
    exact = [squad_exact_match(p, g) for p, g in zip(predictions, gold_answers, strict=True)]
    f1s = [squad_f1(p, g) for p, g in zip(predictions, gold_answers, strict=True)]
    result = {"exact_match": 100.0 * float(np.mean(exact)), "f1": 100.0 * float(np.mean(f1s))}
    answerable = [bool(g) for g in gold_answers]
    if not all(answerable):
        for prefix, keep in (("has_answer", True), ("no_answer", False)):
            picked = [i for i, a in enumerate(answerable) if a == keep]
            if picked:
                result[f"{prefix}_exact_match"] = 100.0 * float(np.mean([exact[i] for i in picked]))
                result[f"{prefix}_f1"] = 100.0 * float(np.mean([f1s[i] for i in picked]))
    return result
