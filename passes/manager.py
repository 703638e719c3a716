"""The pass manager: runs a pipeline, verifies between passes, and drives instruments.

Instruments observe the pipeline without passes knowing about them (TVM style): print the IR
after every pass, dump it to numbered files, time passes, collect statistics. Verification runs
before the first pass and after every pass unless ``verify=False``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from optc.errors import InputError, OptcError, OutputError, PassError, VerificationError
from optc.ir.core import Module
from optc.ir.printer import print_module
from optc.ir.verifier import collect_problems
from optc.passes.base import Pass, PassResult
from optc.passes.context import PassContext
from optc.passes.spec import parse_pipeline

__all__ = [
    "PassManager",
    "PassRecord",
    "PipelineReport",
    "Instrument",
    "PrintAfterAll",
    "DumpIR",
    "run_pipeline",
]


@dataclass
class PassRecord:
    """What one pass did in one pipeline run."""

    spec: str
    """The pass with its options, as in a pipeline spec."""
    modified: bool
    stats: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class PipelineReport(PassResult):
    """The outcome of :meth:`PassManager.run`: a :class:`PassResult` (a pipeline is a pass:
    ``modified`` when any of its passes changed the module; ``stats``: each pass's counters
    under its spec) with one record per pass."""

    records: list[PassRecord] = field(default_factory=list)

    @classmethod
    def of(cls, records: list[PassRecord]) -> PipelineReport:
        stats = {f"{r.spec}.{k}": v for r in records for k, v in r.stats.items()}
        return cls(any(r.modified for r in records), stats, records)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    def table(self) -> str:
        """A plain-text table: pass, changed, time, statistics."""
        rows = [("pass", "changed", "time", "stats")]
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
            rows.append((r.spec, "yes" if r.modified else "no", f"{r.seconds * 1000:.1f} ms", stats))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip()
            for row in rows
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"pass": r.spec, "modified": r.modified, "stats": r.stats, "seconds": r.seconds}
            for r in self.records
        ]


class Instrument:
    """Hooks around passes. Override what you need; all default to doing nothing."""

    def before_pipeline(self, module: Module, passes: list[Pass]) -> None:
        """Called once, after the input module was verified."""

    def after_pass(self, p: Pass, index: int, module: Module, record: PassRecord) -> None:
        """Called after pass number ``index`` (0-based) ran and the module was verified."""


class PrintAfterAll(Instrument):
    """Print the IR after every pass (``--print-after-all``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_pass(self, p: Pass, index: int, module: Module, record: PassRecord) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"// ----- IR after {record.spec} (pass {index + 1}) -----\n")
        stream.write(print_module(module))
        stream.flush()


