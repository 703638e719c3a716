"""Calibration and evaluation data for passes: reading task files and batching them.

Passes that rank layers, heads or neurons by their effect on real inputs (layer contribution,
Taylor importance) and the accuracy-driven specialization driver read their data here.

Inputs :func:`read_examples` accepts (the path may be relative to ``$OPTC_DATA_DIR``):

- a plain text file (any suffix but ``.tsv``, ``.json``, ``.csv``): one example per line,
  blank lines skipped, no labels;
- a GLUE-style ``.tsv`` (UTF-8, an optional byte-order mark, tab-separated, **no quoting**: a
  double quote is an ordinary character, as with ``csv.QUOTE_NONE``), recognized by its header
  (column names in any order and case; other columns are ignored):

  - ``Quality, #1 ID, #2 ID, #1 String, #2 String`` (MRPC): pair, int label ``Quality``;
  - ``sentence1, sentence2, ..., score`` (STS-B): pair, float label;
  - ``sentence1, sentence2 [, label]`` (RTE, WNLI, MNLI): pair, int or word label;
  - ``question1, question2 [, is_duplicate]`` (QQP): pair, int label;
  - ``question, sentence [, label]`` (QNLI): pair, int or word label;
  - ``sentence`` or ``text`` [, ``label``] (SST-2, generic): single text, int, float or word label;
  - no header, 4 columns ``source, label, original label, sentence`` (CoLA): single, int label.

  Word labels follow GLUE's label order: ``entailment`` -> 0, ``not_entailment`` -> 1 (RTE,
  QNLI); ``neutral`` -> 1, ``contradiction`` -> 2 (MNLI).
- a SQuAD v1.1 ``.json`` file: one example per question, ``(question, context)`` pairs without
  labels; :func:`read_squad` gives the answers as well;
- a task directory (``glue/SST-2``): the file of the requested split in it (``dev.tsv``,
  ``dev-v1.1.json``, ...). A directory holding several tasks (the data root) is refused with
  the list of tasks in it.

:func:`make_batches` tokenizes examples into dynamically padded int64 tensors named after the
model's inputs; :func:`load_calibration` does both steps.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optc.errors import InputError

__all__ = [
    "read_lines",
    "DATA_ENV",
    "INPUT_NAMES",
    "Example",
    "SquadRecord",
    "Batch",
    "resolve_data_path",
    "first_split",
    "read_examples",
    "read_squad",
    "make_batches",
    "load_calibration",
]

DATA_ENV = "OPTC_DATA_DIR"
"""Environment variable naming the data root; relative data paths are also tried under it."""

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Model inputs :func:`make_batches` can produce."""

_WORD_LABELS = {"entailment": 0, "not_entailment": 1, "neutral": 1, "contradiction": 2}
"""GLUE's label order for word labels (RTE/QNLI: 2 classes, MNLI: 3 classes)."""

_DATA_SUFFIXES = (".tsv", ".json")
"""File suffixes that make a directory a task directory."""


@dataclass(frozen=True)
class Example:
    """One input to the model: a text or a text pair, with an optional label."""

    text: str
    """The first (or only) segment."""
    text_pair: str | None = None
    """The second segment of a pair task (hypothesis, second sentence, SQuAD context)."""
    label: int | float | None = None
    """Class index (classification), score (regression) or ``None`` when the data has none."""


@dataclass(frozen=True)
class SquadRecord:
    """One SQuAD question with its context and every gold answer."""

    id: str
    """The question id, unique in the file."""
    title: str
    """The article title."""
    question: str
    """The question."""
    context: str
    """The paragraph the answer is taken from."""
    answer_texts: tuple[str, ...]
    """Gold answers (SQuAD dev has up to several per question; EM/F1 take the best match)."""
    answer_starts: tuple[int, ...]
    """Character offset of each gold answer in ``context``."""

    @property
    def answer_text(self) -> str:
        """The first gold answer ("" when the question has none)."""
        return self.answer_texts[0] if self.answer_texts else ""

    @property
    def answer_start(self) -> int:
        """Character offset of the first gold answer (-1 when the question has none)."""
        return self.answer_starts[0] if self.answer_starts else -1


@dataclass
class Batch:
    """Model inputs for one batch, padded to its longest example, and the labels."""

    inputs: dict[str, torch.Tensor]
    """int64 (batch, seq) tensors, keyed and ordered by the requested input names."""
    labels: torch.Tensor | None
    """(batch,) long for classes, float32 for scores; ``None`` when any example has no label."""

    def __len__(self) -> int:
        """The number of examples in the batch."""
        return next(iter(self.inputs.values())).shape[0]


