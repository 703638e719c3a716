"""Data given without a task: its columns found from the file itself.

A pass that measures the model on real inputs (calibration, Taylor importance, layer
contribution, reconstruction) reads ``--data``; when the pipeline names a task (``--task``)
the data is read as that task reads it (:meth:`Task.read <optc.tasks.task.Task.read>`).
Without one, :func:`read_examples` reads it through the same readers (:mod:`optc.tasks.readers`)
and finds the columns from the file:

- a table file (``.tsv`` as GLUE writes them: no quoting; ``.csv`` with RFC 4180 quoting;
  ``.jsonl``, one object per line) whose header (the first object's keys) names, in any order
  and case:

  - ``Quality, #1 String, #2 String`` (MRPC): pair, int label ``Quality``;
  - ``sentence1, sentence2, ..., score`` (STS-B): pair, float label;
  - ``sentence1, sentence2 [, label | gold_label]`` (RTE, WNLI, MNLI): pair, int or word label;
  - ``question1, question2 [, is_duplicate]`` (QQP): pair, int label;
  - ``question, sentence [, label]`` (QNLI): pair, int or word label;
  - ``text, text_pair [, label]`` (optc's own task files): pair;
  - ``sentence`` or ``text`` [, ``label`` or ``score``] (SST-2, generic): single text;
  - no header, 4 columns ``source, label, original label, sentence`` (CoLA, TSV/CSV only).

  Word labels follow GLUE's label order: ``entailment`` -> 0, ``not_entailment`` -> 1 (RTE,
  QNLI); ``neutral`` -> 1, ``contradiction`` -> 2 (MNLI).
- a SQuAD ``.json`` file: one example per question, ``(question, context)`` without labels;
- any other file: one text per line, blank lines skipped, no labels;
- a task directory (``glue/SST-2``): its file for the requested split (``train.tsv``,
  ``dev-v1.1.json``, ``dev.csv``, ...); a directory holding several tasks (the data root) is
  refused with the list of tasks in it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from optc.errors import InputError
from optc.tasks.readers import (
    TABLE_SUFFIXES,
    TableFormat,
    check_limit,
    find_split_file,
    read_squad_file,
    read_table,
    resolve_data_path,
    split_files,
    table_header,
)
from optc.tasks.records import Example

__all__ = ["read_examples", "first_split", "detect_format", "WORD_LABELS"]

WORD_LABELS = {"entailment": 0, "not_entailment": 1, "neutral": 1, "contradiction": 2}
"""GLUE's label order for word labels (RTE/QNLI: 2 classes, MNLI: 3 classes)."""

_KNOWN_HEADERS = (
    "'Quality #1 String #2 String' (MRPC), 'sentence1 sentence2 [label|score]' (RTE, STS-B), "
    "'question1 question2 [is_duplicate]' (QQP), 'question sentence [label]' (QNLI), "
    "'text [text_pair] [label]', 'sentence|text [label|score]' (SST-2), or CoLA's headerless "
    "4 columns; or name a task (--task) that says which columns to read"
)


def detect_format(names: Sequence[str]) -> tuple[TableFormat, str] | None:
    """(the table format, the label kind: ``int``, ``float`` or ``auto``) a header names, or
    ``None`` when it is not one optc knows."""
    keys = {name.strip().lower(): name for name in names}

    def col(*candidates: str) -> str | None:
        return next((keys[c] for c in candidates if c in keys), None)

    def fmt(text: str, pair: str | None, label: str | None, kind: str) -> tuple[TableFormat, str]:
        return TableFormat(text=keys[text], pair=None if pair is None else keys[pair],
                           label=label), kind

    if {"quality", "#1 string", "#2 string"} <= keys.keys():
        return fmt("#1 string", "#2 string", keys["quality"], "int")
    if {"sentence1", "sentence2"} <= keys.keys():
        if "score" in keys:
            return fmt("sentence1", "sentence2", keys["score"], "float")
        return fmt("sentence1", "sentence2", col("label", "gold_label"), "auto")
    if {"question1", "question2"} <= keys.keys():
        return fmt("question1", "question2", col("is_duplicate", "label"), "int")
    if {"question", "sentence"} <= keys.keys():
        return fmt("question", "sentence", col("label"), "auto")
    if {"text", "text_pair"} <= keys.keys():
        return fmt("text", "text_pair", col("label", "score"), "auto")
    text = col("sentence", "text")
    if text is not None:
        return fmt(text.strip().lower(), None, col("label", "score"), "auto")
    return None


def _is_cola_row(fields: Sequence[str]) -> bool:
    return (len(fields) == 4 and fields[1] in ("0", "1") and fields[0] != ""
            and " " not in fields[0])


def _parse_label(kind: str, raw: object, where: str) -> int | float | None:
    value = str(raw).strip()
    if value == "":
        return None  # an unlabelled row (a test split)
    if kind in ("int", "auto"):
        try:
            return int(value)
        except ValueError:
            pass
        if kind == "auto" and value.lower() in WORD_LABELS:
            return WORD_LABELS[value.lower()]
    if kind in ("float", "auto"):
        try:
            return float(value)
        except ValueError:
            pass
    expected = {"int": "an integer class", "float": "a number",
                "auto": f"an integer, a number or one of {', '.join(WORD_LABELS)}"}[kind]
    raise InputError(f"{where}: bad label '{value}': expected {expected}")


def _read_detected(file: Path, limit: int | None) -> list[Example]:
    header = table_header(file)
    if header is None:
        raise InputError(f"data file '{file}' is empty")
    kind, number, names = header
    found = detect_format(names)
    if found is None:
        if kind == "jsonl" or not _is_cola_row(names):
            shown = ", ".join(names)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise InputError(f"{file}:{number}: unrecognized {kind.upper()} header '{shown}'; "
                             f"expected one of {_KNOWN_HEADERS}")
        found = TableFormat(text=3, label=1, header=False, columns=4), "int"
    table, label_kind = found
    return read_table(file, table, partial(_parse_label, label_kind), require_label=False,
                      limit=limit)


def _resolve_file(path: str | os.PathLike | None, split: str) -> Path:
    resolved = resolve_data_path(path)
    file = find_split_file(resolved, split) if resolved.is_dir() else resolved
    if not file.is_file():
        raise InputError(f"data path '{file}' is not a regular file")
    return file


def read_examples(path: str | os.PathLike | None, split: str = "dev",
                  limit: int | None = None) -> list[Example]:
    """The examples of a data file or task directory read without a task, in file order (see
    the module docstring for what is recognized). ``split`` picks the file in a task
    directory; ``limit`` keeps the first ``limit`` examples. Raises :class:`InputError` on a
    missing, empty or malformed input, naming the file and line."""
    check_limit(limit)
    file = _resolve_file(path, split)
    if file.suffix.lower() in TABLE_SUFFIXES:
        return _read_detected(file, limit)
    if file.suffix.lower() == ".json":
        return [Example(r.question, r.context) for r in read_squad_file(file, limit)]
    return read_table(file, TableFormat(text=0, header=False, format="lines"),
                      partial(_parse_label, "auto"), require_label=False, limit=limit)


def first_split(path: str | os.PathLike | None, splits: Sequence[str]) -> str:
    """The first of ``splits`` that a task directory has a file for (``splits[-1]`` when it has
    none of them, so that reading it names what is there; a single file: ``splits[0]``)."""
    resolved = resolve_data_path(path)
    if not resolved.is_dir():
        return splits[0]
    return next((s for s in splits if split_files(resolved, s)), splits[-1])
