"""The pass base class and its result.

A pass is a frozen dataclass: its fields are its options (they map one-to-one to the text
pipeline spec ``name{field=value}``), ``name`` is its kebab-case registry name, and
:meth:`Pass.run` rewrites a module in place and returns a :class:`PassResult`. What a pass
needs beyond its options comes in the :class:`~optc.passes.context.PassContext` the pass
manager hands to ``run(module, ctx)``; a pass that needs nothing from it may define
``run(self, module)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

from optc.ir.core import Module
from optc.passes.context import EMPTY_CONTEXT, PassContext

__all__ = ["Pass", "PassResult", "format_pass", "format_value"]


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
    needs_reference: ClassVar[bool] = False
    """Whether the pass learns from or compares against the pipeline's input (then the pass
    manager puts a copy of it in ``ctx.reference``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and len(inspect.signature(run).parameters) == 2:  # (self, module)
            @functools.wraps(run)
            def run_with_context(self: Any, module: Module, ctx: PassContext = EMPTY_CONTEXT,
                                 _run: Any = run) -> Any:
                return _run(self, module)

            cls.run = run_with_context  # type: ignore[method-assign]

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads task or calibration data from its ``data`` option
        (the CLI's ``--data`` fills it when the spec leaves it out)."""
        return False

    def requires(self, module: Module) -> str | None:
        """Return why the pass cannot run on ``module``, or None when it can.

        Checked by the pass manager before :meth:`run`; the module is left unchanged when a
        precondition fails.
        """
        return None

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        """Rewrite ``module`` in place and report what changed; ``ctx``: what the pipeline
        gives (see :class:`~optc.passes.context.PassContext`)."""
        raise NotImplementedError(f"pass {self.name} does not implement run()")

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The pass's options (its dataclass fields): its own in declaration order, then those
        of the classes it extends (shared option sets such as
        :class:`~optc.passes.support.calibration.CalibrationOptions`), nearest first."""
        mro = cls.__mro__

        def depth(f: dataclasses.Field) -> int:  # of the class that introduced the option
            return max(i for i, k in enumerate(mro) if f.name in k.__dict__.get("__annotations__", {}))

        return sorted(dataclasses.fields(cls), key=depth)  # stable: declaration order within

    def spec(self) -> str:
        """This pass with its non-default options, in pipeline-spec syntax."""
        return format_pass(self)

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def format_value(value: Any) -> str:
    """An option value as written in a pipeline spec."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(
            ":".join(str(x) for x in v) if isinstance(v, tuple) else format_value(v) for v in value
        )
    return str(value)


def format_pass(p: Pass) -> str:
    """``name{opt=value,...}`` with the options that differ from their defaults."""
    parts = []
    for f in p.options():
        if not f.init:
            continue
        value = getattr(p, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
        )
        if value != default:
            parts.append(f"{f.name}={format_value(value)}")
    return p.name + ("{" + ",".join(parts) + "}" if parts else "")
