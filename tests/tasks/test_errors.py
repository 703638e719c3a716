"""Bad input: each one a one-line InputError naming the task, file, line, column or label."""

from __future__ import annotations

import re

import pytest
import torch

from optc.errors import InputError
from optc.tasks import batches, evaluate, get_task
from optc.tasks.records import Example
from optc.tests.tasks.helpers import write


def raises(match: str):
    """pytest.raises(InputError) whose one-line message matches ``match``."""
    return pytest.raises(InputError, match=match)


def _one_line(info) -> None:
    assert "\n" not in str(info.value)


def test_unknown_task(tmp_path):
    with raises(r"unknown task 'sst3': valid tasks are .*cola.*sst2.*text-classification") as info:
        get_task("sst3")
    _one_line(info)


def test_columns_that_do_not_match_the_task(data_root, tmp_path):
    mrpc = data_root / "glue/MRPC/dev.tsv"
    with raises(re.escape(f"{mrpc}:1: no text column 'sentence' in the header ('Quality', ")):
        get_task("sst2").read("dev", mrpc)
    sst2 = data_root / "glue/SST-2/dev.tsv"
    with raises(re.escape(f"{sst2}:1: expected 4 TSV columns, found 2")):
        get_task("cola").read("dev", sst2)  # CoLA has no header: 4 columns per row
    bad = write(tmp_path / "dev.tsv", "sentence\tlabel\ngood\t1\nextra\t1\tcolumn\n")
    with raises(re.escape(f"{bad}:3: expected 2 TSV columns, found 3")):
        get_task("sst2").read("dev", bad)
    text = write(tmp_path / "user/dev.csv", "review,label\nnice,1\n")
    with raises(r"dev.csv:1: no text column 'text' in the header \('review', 'label'\) \(point "
                r"the task at your columns and labels with text_column="):
        get_task("text-classification").read("dev", text)
    lines = write(tmp_path / "user/dev.jsonl", '{"text": "a", "label": 1}\n{"txt": "b"}\n')
    with raises(r"dev.jsonl:2: no text key 'text' in the object \(keys: 'txt'\)"):
        get_task("text-classification").read("dev", lines)
    lines.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with raises(r"dev.jsonl:2: expected one JSON object per line, found list"):
        get_task("text-classification").read("dev", lines)
    lines.write_text('{"text": 5, "label": 1}\n')
    with raises(r"dev.jsonl:1: text column 'text' must hold text, found int 5"):
        get_task("text-classification").read("dev", lines)


