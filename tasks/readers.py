"""Reading task data: where a task's files are, and table files (TSV, CSV, JSON lines) with
named or numbered columns.

Every problem is an :class:`InputError` naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optc.data import DATA_ENV, Example, read_lines, resolve_data_path
from optc.errors import InputError

__all__ = [
    "DEFAULT_DATA_ROOT",
    "TABLE_SUFFIXES",
    "TableFormat",
    "resolve_task_path",
    "find_split_file",
    "read_table",
]

DEFAULT_DATA_ROOT = "../shared/data"
"""The data root used when ``$OPTC_DATA_DIR`` is not set (relative to the working directory)."""

TABLE_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}
"""Table file suffixes and the format each one means."""

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


def resolve_task_path(path: str | os.PathLike | None) -> Path:
    """The data file or directory ``path`` names, as :func:`optc.data.resolve_data_path` finds
    it, and when ``$OPTC_DATA_DIR`` is not set also under :data:`DEFAULT_DATA_ROOT`."""
    try:
        return resolve_data_path(path)
    except InputError:
        if os.environ.get(DATA_ENV) or (path is not None and Path(path).expanduser().is_absolute()):
            raise
        root = Path(DEFAULT_DATA_ROOT)
        candidate = root if path is None else root / Path(path).expanduser()
        if candidate.exists():
            return candidate
        named = "no data path given" if path is None else f"data path '{path}' does not exist"
        raise InputError(f"{named}, neither relative to the working directory nor under the "
                         f"default data root {DEFAULT_DATA_ROOT}: pass the path or set {DATA_ENV} "
                         "to the data root") from None


def find_split_file(directory: Path, split: str, candidates: Sequence[str]) -> Path:
    """The first of ``candidates`` (file names) present in ``directory``, else an error listing
    what the directory holds."""
    for name in candidates:
        file = directory / name
        if file.is_file():
            return file
    try:
        present = sorted(p.name for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise InputError(f"cannot list data directory '{directory}': {exc.strerror}") from None
    holds = ", ".join(present) if present else "no files"
    raise InputError(f"data directory '{directory}' has no file for split '{split}' (looked for "
                     f"{', '.join(candidates)}; it holds {holds}): pass the file itself or "
                     "another directory")


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
               require_label: bool = True) -> list[Example]:
    """The examples of a table file in file order (blank lines skipped). The label column may
    be absent from the header only when ``require_label`` is false (then labels are ``None``).
    """
    kind = _file_format(path, fmt)
    examples: list[Example] = []
    if kind == "lines":  # one text per line, nothing else
        if require_label and fmt.label is not None:
            raise InputError(f"'{path}': a text file holds texts only, but the task needs a "
                             f"label column '{fmt.label}': use a TSV, CSV or JSONL file")
        examples = [Example(line) for _, line in read_lines(path) if line.strip()]
    elif kind == "jsonl":
        if not fmt.header and isinstance(fmt.text, int):
            raise InputError(f"'{path}': JSON lines name their fields, so columns cannot be "
                             f"numbered (header=false is for TSV and CSV files){fmt.hint}")
        for number, row in _jsonl_rows(path):
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
    if not examples:
        raise InputError(f"data file '{path}' has no examples")
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
