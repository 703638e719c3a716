"""Typed errors raised by optc.

Every error a user can cause derives from :class:`OptcError`. Messages name the thing that is
wrong (the node, the pass, the option, the file) and say how to fix it. The CLI prints
``str(error)`` as one line and exits with ``error.exit_code``:

    1  internal error (a bug in optc)      4  output exists or cannot be written
    2  bad usage, pipeline spec or option  5  a pass or the verifier failed
    3  bad input: model, artifact, data    6  a backend cannot lower the IR
"""

from __future__ import annotations

__all__ = [
    "OptcError",
    "IRError",
    "VerificationError",
    "ParseError",
    "FrontendError",
    "BackendError",
    "PassError",
    "PipelineSpecError",
    "PluginError",
    "ArtifactError",
    "InputError",
    "ModelInputError",
    "OutputError",
    "excerpt",
    "EXCERPT_LIMIT",
]

EXCERPT_LIMIT = 200
"""Characters of input text (a token of a corrupted file, a data field) an error quotes."""


def excerpt(text: object, limit: int = EXCERPT_LIMIT, *, quote: bool = True) -> str:
    """``text`` as an error message quotes it: ``repr`` (or as is, without ``quote``), cut to
    ``limit`` characters with an ellipsis and the full length, so that a message quoting a
    5 MB line of a corrupted file stays one readable line."""
    s = str(text)
    if len(s) <= limit:
        return repr(s) if quote else s
    cut = repr(s[:limit]) if quote else s[:limit]
    return f"{cut}... ({len(s):,} characters)"


class OptcError(Exception):
    """Base class of every error optc raises on purpose."""

    exit_code: int = 1


class IRError(OptcError):
    """An IR edit that would break an invariant (e.g. removing a node that still has users)."""


class VerificationError(IRError):
    """The verifier found broken invariants; ``problems`` lists one message per problem."""

    exit_code = 5

    def __init__(self, problems: list[str], context: str = "") -> None:
        self.problems = list(problems)
        self.context = context
        head = f"IR verification failed{(' ' + context) if context else ''}"
        shown = "; ".join(self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"{head}: {shown}{more}")


class ParseError(OptcError):
    """The textual IR could not be parsed; the message gives line and column."""

    exit_code = 3

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line else ""
        super().__init__(f"IR parse error: {where}{message}")


class FrontendError(OptcError):
    """A model could not be captured or raised into the IR."""

    exit_code = 3


class BackendError(OptcError):
    """An IR module could not be lowered to a backend."""

    exit_code = 6


class PassError(OptcError):
    """A pass failed; the message names the pass and the passes that ran before it."""

    exit_code = 5


class PipelineSpecError(OptcError):
    """The text pipeline spec names an unknown pass or option, or an option value is bad."""

    exit_code = 2


class PluginError(OptcError):
    """A plugin module (``OPTC_PLUGINS`` or an ``optc.plugins`` entry point) failed to import."""

    exit_code = 2


class ArtifactError(OptcError):
    """An artifact is missing, unreadable, corrupted, or would need unpickling."""

    exit_code = 3


class InputError(OptcError):
    """A model or data input is missing, unreadable or of a kind optc refuses to load."""

    exit_code = 3


class ModelInputError(InputError, ValueError):
    """Tensors given to a compiled module do not fit it (name, rank, dtype, sizes, id range);
    also a ``ValueError``, as a torch module's bad argument would be."""


class OutputError(OptcError):
    """An output path exists (without ``--force``) or cannot be written."""

    exit_code = 4
