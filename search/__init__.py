"""Accuracy-driven specialization (the AxFormer method): a greedy search over hard attention
and structural removals, judged on a validation split of the task's training data.

    from optc.search import specialize, SearchOptions
    result = specialize(module, "sst2", tokenizer, options=SearchOptions(workers=2))
    result.module, result.table(), result.summary()

    # the tolerance contract: the fastest point within 1 held-out metric point
    from optc.search import specialize_within, ContractOptions, Target, RECIPES
    options = RECIPES["default"].options(SearchOptions(), max_drop=1.0)
    chosen = specialize_within(module, "sst2", tokenizer, options=options,
                               contract=ContractOptions(1.0, Target("onnx")))
"""

from optc.search.acceptance import (
    RULES,
    AcceptanceRule,
    FlipGuard,
    LossRule,
    MetricLossRule,
    MetricRule,
    Verdict,
    make_rule,
)
from optc.search.candidates import (
    DEFAULT_ORDER,
    KINDS,
    Candidate,
    Config,
    Trial,
    commit,
    neuron_groups,
    plan_trials,
)
from optc.search.contract import (
    ContractOptions,
    ContractResult,
    Point,
    Target,
    specialize_within,
)
from optc.search.driver import specialize
from optc.search.executors import (
    RAY_INSTALL_HINT,
    Executor,
    ProcessExecutor,
    RayExecutor,
    SerialExecutor,
    make_executor,
)
from optc.search.options import SearchOptions
from optc.search.recipe import RECIPES, Recipe, load_recipe
from optc.search.result import HistoryEntry, SearchResult
from optc.search.runner import GatedRunner, Outcome, prepare_batches
from optc.search.validation import (
    MIN_VALIDATION,
    check_searchable,
    held_out_examples,
    holdout_options,
    validate,
    validation_examples,
)

__all__ = [
    "AcceptanceRule", "FlipGuard", "LossRule", "MetricRule", "MetricLossRule", "RULES", "Verdict",
    "make_rule",
    "DEFAULT_ORDER", "KINDS", "Candidate", "Config", "Trial", "commit", "neuron_groups",
    "plan_trials", "MIN_VALIDATION", "HistoryEntry", "SearchOptions", "SearchResult",
    "specialize", "validate", "validation_examples", "holdout_options", "RAY_INSTALL_HINT",
    "Executor", "ProcessExecutor", "RayExecutor",
    "SerialExecutor", "make_executor", "GatedRunner", "Outcome", "prepare_batches",
    "ContractOptions", "ContractResult", "Point", "Target", "specialize_within",
    "check_searchable", "held_out_examples", "RECIPES", "Recipe", "load_recipe",
]
