"""Numeric labels map to classes unambiguously: by value when the classes are numbers, as
0-based indices of named classes only when the file uses class 0; never shifted silently."""

from __future__ import annotations

import json

import pytest

from optc.errors import InputError
from optc.tasks import get_task

NAMES = "World,Sports,Business,Sci/Tech"


def _csv(path, labels, header=True):
    rows = [f"text {i},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join((["text,label"] if header else []) + rows) + "\n")
    return path


def test_a_file_numbered_from_1_is_refused_for_named_classes(tmp_path) -> None:
    """The 1..4 layout (AG News): read as indices it would shift every class by one."""
    task = get_task("text-classification", labels=NAMES)
    with pytest.raises(InputError, match=r"label '4' .* a file numbered from 1 .*labels=1,2,3,4"):
        task.read_file(_csv(tmp_path / "all.csv", [1, 2, 3, 4, 2]))
    # the same layout without its top class: nothing out of range, still refused as ambiguous
    with pytest.raises(InputError, match=r"numbers \(1, 2, 3\) without 0, so it is ambiguous"):
        task.read_file(_csv(tmp_path / "some.csv", [1, 2, 3, 1]))


def test_numeric_class_names_map_by_value_never_by_position(tmp_path) -> None:
    task = get_task("text-classification", labels="1,2,3,4")
    examples = task.read_file(_csv(tmp_path / "a.csv", [1, 2, 3, 4, 2]))
    assert [e.label for e in examples] == [0, 1, 2, 3, 1]
    assert [task.label_names[e.label] for e in examples] == ["1", "2", "3", "4", "2"]
    with pytest.raises(InputError, match=r"label '0' .*one of 1, 2, 3, 4\)"):
        task.read_file(_csv(tmp_path / "b.csv", [0, 1]))  # 0 is no class here, not index 0
    # JSONL numbers too (1.0 is the class named 1)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": "x", "label": v}) for v in (4, 1.0)) + "\n")
    assert [e.label for e in task.read_file(path)] == [3, 0]


def test_zero_based_indices_and_names_still_read(tmp_path) -> None:
    task = get_task("text-classification", labels=NAMES)
    examples = task.read_file(_csv(tmp_path / "a.csv", [0, 3, "Sports", 1]))
    assert [e.label for e in examples] == [0, 3, 1, 1]
    # names only: no numbers, nothing ambiguous
    assert [e.label for e in task.read_file(_csv(tmp_path / "b.csv", ["Business", "World"]))] == [2, 0]
    # default classes are the numbers 0..n-1, and GLUE's numbers are its documented indices
    assert [e.label for e in get_task("text-classification").read_file(
        _csv(tmp_path / "c.csv", [1, 1]))] == [1, 1]
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("sentence\tlabel\ngood\t1\nfine\t1\n")
    assert [e.label for e in get_task("sst2").read_file(sst2)] == [1, 1]
