"""Reading data files: where they are, which file holds a split, and the rows of table
files (TSV, CSV, JSON lines, one text per line) and SQuAD JSON.

This is the one reader of optc: tasks read their splits through it (:meth:`Task.read
<optc.tasks.task.Task.read>`), and data given without a task (a pass's calibration ``--data``)
is read through it too, its columns found from its header (:mod:`optc.tasks.detect`).

A relative path that does not exist is tried under ``$OPTC_DATA_DIR`` (or, when that is not
set, under :data:`DEFAULT_DATA_ROOT`). Every problem is an :class:`InputError` naming the file,
the line and the column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optc.errors import InputError
from optc.tasks.records import Example, SquadRecord

__all__ = [
    "DATA_ENV",
    "DEFAULT_DATA_ROOT",
    "TABLE_SUFFIXES",
    "DATA_SUFFIXES",
    "TableFormat",
    "resolve_data_path",
    "find_split_file",
    "read_lines",
    "check_limit",
    "read_table",
    "read_squad_file",
]

DATA_ENV = "OPTC_DATA_DIR"
"""Environment variable naming the data root; relative data paths are also tried under it."""

DEFAULT_DATA_ROOT = "../shared/data"
"""The data root used when ``$OPTC_DATA_DIR`` is not set (relative to the working directory)."""

TABLE_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}
"""Table file suffixes and the format each one means."""

DATA_SUFFIXES = (*TABLE_SUFFIXES, ".json", ".txt")
"""Suffixes of the files a split is looked for among (tables, SQuAD JSON, one text per line)."""

LabelParser = Callable[[Any, str], "int | float"]
"""Turns a raw label cell (and its ``file:line`` for messages) into a class index or a score."""


@dataclass(frozen=True)
class TableFormat:
    """Where a table file keeps a task's text, pair and label columns."""

    text: str | int
    """The first text: a header column name (any case) or, without header, a 0-based index."""
    pair: str | int | None = None
    """The second text of a pair task, or ``None`` for single-text tasks."""
    label: str | int | None = None
    """The label (class name or index, or score) column."""
    header: bool = True
    """Whether the first non-blank line names the columns (GLUE tsv files except CoLA)."""
    columns: int | None = None
    """Without header: the exact number of fields per row (CoLA: 4)."""
    format: str | None = None
    """``tsv`` (tab-separated, no quoting, like GLUE), ``csv`` (RFC 4180 quoting) or ``jsonl``
    (one JSON object per line); ``None`` picks it from the file suffix."""
    pair_optional: bool = False
    """Whether a file without the pair column is read as single texts (generic tasks)."""
    hint: str = ""
    """Appended to column and label messages (how to point the task at other columns)."""
    text_lines: bool = False
    """Whether a ``.txt`` file is read as one text per line (label-free tasks; no header)."""

    def roles(self) -> list[tuple[str, str | int]]:
        """(role, column) of each column this format reads."""
        found = [("text", self.text), ("pair", self.pair), ("label", self.label)]
        return [(role, column) for role, column in found if column is not None]


# --------------------------------------------------------------------------------------------
# Paths


def resolve_data_path(path: str | os.PathLike | None = None) -> Path:
    """The data file or directory ``path`` names.

    An existing path is returned as given (absolute or relative to the working directory); a
    relative path that does not exist is tried under ``$OPTC_DATA_DIR``, or under
    :data:`DEFAULT_DATA_ROOT` when that is not set; ``None`` means the data root itself.
    Raises :class:`InputError` saying what to pass or set.
    """
    root = os.environ.get(DATA_ENV) or None
    given = None if path is None else Path(path).expanduser()
    if given is not None and given.exists():
        return given
    if given is not None and given.is_absolute():
        raise InputError(f"data path '{path}' does not exist: fix the path")
    if root is not None:
        base = Path(root).expanduser()
        if path is None and not base.exists():
            raise InputError(f"{DATA_ENV}={root} does not exist: point it at the data root")
        candidate = base if given is None else base / given
        if candidate.exists():
            return candidate
        raise InputError(f"data path '{path}' does not exist, neither relative to the working "
                         f"directory nor under {DATA_ENV}={root}: fix the path")
    candidate = Path(DEFAULT_DATA_ROOT) if given is None else Path(DEFAULT_DATA_ROOT) / given
    if candidate.exists():
        return candidate
    named = "no data path given" if path is None else f"data path '{path}' does not exist"
    raise InputError(f"{named}, neither relative to the working directory nor under the "
                     f"default data root {DEFAULT_DATA_ROOT}: pass the path or set {DATA_ENV} "
                     "to the data root")


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise InputError(f"cannot list data directory '{directory}': {exc.strerror}") from None


def _task_dirs(directory: Path, depth: int = 3) -> list[str]:
    """Sub-directories (up to ``depth`` levels) that directly hold data files, relative names."""
    found: list[str] = []
    frontier = [directory]
    for _ in range(depth):
        children = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()]
        found += [c.relative_to(directory).as_posix() for c in children
                  if any(p.suffix in DATA_SUFFIXES for p in _files(c))]
        frontier = children
    return sorted(found)


