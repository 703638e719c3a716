"""SQuAD features and span decoding with the real MiniLM fast tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optc.errors import InputError, PipelineSpecError
from optc.tasks import build_features, decode_answers, get_task, squad_metrics
from optc.tasks.records import SquadRecord


@pytest.fixture(scope="module")
def dev_sample(data_root):
    records = get_task("squad").read("dev", data_root / "squad")
    return records[::35][:300]  # spread over the 48 articles


def one_hot(features, start_of=lambda f: f.start_position, end_of=lambda f: f.end_position):
    starts, ends = [], []
    for f in features:
        s, e = np.zeros(len(f) + 3), np.zeros(len(f) + 3)  # longer arrays are padding
        s[start_of(f)], e[end_of(f)] = 1.0, 1.0
        starts.append(s)
        ends.append(e)
    return starts, ends


def _aligned(record: SquadRecord, feature) -> bool:
    """Whether the gold answer starts and ends on token boundaries of this feature."""
    start, end = record.answer_start, record.answer_start + len(record.answer_text)
    return (feature.offsets[feature.start_position][0] == start
            and feature.offsets[feature.end_position][1] == end)


@pytest.mark.parametrize("max_length, stride", [(384, 128), (96, 32)])
def test_one_hot_gold_positions_decode_to_the_gold_answer(dev_sample, tokenizer, max_length, stride):
    features = build_features(dev_sample, tokenizer, max_length, stride)
    owners = [f.example_index for f in features]
    assert sorted(set(owners)) == list(range(len(dev_sample))) and owners == sorted(owners)
    if max_length == 96:
        assert len(features) > 1.5 * len(dev_sample)  # long contexts give several windows
    assert all(len(f) <= max_length for f in features)
    answered = [f for f in features if f.start_position != f.cls_index]
    # every question has its answer inside at least one window
    assert {f.example_index for f in answered} == set(range(len(dev_sample)))
    for f in features:
        assert f.input_ids[f.cls_index] == tokenizer.cls_token_id
        if f.start_position == f.cls_index:
            assert f.end_position == f.cls_index
            continue
        record = dev_sample[f.example_index]
        first, last = f.offsets[f.start_position], f.offsets[f.end_position]
        assert first is not None and last is not None and f.start_position <= f.end_position
        # the span covers the answer, and no shorter span does
        assert first[0] <= record.answer_start < first[1] or first[0] == record.answer_start
        assert last[1] >= record.answer_start + len(record.answer_text) > last[0]
    starts, ends = one_hot(features)
    answers = decode_answers(dev_sample, features, starts, ends)
    aligned = {f.example_index for f in answered if _aligned(dev_sample[f.example_index], f)}
    assert len(aligned) >= 0.97 * len(dev_sample)
    for i in aligned:
        assert answers[i] == dev_sample[i].answer_text, dev_sample[i].id
    assert squad_metrics(answers, [r.answer_texts for r in dev_sample])["exact_match"] >= 97.0


def _record(qid: str, context: str, answer: str | None) -> SquadRecord:
    if answer is None:
        return SquadRecord(qid, "t", "Who wrote it?", context, (), ())
    return SquadRecord(qid, "t", "Who wrote it?", context, (answer,), (context.index(answer),))


def test_decoding_limits_and_null_answers(tokenizer):
    records = [_record("a", "The novel was written by Jane Austen in 1811.", "Jane Austen"),
               _record("b", "Nobody knows the author of this old song.", None)]
    features = build_features(records, tokenizer)
    assert [f.example_index for f in features] == [0, 1]
    answer, unanswerable = features
    assert unanswerable.start_position == unanswerable.end_position == unanswerable.cls_index
    assert answer.offsets[answer.start_position][0] == records[0].context.index("Jane")
    starts, ends = one_hot(features)
    # v1 always answers with the best span; v2 answers "" when the null score wins
    assert decode_answers(records, features, starts, ends)[0] == "Jane Austen"
    assert decode_answers(records, features, starts, ends, version_2=True) == ["Jane Austen", ""]
    # a span longer than max_answer_length is never chosen
    assert decode_answers(records[:1], features[:1], starts[:1], ends[:1],
                          max_answer_length=1)[0] in ("Jane", "Austen")
    # the null score must beat the best span by more than the threshold
    s, e = starts[0].copy(), ends[0].copy()
    s[answer.cls_index] = e[answer.cls_index] = 0.9
    assert decode_answers(records[:1], features[:1], [s], [e], version_2=True) == ["Jane Austen"]
    assert decode_answers(records[:1], features[:1], [s], [e], version_2=True,
                          null_threshold=-0.5) == [""]


def test_squad_v1_refuses_unanswerable_and_v2_reads_it(tmp_path):
    document = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{
        "context": "Jane Austen wrote novels.",
        "qas": [{"id": "1", "question": "Who wrote novels?", "is_impossible": False,
                 "answers": [{"text": "Jane Austen", "answer_start": 0}]},
                {"id": "2", "question": "Who wrote poems?", "is_impossible": True,
                 "answers": [], "plausible_answers": [{"text": "Jane", "answer_start": 0}]}]}]}]}
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(document))
    records = get_task("squad_v2").read("dev", tmp_path)
    assert [r.answer_texts for r in records] == [("Jane Austen",), ()]
    with pytest.raises(InputError, match="question '2' has no answer.*use task squad_v2"):
        get_task("squad").read("dev", tmp_path / "dev-v2.0.json")


def test_feature_errors(tokenizer, dev_sample):
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(InputError, match="needs a fast tokenizer"):
        build_features(dev_sample[:1], SlowTokenizer())
    with pytest.raises(PipelineSpecError, match="doc_stride < max_length"):
        build_features(dev_sample[:1], tokenizer, max_length=64, doc_stride=64)
    with pytest.raises(InputError, match="start and end logits for each"):
        decode_answers(dev_sample[:1], build_features(dev_sample[:1], tokenizer), [], [])


def test_a_window_too_short_for_the_stride(tokenizer, caplog):
    """The tokenizer panics (a Rust backtrace, not an exception) when the overlap is not shorter
    than the context part of a window: the default overlap is lowered with a note, a given one
    and a window with no room for the context are refused with one line, before tokenizing."""
    import logging

    question = "What is the name of the very long question here that goes on?"  # 14 tokens
    record = SquadRecord("q1", "t", question, "This is a context " * 30, ("context",), (10,))
    with caplog.at_level(logging.WARNING, logger="optc"):
        features = build_features([record], tokenizer, max_length=24)  # 17 taken, stride 8
    assert [r.getMessage() for r in caplog.records] == [
        "question 'q1' and the special tokens take 17 of the max_length 24 tokens: the context "
        "windows overlap by 6 tokens instead of 8"]
    assert len(features) > 10 and all(len(f) <= 24 for f in features)
    with pytest.raises(PipelineSpecError, match=r"^question 'q1' and the special tokens take 17 "
                       r"of the max_length 24 tokens, which leaves 7 for the context: doc_stride "
                       r"7 must be below 7 \(lower it or raise max_length\)$"):
        build_features([record], tokenizer, max_length=24, doc_stride=7)
    with pytest.raises(PipelineSpecError, match=r"take 17 of the max_length 16 tokens, which "
                       r"leaves no room for the context: give a max_length \(--max-length\) "
                       r"above 17$"):
        build_features([record], tokenizer, max_length=16)