# --------------------------------------------------------------------------------------------
# Paths


def resolve_data_path(path: str | os.PathLike | None = None) -> Path:
    """The data file or directory ``path`` names.

    An existing path is returned as given (absolute or relative to the working directory); a
    relative path that does not exist is tried under ``$OPTC_DATA_DIR``; ``None`` means
    ``$OPTC_DATA_DIR`` itself. Raises :class:`InputError` saying what to pass or set.
    """
    root = os.environ.get(DATA_ENV) or None
    if path is None:
        if root is None:
            raise InputError(f"no data given: pass a data file or directory, or set {DATA_ENV} "
                             "to the data root (for example ../shared/data)")
        resolved = Path(root).expanduser()
        if not resolved.exists():
            raise InputError(f"{DATA_ENV}={root} does not exist: point it at the data root")
        return resolved
    given = Path(path).expanduser()
    if given.exists():
        return given
    if not given.is_absolute() and root is not None:
        under_root = Path(root).expanduser() / given
        if under_root.exists():
            return under_root
        raise InputError(f"data path '{path}' does not exist, neither relative to the working "
                         f"directory nor under {DATA_ENV}={root}: fix the path")
    hint = "" if given.is_absolute() else f" (or set {DATA_ENV} to the data root it is relative to)"
    raise InputError(f"data path '{path}' does not exist: fix the path{hint}")


def _data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _DATA_SUFFIXES)


def _task_dirs(directory: Path, depth: int = 3) -> list[str]:
    """Sub-directories (up to ``depth`` levels) that directly hold data files, relative names."""
    found: list[str] = []
    frontier = [directory]
    for _ in range(depth):
        children = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir()]
        found += [c.relative_to(directory).as_posix() for c in children if _data_files(c)]
        frontier = children
    return sorted(found)