def split_files(directory: Path, split: str) -> list[Path]:
    """The data files of ``split`` in a directory: named ``split`` or ``split-*`` (``dev.tsv``,
    ``dev-v1.1.json``), with a data suffix."""
    return [p for p in _files(directory) if p.suffix in DATA_SUFFIXES
            and (p.stem == split or p.stem.startswith(split + "-"))]


def find_split_file(directory: Path, split: str, candidates: Sequence[str] | None = None) -> Path:
    """The file of ``split`` in a task directory: the first of ``candidates`` (a task's file
    names) present, or, without candidates, the one data file named after the split. Else an
    error saying what the directory holds (other splits, or several tasks to pick from)."""
    if candidates is not None:
        for name in candidates:
            if (directory / name).is_file():
                return directory / name
    else:
        matches = split_files(directory, split)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise InputError(f"data directory '{directory}' has several files for split "
                             f"'{split}' ({names}): pass one of them")
    tasks = _task_dirs(directory)
    if tasks:
        raise InputError(f"'{directory}' is not one task but holds {', '.join(tasks)}: pick "
                         f"one, for example '{directory / tasks[0]}'")
    present = _files(directory)
    holds = ", ".join(p.name for p in present) if present else "no files"
    looked = f"looked for {', '.join(candidates)}; " if candidates is not None else ""
    raise InputError(f"data directory '{directory}' has no file for split '{split}' ({looked}it "
                     f"holds {holds}): pass the file itself or another directory")


def check_limit(limit: int | None) -> None:
    """Refuse a ``limit`` (examples to read) that is not a positive integer or None."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive number of examples or None, not {limit!r}")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending) of a UTF-8 file; a leading BOM is dropped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read data file '{path}': {exc.strerror}") from None


# --------------------------------------------------------------------------------------------
# Rows


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    for number, line in read_lines(path):
        if line.strip():
            yield number, line.split("\t")


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            start = 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    yield start, row
                start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read data file '{path}': {exc.strerror}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected one JSON object per line, found "
                             f"{type(row).__name__}")
        yield number, row


def _file_format(path: Path, fmt: TableFormat) -> str:
    if fmt.format is not None:
        return fmt.format
    if fmt.text_lines and path.suffix.lower() == ".txt":
        return "lines"
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = [*TABLE_SUFFIXES, ".txt"] if fmt.text_lines else list(TABLE_SUFFIXES)
        raise InputError(f"'{path}': unknown table format '{path.suffix}': use "
                         f"{', '.join(known)}")
    return kind


def _column(column: str | int) -> str:
    """How messages name a column: by name, or by its 1-based number in a header-less file."""
    return f"column {column + 1}" if isinstance(column, int) else f"column '{column}'"


def _text(value: Any, where: str, role: str, column: str | int) -> str:
    if isinstance(value, str):
        return value
    raise InputError(f"{where}: {role} {_column(column)} must hold text, found "
                     f"{type(value).__name__} {value!r}")


def _positions(path: Path, number: int, header: list[str], fmt: TableFormat,
               require_label: bool) -> dict[str, int | None]:
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name.strip().lower(), i)
    positions: dict[str, int | None] = {}
    for role, column in fmt.roles():
        pos = index.get(str(column).strip().lower())
        optional = (role == "label" and not require_label) or (role == "pair" and fmt.pair_optional)
        if pos is None and not optional:
            shown = ", ".join(repr(h) for h in header)
            raise InputError(f"{path}:{number}: no {role} column '{column}' in the header "
                             f"({shown}){fmt.hint}")
        positions[role] = pos
    return positions


def read_table(path: Path, fmt: TableFormat, parse_label: LabelParser,
               require_label: bool = True, limit: int | None = None) -> list[Example]:
    """The examples of a table file in file order (blank lines skipped). The label column may
    be absent from the header only when ``require_label`` is false (then labels are ``None``);
    ``limit`` stops after that many examples.
    """
    examples = _read_table(path, fmt, parse_label, require_label, limit)
    if not examples and _file_format(path, fmt) == "lines":
        raise InputError(f"data file '{path}' is empty (a text file needs one example per line)")
    if not examples:
        raise InputError(f"data file '{path}' has no examples")
    return examples


def _read_table(path: Path, fmt: TableFormat, parse_label: LabelParser, require_label: bool,
                limit: int | None) -> list[Example]:
    kind = _file_format(path, fmt)
    examples: list[Example] = []

    def full() -> bool:
        return limit is not None and len(examples) >= limit

    if kind == "lines":  # one text per line, nothing else
        if require_label and fmt.label is not None:
            raise InputError(f"'{path}': a text file holds texts only, but the task needs a "
                             f"label column '{fmt.label}': use a TSV, CSV or JSONL file")
        for _, line in read_lines(path):
            if full():
                break
            if line.strip():
                examples.append(Example(line))
    elif kind == "jsonl":
        if not fmt.header and isinstance(fmt.text, int):
            raise InputError(f"'{path}': JSON lines name their fields, so columns cannot be "
                             f"numbered (header=false is for TSV and CSV files){fmt.hint}")
        for number, row in _jsonl_rows(path):
            if full():
                break
            where = f"{path}:{number}"
            values: dict[str, Any] = {}
            for role, column in fmt.roles():
                optional = ((role == "label" and not require_label)
                            or (role == "pair" and fmt.pair_optional))
                if column not in row and not optional:
                    keys = ", ".join(repr(k) for k in row)
                    raise InputError(f"{where}: no {role} key '{column}' in the object (keys: "
                                     f"{keys}){fmt.hint}")
                values[role] = row.get(column)
            examples.append(_example(values, where, fmt, parse_label, require_label))
    else:
        rows = _tsv_rows(path) if kind == "tsv" else _csv_rows(path)
        positions: dict[str, int | None]
        width: int | None
        if fmt.header:
            first = next(rows, None)
            if first is None:
                raise InputError(f"data file '{path}' is empty: it needs a header and rows")
            positions = _positions(path, first[0], first[1], fmt, require_label)
            width = len(first[1])
        else:
            positions = {role: int(column) for role, column in fmt.roles()}
            width = fmt.columns
        for number, fields in rows:
            if full():
                break
            where = f"{path}:{number}"
            if width is not None and len(fields) != width:
                raise InputError(f"{where}: expected {width} {kind.upper()} columns, found "
                                 f"{len(fields)}: fix or remove the row")
            values = {}
            for role, pos in positions.items():
                if pos is not None and pos >= len(fields):
                    raise InputError(f"{where}: row has {len(fields)} columns, the {role} is "
                                     f"column {pos + 1}: fix or remove the row")
                values[role] = None if pos is None else fields[pos]
            examples.append(_example(values, where, fmt, parse_label, require_label))
    return examples


def _example(values: dict[str, Any], where: str, fmt: TableFormat, parse_label: LabelParser,
             require_label: bool) -> Example:
    text = _text(values["text"], where, "text", fmt.text)
    pair = None
    if fmt.pair is not None and values.get("pair") is not None:
        pair = _text(values["pair"], where, "pair", fmt.pair)
    raw = values.get("label")
    if raw is None and require_label and fmt.label is not None:
        raise InputError(f"{where}: the label {_column(fmt.label)} is empty")
    label = None if raw is None else parse_label(raw, where)
    return Example(text, pair, label)


def table_header(path: Path) -> tuple[str, int, list[str]] | None:
    """(format, line number, first row) of a table file: its column names when it has a
    header (the keys of the first object of a JSON-lines file); ``None`` when it has no rows."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"'{path}': unknown table format '{path.suffix}': use "
                         f"{', '.join(TABLE_SUFFIXES)}")
    rows: Iterator[tuple[int, Any]] = (_jsonl_rows(path) if kind == "jsonl" else
                                       _tsv_rows(path) if kind == "tsv" else _csv_rows(path))
    first = next(rows, None)
    if first is None:
        return None
    return kind, first[0], [str(k) for k in first[1]]


