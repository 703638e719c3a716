"""Extractive question answering (SQuAD v1.1 and v2.0): features and span decoding.

Features follow the usual Hugging Face recipe: the question and its context are tokenized
together by a *fast* tokenizer, truncating only the context to ``max_length`` tokens; a long
context gives several overlapping features (``doc_stride`` tokens of overlap), each with the
character offsets of its context tokens. The overlap must be shorter than the context part of a
window (``max_length`` less the longest question and the special tokens): the default one is
lowered to fit, with a note; a given one that does not fit, or a ``max_length`` that leaves no
context at all, is refused (:class:`~optc.errors.PipelineSpecError`, a bad option). A feature whose window holds the whole first gold
answer has its start/end token positions; any other feature (and any unanswerable question)
points both at the classifier token.

Decoding goes back from start/end logits to text: for each feature, the ``n_best`` highest
start and end logits are paired into spans inside the context, at most
``max_answer_length`` tokens long; the best-scoring span over all features of a question is
the answer. With SQuAD v2.0 the question is answered "" when the null score (start and end at
the classifier token, best over the features) beats the best span by more than
``null_threshold``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optc.errors import InputError, PipelineSpecError
from optc.tasks.records import SquadRecord

__all__ = [
    "QAFeature",
    "build_features",
    "decode_answers",
    "default_doc_stride",
]

_log = logging.getLogger("optc")


@dataclass(frozen=True)
class QAFeature:
    """One window of a question and its context, tokenized."""

    example_index: int
    """Index of the question (in the list given to :func:`build_features`) it belongs to."""
    input_ids: tuple[int, ...]
    """Token ids, unpadded."""
    token_type_ids: tuple[int, ...] | None
    """Segment ids (``None`` when the tokenizer gives none)."""
    offsets: tuple[tuple[int, int] | None, ...]
    """Character span of each token in the context; ``None`` for question and special tokens."""
    cls_index: int
    """Position of the classifier token: the target of a missing or out-of-window answer."""
    start_position: int
    """Token position of the answer's first token (``cls_index`` when not in this window)."""
    end_position: int
    """Token position of the answer's last token (``cls_index`` when not in this window)."""

    def __len__(self) -> int:
        return len(self.input_ids)


def default_doc_stride(max_length: int) -> int:
    """Overlap of consecutive windows: 128 tokens at the usual ``max_length=384``."""
    return max(1, max_length // 3)


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"extractive QA needs a fast tokenizer (offset mappings), got "
                         f"{type(tokenizer).__name__}: load it with AutoTokenizer(use_fast=True)")


