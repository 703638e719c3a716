"""The model a pass learns from or compares against: a ``teacher`` artifact, else the module as
it entered the pipeline (handed over by the pass manager)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from optc.artifacts import load_module
from optc.errors import ArtifactError, InputError
from optc.ir.core import Module

__all__ = ["TakesReference"]


@dataclass(frozen=True)
class TakesReference:
    """Mixin of passes with a ``teacher`` option whose default is the pipeline's input
    (``distill`` and the passes built on it, ``reconstruct``)."""

    _pipeline_input: Module | None = field(default=None, init=False, repr=False, compare=False)

    def with_pipeline_input(self, module: Module | None) -> Any:
        """This pass with ``module`` (the pipeline's input, e.g. a clone taken by the pass
        manager before the first pass, or its ``reference``) as the default teacher."""
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "_pipeline_input", module)
        return copy

    def reference(self) -> tuple[Module, str] | None:
        """``(module, origin)``: the ``teacher`` artifact (origin: its path), else the pipeline's
        input (origin ``pipeline-input``), else None. An unreadable artifact is an
        :class:`InputError` naming the pass."""
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            try:
                return load_module(teacher), teacher
            except (ArtifactError, InputError) as exc:
                raise InputError(f"{getattr(self, 'name', 'pass')} teacher: {exc}") from None
        if self._pipeline_input is not None:
            return self._pipeline_input, "pipeline-input"
        return None
