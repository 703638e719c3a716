"""Passes over the optc IR, the pass manager, the registry and the pipeline spec."""

from optc.passes.base import Pass, PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.manager import (
    DumpIR,
    Instrument,
    PassManager,
    PassRecord,
    PipelineReport,
    PrintAfterAll,
    run_pipeline,
)
from optc.passes.registry import all_passes, get_pass, register_pass
from optc.passes.spec import format_pipeline, parse_pipeline

__all__ = [
    "Pass",
    "PassResult",
    "PassContext",
    "EMPTY_CONTEXT",
    "DumpIR",
    "Instrument",
    "PassManager",
    "PassRecord",
    "PipelineReport",
    "PrintAfterAll",
    "run_pipeline",
    "all_passes",
    "get_pass",
    "register_pass",
    "format_pipeline",
    "parse_pipeline",
]
