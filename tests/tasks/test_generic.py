"""text-classification: your own task from TSV, CSV or JSON lines, configured by options."""

from __future__ import annotations

import json

import pytest

from optc.errors import InputError
from optc.tasks import get_task
from optc.tasks.records import Example
from optc.tests.tasks.helpers import write

ROWS = [("great film", "pos"), ("dull, \"boring\" plot", "neg"), ("loved it", "pos")]
EXPECTED = [Example("great film", None, 1), Example('dull, "boring" plot', None, 0),
            Example("loved it", None, 1)]


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl"])
def test_reads_each_format(tmp_path, suffix):
    if suffix == "tsv":
        body = "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in ROWS)
    elif suffix == "csv":
        body = "label,text\n" + "".join(f"{lab},{_csv_cell(t)}\n" for t, lab in ROWS)
    else:
        body = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS)
    write(tmp_path / f"dev.{suffix}", body)
    task = get_task("text-classification", labels="neg,pos")
    assert task.read("dev", tmp_path) == EXPECTED  # the directory: dev.<suffix> is found
    assert task.read("dev", tmp_path / f"dev.{suffix}") == EXPECTED  # or the file itself


def test_options_name_columns_labels_and_pairs(tmp_path):
    write(tmp_path / "train.csv", "review,other,stars\nnice,ok,good\nbad,meh,bad\nfine,ok,0\n")
    task = get_task("text-classification{text_column=review,pair_column=other,"
                    "label_column=stars,labels=bad,good}")
    assert task.label_names == ("bad", "good") and task.text_columns == ("review", "other")
    assert task.read("train", tmp_path, val_size=0) == [
        Example("nice", "ok", 1), Example("bad", "meh", 0), Example("fine", "ok", 0)]
    # the optional text_pair column is picked up without options; labels default to indices
    write(tmp_path / "dev.jsonl", '{"text": "a", "text_pair": "b", "label": 2}\n')
    three = get_task("text-classification", num_labels=3)
    assert three.label_names == ("0", "1", "2")
    assert three.read("dev", tmp_path) == [Example("a", "b", 2)]


def test_regression_flag(tmp_path):
    write(tmp_path / "dev.tsv", "text\tscore\nx\t0.5\ny\t3\n")
    task = get_task("text-classification", regression="true", label_column="score")
    assert task.kind == "regression" and task.num_labels == 1
    assert task.metrics == ("pearson", "spearman") and task.main_metric == "pearson"
    assert [e.label for e in task.read("dev", tmp_path)] == [0.5, 3.0]


def test_metric_options():
    task = get_task("text-classification", metrics="f1,accuracy")
    assert task.metrics == ("f1", "accuracy") and task.main_metric == "f1"
    with pytest.raises(InputError, match="unknown metrics bleu"):
        get_task("text-classification", metrics="bleu")
    with pytest.raises(InputError, match="has no option colour: valid options are text_column"):
        get_task("text-classification{colour=red}")
    with pytest.raises(InputError, match="labels= makes no sense with regression"):
        get_task("text-classification", regression=True, labels="a,b")
    with pytest.raises(InputError, match="no conventional data location"):
        get_task("text-classification").read("dev")


def test_headerless_files_name_columns_by_number(tmp_path):
    """header=false: columns are numbers from 1 (default text 1, label 2), in TSV and CSV."""
    write(tmp_path / "a.csv", "".join(f"{_csv_cell(t)},{lab}\n" for t, lab in ROWS))
    assert get_task("text-classification{header=false,labels=neg,pos}").read(
        "dev", tmp_path / "a.csv") == EXPECTED
    write(tmp_path / "b.tsv", "".join(f"{lab}\tx\t{t}\n" for t, lab in ROWS))
    task = get_task("text-classification{header=false,text_column=3,label_column=1,"
                    "labels=neg,pos}")
    assert task.read("dev", tmp_path / "b.tsv") == EXPECTED
    pairs = get_task("text-classification{header=false,text_column=3,pair_column=2,"
                     "label_column=1,labels=neg,pos}").read("dev", tmp_path / "b.tsv")
    assert [e.text_pair for e in pairs] == ["x"] * 3
    write(tmp_path / "short.tsv", "pos\tonly two\n")
    with pytest.raises(InputError, match=r"short.tsv:1: row has 2 columns, the text is column 3"):
        task.read("dev", tmp_path / "short.tsv")
    for bad, match in (("text_column=0", "numbered from 1"), ("text_column=a", "numbered from 1"),
                       ("text_column=2", "different numbers")):
        with pytest.raises(InputError, match=match):
            get_task(f"text-classification{{header=false,{bad}}}")
    with pytest.raises(InputError, match="true or false"):
        get_task("text-classification{header=maybe}")
    write(tmp_path / "c.jsonl", '{"text": "a", "label": 1}\n')
    with pytest.raises(InputError, match="JSON lines name their fields"):
        get_task("text-classification{header=false}").read("dev", tmp_path / "c.jsonl")


def test_headerless_task_is_recorded_so_it_rebuilds():
    from optc.train.heads import task_spec

    task = get_task("text-classification{header=false,text_column=3,label_column=1,labels=a,b}")
    spec = task_spec(task)
    assert spec is not None and "header=false" in spec
    assert get_task(spec) == task
