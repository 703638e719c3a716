"""The built-in benchmark tasks: GLUE (in its published tsv layouts) and SQuAD v1.1/v2.0.

Label names and their order follow GLUE (and the Hugging Face ``glue`` dataset); metrics
follow the GLUE paper (MRPC/QQP: F1 and accuracy, CoLA: Matthews correlation, STS-B: Pearson
and Spearman, the others: accuracy) and the official SQuAD scripts (exact match and F1).
"""

from __future__ import annotations

from optc.tasks.readers import TableFormat
from optc.tasks.task import Task

__all__ = ["GLUE_TASKS", "SQUAD_TASKS"]

_GLUE_FILES = ("{split}.tsv",)
_TRAIN_DEV = ("train", "dev")
_PAIR = ("sentence1", "sentence2")


def _classification(name: str, path: str, table: TableFormat, labels: tuple[str, ...],
                    metrics: tuple[str, ...] = ("accuracy",), main: str = "accuracy",
                    splits: tuple[str, ...] = _TRAIN_DEV, description: str = "") -> Task:
    texts = tuple(str(c) for c in (table.text, table.pair) if c is not None)
    return Task(name=name, kind="classification", num_labels=len(labels), label_names=labels,
                text_columns=texts, label_column=str(table.label), splits=splits,
                file_names=_GLUE_FILES, metrics=metrics, main_metric=main, table=table,
                data_path=path, description=description)


GLUE_TASKS: tuple[Task, ...] = (
    _classification(
        "cola", "glue/CoLA",
        # no header: source, label, original label (blank when unchanged), sentence
        TableFormat(text=3, label=1, header=False, columns=4),
        ("unacceptable", "acceptable"), ("matthews_correlation",), "matthews_correlation",
        description="CoLA: grammatical acceptability (single sentence)"),
    _classification(
        "sst2", "glue/SST-2", TableFormat(text="sentence", label="label"),
        ("negative", "positive"), description="SST-2: sentiment (single sentence)"),
    _classification(
        "mrpc", "glue/MRPC",
        # Quality, #1 ID, #2 ID, #1 String, #2 String (UTF-8 BOM before the header)
        TableFormat(text="#1 String", pair="#2 String", label="Quality"),
        ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
        description="MRPC: paraphrase (sentence pair)"),
    Task(name="stsb", kind="regression", num_labels=1, label_names=(), text_columns=_PAIR,
         label_column="score", splits=_TRAIN_DEV, file_names=_GLUE_FILES,
         metrics=("pearson", "spearman"), main_metric="pearson",
         # index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score
         table=TableFormat(text="sentence1", pair="sentence2", label="score"),
         data_path="glue/STS-B", description="STS-B: semantic similarity score 0-5 (regression)"),
    _classification(
        "qqp", "glue/QQP",
        # id, qid1, qid2, question1, question2, is_duplicate
        TableFormat(text="question1", pair="question2", label="is_duplicate"),
        ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1",
        description="QQP: duplicate questions (pair)"),
    _classification(
        "mnli", "glue/MNLI",
        # index, promptID, pairID, genre, 4 parse columns, sentence1, sentence2, label1[..5],
        # gold_label
        TableFormat(text="sentence1", pair="sentence2", label="gold_label"),
        ("entailment", "neutral", "contradiction"),
        splits=("train", "dev_matched", "dev_mismatched"),
        description="MNLI: 3-way entailment (pair); dev = dev_matched"),
    _classification(
        "qnli", "glue/QNLI",
        # index, question, sentence, label
        TableFormat(text="question", pair="sentence", label="label"),
        ("entailment", "not_entailment"), description="QNLI: question answered by sentence"),
    _classification(
        "rte", "glue/RTE", TableFormat(text="sentence1", pair="sentence2", label="label"),
        ("entailment", "not_entailment"), description="RTE: entailment (pair, word labels)"),
    _classification(
        "wnli", "glue/WNLI", TableFormat(text="sentence1", pair="sentence2", label="label"),
        ("not_entailment", "entailment"), description="WNLI: Winograd entailment (pair)"),
)
"""The nine GLUE tasks, reading ``train.tsv``/``dev.tsv`` in ``glue/<TASK>``."""


def _squad(name: str, version: str, v2: bool) -> Task:
    return Task(name=name, kind="extractive-qa", num_labels=2, label_names=(),
                text_columns=("question", "context"), label_column=None, splits=_TRAIN_DEV,
                file_names=(f"{{split}}-v{version}.json", "{split}.json"),
                metrics=("exact_match", "f1"), main_metric="f1", data_path="squad",
                version_2=v2,
                description=f"SQuAD v{version}: extractive QA"
                            + (" with unanswerable questions" if v2 else ""))


SQUAD_TASKS: tuple[Task, ...] = (_squad("squad", "1.1", False), _squad("squad_v2", "2.0", True))
"""SQuAD v1.1 and v2.0, reading ``{train,dev}-v1.1.json`` / ``-v2.0.json`` in ``squad``."""
