"""Tasks: data readers, heads, losses, metrics and evaluation (GLUE, SQuAD, your own files).

    task = get_task("sst2")                       # or "mrpc", "squad", "text-classification{labels=neg,pos}",
                                                  # "sentence-similarity", "embedding{data=texts.txt}"
    dev = task.read("dev")                        # glue/SST-2/dev.tsv under $OPTC_DATA_DIR
    val = task.read("val", seed=0)                # 15% of train, stratified; "train" is the rest
    result = evaluate(task, model_fn, "dev", tokenizer)
    result.metrics, result.score, result.losses   # percentages, main metric, per-example losses
"""

from __future__ import annotations

from optc.tasks.batching import (
    INPUT_NAMES,
    Batch,
    batches,
    example_batches,
    feature_batches,
    model_input_names,
)
from optc.tasks.detect import first_split, read_examples
from optc.tasks.embedding import embedding, neighbour_agreement, sentence_similarity
from optc.tasks.evaluate import EvalResult, Progress, evaluate
from optc.tasks.generic import text_classification
from optc.tasks.glue import GLUE_TASKS, SQUAD_TASKS
from optc.tasks.metrics import (
    METRICS,
    accuracy,
    f1,
    matthews_correlation,
    normalize_answer,
    pearson,
    spearman,
    squad_exact_match,
    squad_f1,
    squad_metrics,
)
from optc.tasks.pooling import (
    DEFAULT_POOLING,
    POOLING_MODES,
    Pooling,
    declared_pooling,
    parse_pooling,
    read_pooling,
)
from optc.tasks.readers import DATA_ENV, DEFAULT_DATA_ROOT, TableFormat, resolve_data_path
from optc.tasks.records import Example, SquadRecord
from optc.tasks.registry import all_tasks, get_task, parse_task_spec, register_task
from optc.tasks.reuse import reuse_reads
from optc.tasks.significance import MetricDelta, paired_bootstrap, references_of
from optc.tasks.splits import DEFAULT_VAL_SIZE, validation_split
from optc.tasks.squad import QAFeature, build_features, decode_answers
from optc.tasks.task import EMBEDDING_KINDS, HEADS, KINDS, Task

__all__ = [
    "Task",
    "KINDS",
    "HEADS",
    "EMBEDDING_KINDS",
    "Pooling",
    "POOLING_MODES",
    "DEFAULT_POOLING",
    "read_pooling",
    "parse_pooling",
    "declared_pooling",
    "sentence_similarity",
    "embedding",
    "neighbour_agreement",
    "TableFormat",
    "get_task",
    "all_tasks",
    "register_task",
    "parse_task_spec",
    "text_classification",
    "GLUE_TASKS",
    "SQUAD_TASKS",
    "DEFAULT_DATA_ROOT",
    "DEFAULT_VAL_SIZE",
    "resolve_data_path",
    "DATA_ENV",
    "INPUT_NAMES",
    "Batch",
    "example_batches",
    "read_examples",
    "first_split",
    "Example",
    "SquadRecord",
    "reuse_reads",
    "validation_split",
    "batches",
    "feature_batches",
    "model_input_names",
    "QAFeature",
    "build_features",
    "decode_answers",
    "EvalResult",
    "Progress",
    "evaluate",
    "MetricDelta",
    "paired_bootstrap",
    "references_of",
    "METRICS",
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearman",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
]

for _task in (*GLUE_TASKS, *SQUAD_TASKS):
    register_task(_task)
register_task(text_classification, "text-classification")
register_task(sentence_similarity, "sentence-similarity")
register_task(embedding, "embedding")
del _task
