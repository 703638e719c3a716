"""The model a pass learns from or compares against: a ``teacher`` artifact, else the pipeline's
input (``ctx.reference``, put there by the pass manager)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from optc.artifacts import load_module
from optc.errors import ArtifactError, InputError
from optc.ir.core import Module
from optc.passes.base import Pass
from optc.passes.context import PassContext

__all__ = ["TakesReference"]


@dataclass(frozen=True)
class TakesReference(Pass):
    """Mixin of passes with a ``teacher`` option whose default is the pipeline's input
    (``distill`` and the passes built on it, ``reconstruct``)."""

    needs_reference: ClassVar[bool] = True
    if TYPE_CHECKING:  # each pass declares the option itself, where its spec places it
        teacher: str | None

    def reference(self, ctx: PassContext) -> tuple[Module, str] | None:
        """``(module, origin)``: the ``teacher`` artifact (origin: its path), else the pipeline's
        input ``ctx.reference`` (origin ``pipeline-input``), else None. An unreadable artifact
        is an :class:`InputError` naming the pass."""
        if self.teacher is not None:
            try:
                return load_module(self.teacher), self.teacher
            except (ArtifactError, InputError) as exc:
                raise InputError(f"{self.name} teacher: {exc}") from None
        if ctx.reference is not None:
            return ctx.reference, "pipeline-input"
        return None
