"""``text-classification``: a user's own task from a TSV, CSV or JSON-lines file, no code.

Columns are named (``text``, optional ``text_pair``, ``label`` by default), or numbered from 1
in a TSV/CSV file without a header line (``header=false``: ``text_column=1``, ``label_column=2``
by default); labels are class names (``labels=neg,pos``) or indices, or scores with
``regression=true``. Files in a directory are found by split: ``train.tsv``, ``dev.csv``,
``dev.jsonl``, ...
"""

from __future__ import annotations

from typing import Any

from optc.errors import InputError
from optc.tasks.metrics import METRICS
from optc.tasks.readers import TABLE_SUFFIXES, TableFormat
from optc.tasks.task import Task

__all__ = ["text_classification"]

_HINT = " (point the task at your columns and labels with text_column=, pair_column=, " \
        "label_column=, labels=)"


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InputError(f"text-classification option {name}={value!r} must be true or false")


def _names(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items)
    if any(not n for n in names) or len(set(names)) != len(names):
        raise InputError(f"text-classification option {name}={value!r} must be distinct, "
                         "non-empty comma-separated names")
    return names


def _column_number(name: str, value: Any) -> int:
    """A 1-based column number of a header-less file (``text_column=2``) as a 0-based index."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise InputError(f"text-classification option {name}={value!r}: with header=false "
                         "columns are numbered from 1 (text_column=1 is the first column)")
    return number - 1


def text_classification(text_column: str | None = None, pair_column: str | None = None,
                        label_column: str | None = None,
                        labels: str | tuple[str, ...] | None = None,
                        num_labels: int | str | None = None, regression: bool | str = False,
                        metrics: str | tuple[str, ...] | None = None,
                        main_metric: str | None = None, header: bool | str = True) -> Task:
    """A classification (or, with ``regression``, regression) task over named columns.

    ``labels`` names the classes in index order (default ``0..num_labels-1``, 2 classes); a
    file label may be a name or a number: a number maps by value when the names are numbers,
    else it is a 0-based index, and a file whose numbers do not use 0 is refused as ambiguous
    (:attr:`Task.numbers_are_indices`). ``pair_column`` defaults to an optional
    ``text_pair`` column. ``metrics`` defaults to accuracy (pearson, spearman for regression);
    ``main_metric`` to the first metric. ``header=false``: the TSV/CSV files have no header
    line and the columns are numbers counted from 1 (``text_column`` default 1,
    ``label_column`` 2; no pair unless ``pair_column`` is given).
    """
    is_regression = _bool("regression", regression)
    has_header = _bool("header", header)
    if is_regression and labels is not None:
        raise InputError("text-classification: labels= makes no sense with regression=true")
    if labels is not None:
        names = _names("labels", labels)
        if num_labels is not None and int(num_labels) != len(names):
            raise InputError(f"text-classification: num_labels={num_labels} but labels= names "
                             f"{len(names)} classes")
    elif is_regression:
        names = ()
    else:
        try:
            count = 2 if num_labels is None else int(num_labels)
        except ValueError:
            raise InputError(f"text-classification option num_labels={num_labels!r} must be an "
                             "integer") from None
        if count < 2:
            raise InputError(f"text-classification needs num_labels >= 2, not {count} (use "
                             "regression=true for scores)")
        names = tuple(str(i) for i in range(count))
    chosen = (("pearson", "spearman") if is_regression else ("accuracy",)) if metrics is None \
        else _names("metrics", metrics)
    unknown = [m for m in chosen if m not in METRICS]
    if unknown:
        raise InputError(f"text-classification: unknown metrics {', '.join(unknown)}; valid: "
                         f"{', '.join(METRICS)}")
    main = main_metric or chosen[0]
    if main not in chosen:
        raise InputError(f"text-classification: main_metric={main} is not one of the metrics "
                         f"{', '.join(chosen)}")
    if has_header:
        text_column, label_column = text_column or "text", label_column or "label"
        table = TableFormat(text=text_column, pair=pair_column or "text_pair",
                            label=label_column, pair_optional=pair_column is None, hint=_HINT)
    else:
        text_column, label_column = text_column or "1", label_column or "2"
        positions = {role: _column_number(role, value) for role, value in
                     (("text_column", text_column), ("pair_column", pair_column),
                      ("label_column", label_column)) if value is not None}
        if len(set(positions.values())) != len(positions):
            raise InputError("text-classification: with header=false the text, pair and label "
                             f"columns must be different numbers, got {text_column}, "
                             f"{pair_column or '-'}, {label_column}")
        table = TableFormat(text=positions["text_column"], pair=positions.get("pair_column"),
                            label=positions["label_column"], header=False,
                            hint=_HINT.replace("text_column=", "header=false with "
                                               "text_column=", 1))
    texts = (text_column,) + ((pair_column,) if pair_column else ())
    return Task(name="text-classification", kind="regression" if is_regression else "classification",
                num_labels=1 if is_regression else len(names), label_names=names,
                text_columns=texts, label_column=label_column, splits=("train", "dev"),
                file_names=tuple(f"{{split}}{suffix}" for suffix in TABLE_SUFFIXES),
                metrics=chosen, main_metric=main, table=table, data_path=None,
                description="your own text (pair) classification/regression from TSV/CSV/JSONL",
                numbers_are_indices=labels is None)
