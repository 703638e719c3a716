"""The pass base class and its result.

A pass is a frozen dataclass: its fields are its options (they map one-to-one to the text
pipeline spec ``name{field=value}``), ``name`` is its kebab-case registry name, and
:meth:`Pass.run` rewrites a module in place and returns a :class:`PassResult`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from optc.ir.core import Module

__all__ = ["Pass", "PassResult"]


@dataclass(frozen=True)
class PassResult:
    """What a pass did."""

    modified: bool
    """Whether the module changed. A pass that found nothing to do must say False."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Counters (nodes removed, parameters sliced, ...) reported by instruments and the CLI."""


@dataclass(frozen=True)
class Pass:
    """Base class of every pass. Subclasses are frozen dataclasses and set ``name``."""

    name: ClassVar[str] = ""
    """Kebab-case name used in pipeline specs."""

    def requires(self, module: Module) -> str | None:
        """Return why the pass cannot run on ``module``, or None when it can.

        Checked by the pass manager before :meth:`run`; the module is left unchanged when a
        precondition fails.
        """
        return None

    def run(self, module: Module) -> PassResult:
        """Rewrite ``module`` in place and report what changed."""
        raise NotImplementedError(f"pass {self.name} does not implement run()")

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The pass's options (its dataclass fields), in declaration order."""
        return list(dataclasses.fields(cls))

    def spec(self) -> str:
        """This pass with its non-default options, in pipeline-spec syntax."""
        from optc.passes.spec import format_pass

        return format_pass(self)

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