def _pick_file(directory: Path, split: str) -> Path:
    """The file of ``split`` in a task directory (``dev.tsv``, ``dev-v1.1.json``, ``dev.txt``)."""
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise InputError(f"cannot list data directory '{directory}': {exc.strerror}") from None
    matches = [p for p in files if p.suffix in (*_DATA_SUFFIXES, ".txt")
               and (p.stem == split or p.stem.startswith(split + "-"))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise InputError(f"data directory '{directory}' has several files for split '{split}' "
                         f"({names}): pass one of them")
    tasks = _task_dirs(directory)
    if tasks:
        raise InputError(f"'{directory}' is not one task but holds {', '.join(tasks)}: pick one, "
                         f"for example '{directory / tasks[0]}'")
    splits = sorted({p.stem for p in _data_files(directory)})
    if splits:
        raise InputError(f"data directory '{directory}' has no '{split}' file; its splits are "
                         f"{', '.join(splits)}: pass one as the split")
    raise InputError(f"data directory '{directory}' holds no .tsv or .json data files")


def first_split(path: str | os.PathLike | None, splits: Sequence[str]) -> str:
    """The first of ``splits`` that a task directory has a file for (``splits[-1]`` when it has
    none of them, so that reading it names what is there; a single file: ``splits[0]``)."""
    resolved = resolve_data_path(path)
    if not resolved.is_dir():
        return splits[0]
    files = [p for p in _data_files(resolved) if p.suffix in (*_DATA_SUFFIXES, ".txt")]
    for split in splits:
        if any(p.stem == split or p.stem.startswith(split + "-") for p in files):
            return split
    return splits[-1]


def _resolve_file(path: str | os.PathLike | None, split: str) -> Path:
    resolved = resolve_data_path(path)
    if resolved.is_dir():
        return _pick_file(resolved, split)
    return resolved


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
# TSV


@dataclass(frozen=True)
class _TsvFormat:
    """Where a TSV keeps its text, pair and label columns."""

    task: str
    columns: int
    text: int
    pair: int | None
    label: int | None
    label_kind: str  # "int" | "float" | "auto" (int, then word, then float)


_KNOWN_HEADERS = (
    "'Quality #1 ID #2 ID #1 String #2 String' (MRPC), 'sentence1 sentence2 [label|score]' "
    "(RTE, STS-B), 'question1 question2 [is_duplicate]' (QQP), 'question sentence [label]' "
    "(QNLI), 'sentence|text [label]' (SST-2), or CoLA's headerless 4 columns"
)


def _header_format(names: list[str]) -> _TsvFormat | None:
    """The format a header names, or ``None`` when it is not a header optc knows."""
    index = {name.strip().lower(): i for i, name in enumerate(names)}
    n = len(names)

    def col(*candidates: str) -> int | None:
        return next((index[c] for c in candidates if c in index), None)

    if {"quality", "#1 string", "#2 string"} <= index.keys():
        return _TsvFormat("MRPC", n, index["#1 string"], index["#2 string"], index["quality"],
                          "int")
    if {"sentence1", "sentence2"} <= index.keys():
        if "score" in index:
            return _TsvFormat("STS-B", n, index["sentence1"], index["sentence2"], index["score"],
                              "float")
        return _TsvFormat("pair", n, index["sentence1"], index["sentence2"],
                          col("label", "gold_label"), "auto")
    if {"question1", "question2"} <= index.keys():
        return _TsvFormat("QQP", n, index["question1"], index["question2"],
                          col("is_duplicate", "label"), "int")
    if {"question", "sentence"} <= index.keys():
        return _TsvFormat("QNLI", n, index["question"], index["sentence"], col("label"), "auto")
    text = col("sentence", "text")
    if text is not None:
        return _TsvFormat("single", n, text, None, col("label", "score"), "auto")
    return None


def _is_cola_row(fields: list[str]) -> bool:
    return len(fields) == 4 and fields[1] in ("0", "1") and fields[0] != "" and " " not in fields[0]


def _parse_label(raw: str, kind: str, where: str) -> int | float | None:
    value = raw.strip()
    if value == "":
        return None
    if kind in ("int", "auto"):
        try:
            return int(value)
        except ValueError:
            pass
        if kind == "auto" and value.lower() in _WORD_LABELS:
            return _WORD_LABELS[value.lower()]
    if kind in ("float", "auto"):
        try:
            return float(value)
        except ValueError:
            pass
    expected = {"int": "an integer class", "float": "a number",
                "auto": f"an integer, a number or one of {', '.join(_WORD_LABELS)}"}[kind]
    raise InputError(f"{where}: bad label '{value}': expected {expected}")


def _read_tsv(path: Path, limit: int | None) -> list[Example]:
    lines = ((n, line) for n, line in read_lines(path) if line.strip())
    first = next(lines, None)
    if first is None:
        raise InputError(f"data file '{path}' is empty")
    number, header = first
    fields = header.split("\t")
    fmt = _header_format(fields)
    pending: list[tuple[int, str]] = []
    if fmt is None:
        if not _is_cola_row(fields):
            shown = header if len(header) <= 80 else header[:77] + "..."
            raise InputError(f"{path}:{number}: unrecognized TSV header '{shown}'; expected one "
                             f"of {_KNOWN_HEADERS}")
        fmt = _TsvFormat("CoLA", 4, 3, None, 1, "int")
        pending.append(first)  # headerless: the first line is a row
    examples: list[Example] = []
    for number, line in itertools.chain(pending, lines):
        if limit is not None and len(examples) >= limit:
            break
        fields = line.split("\t")
        where = f"{path}:{number}"
        if len(fields) != fmt.columns:
            raise InputError(f"{where}: expected {fmt.columns} tab-separated columns ({fmt.task} "
                             f"format), found {len(fields)}: fix or remove the row")
        label = (None if fmt.label is None
                 else _parse_label(fields[fmt.label], fmt.label_kind, where))
        pair = None if fmt.pair is None else fields[fmt.pair]
        examples.append(Example(fields[fmt.text], pair, label))
    if not examples:
        raise InputError(f"data file '{path}' has a header but no rows")
    return examples


# --------------------------------------------------------------------------------------------
# Plain text and SQuAD


def _read_text(path: Path, limit: int | None) -> list[Example]:
    examples: list[Example] = []
    for _, line in read_lines(path):
        if limit is not None and len(examples) >= limit:
            break
        if line.strip():
            examples.append(Example(line))
    if not examples:
        raise InputError(f"data file '{path}' is empty (a text file needs one example per line)")
    return examples


def _squad_error(path: Path, where: str, problem: str) -> InputError:
    return InputError(f"{path}: not a SQuAD v1.1 file: {where} {problem} (expected "
                      "{'data': [{'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', "
                      "'answers': [{'text', 'answer_start'}]}]}]}]})")


def _parse_squad(path: Path, limit: int | None) -> list[SquadRecord]:
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


def read_squad(path: str | os.PathLike | None, limit: int | None = None,
               split: str = "dev") -> list[SquadRecord]:
    """The questions of a SQuAD v1.1 JSON file (or of the ``split`` file in a directory), in
    file order, with every gold answer; ``limit`` keeps the first ``limit`` questions."""
    _check_limit(limit)
    file = _resolve_file(path, split)
    if file.suffix != ".json":
        raise InputError(f"'{file}' is not a SQuAD .json file")
    return _parse_squad(file, limit)


# --------------------------------------------------------------------------------------------
# Entry points


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive number of examples or None, not {limit!r}")


def read_examples(path: str | os.PathLike | None, split: str = "dev",
                  limit: int | None = None) -> list[Example]:
    """The examples of a data file or task directory, in file order (see the module docstring
    for the accepted formats). ``split`` picks the file in a task directory; ``limit`` keeps the
    first ``limit`` examples. Raises :class:`InputError` on a missing, empty or malformed input,
    naming the file and line."""
    _check_limit(limit)
    file = _resolve_file(path, split)
    if not file.is_file():
        raise InputError(f"data path '{file}' is not a regular file")
    if file.suffix == ".tsv":
        return _read_tsv(file, limit)
    if file.suffix == ".json":
        return [Example(r.question, r.context) for r in _parse_squad(file, limit)]
    if file.suffix == ".csv":
        raise InputError(f"'{file}': CSV is not supported; convert it to a GLUE-style .tsv")
    return _read_text(file, limit)


def _pad(rows: list[list[int]], width: int, value: int, left: bool) -> list[list[int]]:
    return [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r))
            for r in rows]