class DumpIR(Instrument):
    """Write the IR before the pipeline and after each pass to numbered files in a directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def before_pipeline(self, module: Module, passes: list[Pass]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create dump directory '{self.directory}': {exc.strerror}") from None
        self._write("00-input.optc", module)

    def after_pass(self, p: Pass, index: int, module: Module, record: PassRecord) -> None:
        self._write(f"{index + 1:02d}-{p.name}.optc", module)

    def _write(self, name: str, module: Module) -> None:
        try:
            (self.directory / name).write_text(print_module(module, locations=True))
        except OSError as exc:
            raise OutputError(f"cannot write '{self.directory / name}': {exc.strerror}") from None


class PassManager(Pass):
    """Runs passes in order on a module, in place.

    ``passes`` is a list of pass instances (pass managers included: pipelines nest) or a
    pipeline spec string. ``reference`` is the module that passes learning from the pipeline's
    input (``distill``'s default teacher) see instead of a copy of the module as it enters,
    e.g. the model a search started from.

    A pass manager is itself a :class:`Pass` (its spec is its passes' specs joined by commas,
    and its :class:`PipelineReport` is a :class:`PassResult`), so a pipeline can be one step
    of another: the outer manager records it as one pass and, when it fails, puts the module
    back as it was before the whole inner pipeline.
    """

    name = "pipeline"
    __hash__ = object.__hash__  # identity, not the (empty) dataclass fields of Pass
    __eq__ = object.__eq__

    def __init__(
        self,
        passes: list[Pass] | str,
        verify: bool = True,
        instruments: list[Instrument] | None = None,
        reference: Module | None = None,
    ) -> None:
        self.passes: list[Pass] = parse_pipeline(passes)
        self.verify = verify
        self.instruments = list(instruments or [])
        self.reference = reference

    def __repr__(self) -> str:
        return f"PassManager({self.spec()!r})"

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """Whether any of its passes learns from the pipeline's input."""
        return any(p.needs_reference for p in self.passes)

    def spec(self) -> str:
        """The passes' specs, joined by commas (what running them flat would read)."""
        return ",".join(p.spec() for p in self.passes)

    def _verify(self, module: Module, context: str) -> None:
        if self.verify:
            problems = collect_problems(module)
            if problems:
                raise VerificationError(problems, context)

    def run(self, module: Module, ctx: PassContext | None = None) -> PipelineReport:
        """Run the pipeline on ``module`` (edited in place) and report what each pass did.

        Every pass gets ``ctx`` (default: a new :class:`PassContext`). When a pass learns from
        the pipeline's input (``needs_reference``: ``distill``'s default teacher) and ``ctx``
        holds none, ``ctx.reference`` becomes ``reference`` or a copy of the module as it
        entered. A pass that fails leaves the module exactly as it was before that pass.
        """
        if not isinstance(module, Module):
            hint = (": capture it first (module = optc.capture(model))"
                    if isinstance(module, torch.nn.Module) else "")
            raise InputError(f"run_pipeline needs an optc IR module, got {type(module).__name__}{hint}")
        ctx = ctx if ctx is not None else PassContext()
        if ctx.reference is None and any(p.needs_reference for p in self.passes):
            snapshot = self.reference if self.reference is not None else module.clone()
            ctx = dataclasses.replace(ctx, reference=snapshot)
        records: list[PassRecord] = []
        self._verify(module, "on the input to the pipeline")
        for inst in self.instruments:
            inst.before_pipeline(module, self.passes)
        done: list[str] = []
        for index, p in enumerate(self.passes):
            spec = p.spec()
            after = f" (after {', '.join(done)})" if done else " (first pass)"
            reason = p.requires(module)
            if reason:
                raise PassError(f"pass '{spec}' cannot run{after}: {reason}")
            start = time.perf_counter()
            before = module.clone()
            try:
                result = p.run(module, ctx)
            except OptcError as exc:
                module.restore(before)
                err = PassError(f"pass '{spec}' failed{after}: {exc}")
                err.exit_code = exc.exit_code
                raise err from exc
            except Exception as exc:  # noqa: BLE001 - a crashing pass is a bug: name it
                module.restore(before)
                err = PassError(f"pass '{spec}' crashed{after}: {type(exc).__name__}: {exc}")
                err.exit_code = 1
                raise err from exc
            except BaseException:  # Ctrl-C: the module as it was before this pass
                module.restore(before)
                raise
            seconds = time.perf_counter() - start
            if not isinstance(result, PassResult):
                module.restore(before)
                raise PassError(
                    f"pass '{spec}' returned {type(result).__name__}, not PassResult: "
                    "return PassResult(modified, stats) from run()"
                )
            try:
                self._verify(module, f"after pass '{spec}'{after}")
            except VerificationError:
                module.restore(before)
                raise
            record = PassRecord(spec, result.modified, dict(result.stats), seconds)
            records.append(record)
            for inst in self.instruments:
                inst.after_pass(p, index, module, record)
            done.append(spec)
        return PipelineReport.of(records)


def run_pipeline(module: Module, passes: list[Pass] | str, **options: Any) -> PipelineReport:
    """Shorthand for ``PassManager(passes, **options).run(module)``."""
    return PassManager(passes, **options).run(module)