# --------------------------------------------------------------------------------------------
# SQuAD


def _squad_error(path: Path, where: str, problem: str) -> InputError:
    return InputError(f"{path}: not a SQuAD v1.1 file: {where} {problem} (expected "
                      "{'data': [{'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', "
                      "'answers': [{'text', 'answer_start'}]}]}]}]})")


def read_squad_file(path: Path, limit: int | None = None) -> list[SquadRecord]:
    """The questions of a SQuAD v1.1/v2.0 JSON file in file order, with every gold answer;
    ``limit`` keeps the first ``limit`` questions."""
    if path.suffix != ".json":
        raise InputError(f"'{path}' is not a SQuAD .json file")
    if path.stat().st_size == 0:
        raise InputError(f"data file '{path}' is empty")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            document = json.load(handle)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except OSError as exc:
        raise InputError(f"cannot read data file '{path}': {exc.strerror}") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise _squad_error(path, "the top level", "has no 'data' list")
    records: list[SquadRecord] = []
    where = "data"
    try:
        for a, article in enumerate(document["data"]):
            where = f"data[{a}]"
            title = str(article.get("title", ""))
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                context = paragraph["context"]
                for q, qa in enumerate(paragraph["qas"]):
                    if limit is not None and len(records) >= limit:
                        return records
                    where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    answers = qa.get("answers", [])
                    records.append(SquadRecord(
                        id=str(qa["id"]), title=title, question=qa["question"], context=context,
                        answer_texts=tuple(str(x["text"]) for x in answers),
                        answer_starts=tuple(int(x["answer_start"]) for x in answers),
                    ))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        problem = f"lacks {exc}" if isinstance(exc, KeyError) else f"is malformed ({exc})"
        raise _squad_error(path, where, problem) from None
    if not records:
        raise InputError(f"SQuAD file '{path}' holds no questions")
    return records