def _positions(offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None],
               context_id: int, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token positions (first, last) of the character span [start_char, end_char) inside the
    context tokens, or ``None`` when the window does not hold all of it."""
    context = [k for k, s in enumerate(sequence_ids) if s == context_id]
    if not context:
        return None
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return None
    start = max(k for k in range(first, last + 1) if offsets[k][0] <= start_char)
    end = min(k for k in range(first, last + 1) if offsets[k][1] >= end_char)
    return (start, end) if start <= end else None


def _fit_stride(records: Sequence[SquadRecord], tokenizer: Any, max_length: int, stride: int,
                derived: bool) -> int:
    """A stride below the context tokens that ``max_length`` leaves beside the longest
    question (the tokenizer panics otherwise): a derived one is lowered with a note, a given
    one refused; a question that leaves no context token at all is refused."""
    if not records:
        return stride
    questions = [r.question.lstrip() for r in records]
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(records)), key=lengths.__getitem__)
    taken = lengths[longest] + tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - taken
    where = (f"question '{records[longest].id}' and the special tokens take {taken} of the "
             f"max_length {max_length} tokens")
    if room < 1:
        raise PipelineSpecError(f"{where}, which leaves no room for the context: give a "
                                f"max_length (--max-length) above {taken}")
    if stride < room:
        return stride
    if not derived:
        raise PipelineSpecError(f"{where}, which leaves {room} for the context: doc_stride "
                                f"{stride} must be below {room} (lower it or raise max_length)")
    _log.warning("%s: the context windows overlap by %d tokens instead of %d", where, room - 1,
                 stride)
    return room - 1


def build_features(records: Sequence[SquadRecord], tokenizer: Any, max_length: int = 384,
                   doc_stride: int | None = None) -> list[QAFeature]:
    """The features of ``records`` in order (every question gives at least one)."""
    _check_tokenizer(tokenizer)
    stride = default_doc_stride(max_length) if doc_stride is None else doc_stride
    if max_length < 8 or not 0 <= stride < max_length:
        raise PipelineSpecError(f"QA features need max_length >= 8 and 0 <= doc_stride < "
                                f"max_length, got max_length={max_length}, doc_stride={stride}")
    stride = _fit_stride(records, tokenizer, max_length, stride, doc_stride is None)
    pad_right = getattr(tokenizer, "padding_side", "right") == "right"
    context_id = 1 if pad_right else 0
    cls_id = tokenizer.cls_token_id
    features: list[QAFeature] = []
    chunk = 256
    for begin in range(0, len(records), chunk):
        part = records[begin:begin + chunk]
        questions = [r.question.lstrip() for r in part]  # leading spaces waste window tokens
        contexts = [r.context for r in part]
        try:
            enc = tokenizer(questions if pad_right else contexts,
                            contexts if pad_right else questions,
                            truncation="only_second" if pad_right else "only_first",
                            max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True,
                            padding=False)
        except Exception as exc:  # noqa: BLE001 - tokenizers raise plain exceptions
            raise InputError(f"cannot tokenize questions {begin}..{begin + len(part) - 1} "
                             f"(max_length={max_length}, doc_stride={stride}): {exc}") from None
        for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
            record = part[sample]
            ids = list(enc["input_ids"][i])
            offsets = [tuple(o) for o in enc["offset_mapping"][i]]
            sequence_ids = enc.sequence_ids(i)
            cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
            span = None
            if record.answer_texts:
                start_char = record.answer_start
                span = _positions(offsets, sequence_ids, context_id, start_char,
                                  start_char + len(record.answer_text))
            start, end = span if span is not None else (cls_index, cls_index)
            types = enc["token_type_ids"][i] if "token_type_ids" in enc else None
            features.append(QAFeature(
                example_index=begin + sample,
                input_ids=tuple(ids),
                token_type_ids=None if types is None else tuple(types),
                offsets=tuple(o if s == context_id else None
                              for o, s in zip(offsets, sequence_ids, strict=True)),
                cls_index=cls_index,
                start_position=start,
                end_position=end,
            ))
    return features


def decode_answers(records: Sequence[SquadRecord], features: Sequence[QAFeature],
                   start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                   n_best: int = 20, max_answer_length: int = 30, version_2: bool = False,
                   null_threshold: float = 0.0) -> list[str]:
    """The answer text of each record from the start/end logits of each feature (one 1-D
    array per feature, at least as long as the feature; longer arrays are padding)."""
    if not len(features) == len(start_logits) == len(end_logits):
        raise InputError(f"need start and end logits for each of the {len(features)} features, "
                         f"got {len(start_logits)} and {len(end_logits)}")
    if n_best < 1 or max_answer_length < 1:
        raise InputError(f"n_best and max_answer_length must be positive, got {n_best} and "
                         f"{max_answer_length}")
    best_score = [-np.inf] * len(records)
    best_text = [""] * len(records)
    null_score = [np.inf] * len(records)
    for feature, starts, ends in zip(features, start_logits, end_logits, strict=True):
        n = len(feature)
        s = np.asarray(starts, dtype=np.float64)[:n]
        e = np.asarray(ends, dtype=np.float64)[:n]
        owner = feature.example_index
        null_score[owner] = min(null_score[owner], s[feature.cls_index] + e[feature.cls_index])
        context = records[owner].context
        top_starts = np.argsort(-s, kind="stable")[:n_best]
        top_ends = np.argsort(-e, kind="stable")[:n_best]
        for a in top_starts:
            first = feature.offsets[a]
            if first is None:
                continue
            for b in top_ends:
                last = feature.offsets[b]
                if last is None or b < a or b - a + 1 > max_answer_length:
                    continue
                score = s[a] + e[b]
                if score > best_score[owner]:
                    best_score[owner] = score
                    best_text[owner] = context[first[0]:last[1]]
    if version_2:
        return [text if score > -np.inf and null - score <= null_threshold else ""
                for text, score, null in zip(best_text, best_score, null_score, strict=True)]
    return best_text