def test_labels_that_do_not_match_the_task(tmp_path):
    rte = write(tmp_path / "rte/dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
                "0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
    with raises(re.escape(f"{rte}:3: label 'maybe' in column 'label' is not a label of task 'rte' "
                          "(one of entailment, not_entailment, or an index 0..1)")) as info:
        get_task("rte").read("dev", rte)
    _one_line(info)
    sst2 = write(tmp_path / "sst2/dev.tsv", "sentence\tlabel\ngood\t1\nodd\t2\n")
    with raises(re.escape(f"{sst2}:3: label '2' in column 'label' is not a label of task 'sst2'")):
        get_task("sst2").read("dev", sst2)
    user = write(tmp_path / "user/dev.jsonl", '{"text": "a", "label": "neutral"}\n')
    with raises(r"dev.jsonl:1: label 'neutral' in column 'label' is not a label of task "
                r"'text-classification' \(one of neg, pos, or an index 0..1\) \(point the task"):
        get_task("text-classification", labels="neg,pos").read("dev", user)
    user.write_text('{"text": "a", "label": true}\n')
    with raises("label True in column 'label'"):
        get_task("text-classification").read("dev", user)
    empty = write(tmp_path / "sst2b/dev.tsv", "sentence\tlabel\ngood\t\n")
    with raises(re.escape(f"{empty}:2: label '' in column 'label'")):
        get_task("sst2").read("dev", empty)


def test_regression_with_non_numeric_labels(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    stsb = write(tmp_path / "dev.tsv", header + "0\tg\tf\t2012\t0\tn\tn\ta\tb\thigh\n")
    with raises(re.escape(f"{stsb}:2: regression task 'stsb' needs a numeric label in column "
                          "'score', found 'high'")):
        get_task("stsb").read("dev", stsb)
    stsb.write_text(header + "0\tg\tf\t2012\t0\tn\tn\ta\tb\tnan\n")
    with raises("needs a numeric label"):
        get_task("stsb").read("dev", stsb)


def test_empty_splits(tmp_path):
    header_only = write(tmp_path / "a/dev.tsv", "sentence\tlabel\n\n")
    with raises(f"data file '{re.escape(str(header_only))}' has no examples"):
        get_task("sst2").read("dev", header_only)
    empty = write(tmp_path / "b/dev.tsv", "")
    with raises("is empty: it needs a header and rows"):
        get_task("sst2").read("dev", empty)
    write(tmp_path / "c/train.tsv", "sentence\tlabel\nx\t1\n")
    with raises(r"has no file for split 'dev' \(looked for dev.tsv; it holds train.tsv\)"):
        get_task("sst2").read("dev", tmp_path / "c")
    with raises("nothing to evaluate: no examples given"):
        evaluate("sst2", lambda **_: {}, [], None)
    with raises("no examples to batch"):
        next(batches([], None))


def test_missing_data_and_bad_split(tmp_path):
    with raises(r"data path .*nowhere.* does not exist"):
        get_task("sst2").read("dev", tmp_path / "nowhere")
    with raises("task 'sst2' has no split 'test': valid splits are train, dev, val"):
        get_task("sst2").read("test", tmp_path)
    with raises("limit must be a positive number"):
        get_task("sst2").read("dev", tmp_path, limit=0)
    latin = tmp_path / "latin/dev.tsv"
    latin.parent.mkdir()
    latin.write_bytes("sentence\tlabel\ncaf\u00e9\t1\n".encode("latin-1"))
    with raises("not UTF-8 text"):
        get_task("sst2").read("dev", latin)


def test_evaluate_refuses_unlabelled_or_foreign_examples(tokenizer):
    def model(input_ids, **_):
        return {"logits": torch.zeros(input_ids.shape[0], 2)}

    with raises("example 1 has no label: evaluating task 'sst2' needs labelled data"):
        evaluate("sst2", model, [Example("a", None, 1), Example("b")], tokenizer)
    with raises(r"example 0: label 3 is not a label of task 'sst2' \(an index 0..1: negative, "
                "positive\\)"):
        evaluate("sst2", model, [Example("a", None, 3)], tokenizer)
    with raises("example 0: regression task 'stsb' needs a numeric label, found 'x'"):
        evaluate("stsb", model, [Example("a", "b", "x")], tokenizer)  # type: ignore[arg-type]
    with raises("examples mix single texts and pairs"):
        evaluate("sst2", model, [Example("a", None, 1), Example("b", "c", 0)], tokenizer)
    with raises("model outputs have no 'logits' tensor"):
        evaluate("sst2", lambda **_: {"start_logits": torch.zeros(1, 3)}, [Example("a", None, 1)],
                 tokenizer)
    with raises(r"needs logits of shape \(batch, 2\), got \(1, 3\)"):
        evaluate("sst2", lambda **_: {"logits": torch.zeros(1, 3)}, [Example("a", None, 1)],
                 tokenizer)
    with raises("evaluates optc.tasks.SquadRecord items"):
        evaluate("squad", model, [Example("a", None, 1)], tokenizer)
    with raises("input_names must include input_ids"):
        evaluate("sst2", model, [Example("a", None, 1)], tokenizer, input_names=["pixel_values"])
    with raises("batch_size must be a positive integer"):
        evaluate("sst2", model, [Example("a", None, 1)], tokenizer, batch_size=0)