def _labels(examples: Sequence[Example]) -> torch.Tensor | None:
    labels = [e.label for e in examples]
    if any(label is None for label in labels):
        return None
    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        return torch.tensor(labels, dtype=torch.long)
    return torch.tensor([float(label) for label in labels], dtype=torch.float32)


def make_batches(examples: Sequence[Example], tokenizer: Any, input_names: Sequence[str],
                 batch_size: int = 16, max_length: int = 128) -> list[Batch]:
    """Tokenize ``examples`` in order into batches of ``batch_size``.

    Pairs are encoded as ``(text, text_pair)``; sequences are truncated to ``max_length``
    tokens (longest segment first) and padded to the longest one in their batch, on the
    tokenizer's padding side, with its pad token (its end-of-sequence token, or 0, when it has
    none). Each batch holds exactly the int64 tensors in ``input_names`` (a subset of
    :data:`INPUT_NAMES`); ``token_type_ids`` are zeros when the tokenizer gives none. A batch
    must not mix single texts and pairs.
    """
    unknown = [name for name in input_names if name not in INPUT_NAMES]
    if unknown or not input_names:
        raise InputError(f"cannot produce model inputs {unknown or '(none)'}: input_names must "
                         f"be taken from {', '.join(INPUT_NAMES)}")
    if batch_size < 1 or max_length < 1:
        raise InputError(f"batch_size and max_length must be positive, not {batch_size} and "
                         f"{max_length}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batches: list[Batch] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        paired = [e.text_pair is not None for e in chunk]
        if any(paired) and not all(paired):
            raise InputError(f"examples {start}..{start + len(chunk) - 1} mix single texts and "
                             "pairs: give every example of a batch a text_pair, or none")
        encoded = tokenizer([e.text for e in chunk],
                            text_pair=[e.text_pair for e in chunk] if paired[0] else None,
                            truncation=True, max_length=max_length, padding=False)
        ids = [list(row) for row in encoded["input_ids"]]
        width = max(len(row) for row in ids)
        columns = {
            "input_ids": _pad(ids, width, pad_id, left),
            "attention_mask": _pad([[1] * len(row) for row in ids], width, 0, left),
            "token_type_ids": _pad([list(row) for row in encoded["token_type_ids"]], width, 0, left)
            if "token_type_ids" in encoded else [[0] * width for _ in ids],
        }
        inputs = {name: torch.tensor(columns[name], dtype=torch.int64) for name in input_names}
        batches.append(Batch(inputs, _labels(chunk)))
    return batches


def load_calibration(path: str | os.PathLike | None, tokenizer: Any, input_names: Sequence[str],
                     limit: int | None = 128, batch_size: int = 16, max_length: int = 128,
                     split: str = "dev") -> list[Batch]:
    """The first ``limit`` examples of ``path`` (see :func:`read_examples`) as batches (see
    :func:`make_batches`)."""
    examples = read_examples(path, split=split, limit=limit)
    return make_batches(examples, tokenizer, input_names, batch_size=batch_size,
                        max_length=max_length)
