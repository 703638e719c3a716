"""Rendering the graph pictures' DOT source (:mod:`optc.tools.reports.graph`) with Graphviz's
``dot`` program, and writing pictures and other files safely: an existing output is replaced only
with ``--force``, never an input, and atomically. Without ``dot`` an ``.svg``/``.png`` request
writes the ``.dot`` source instead with a one-line note."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import graphviz

from optc.errors import BackendError, OutputError, PipelineSpecError

__all__ = ["GRAPH_SUFFIXES", "DOT_MISSING_HINT", "dot_available", "to_svg", "check_file_output",
           "write_file", "check_graph_output", "render"]

GRAPH_SUFFIXES = (".svg", ".png", ".dot")
"""What ``--graph`` writes, chosen by the output's suffix."""

DOT_MISSING_HINT = ("Graphviz 'dot' not found (install it: apt-get install graphviz, "
                    "brew install graphviz or conda install graphviz)")


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` program is on the PATH."""
    return shutil.which("dot") is not None


def to_svg(source: str) -> str | None:
    """The SVG text of a DOT source (without XML prolog, to inline in HTML), or None when
    ``dot`` is not installed."""
    if not dot_available():
        return None
    data = _pipe(source, "svg").decode("utf-8")
    start = data.find("<svg")
    return data[start:] if start >= 0 else data


def _pipe(source: str, fmt: str) -> bytes:
    try:
        return graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise BackendError(DOT_MISSING_HINT) from None
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BackendError(f"Graphviz dot failed: {detail[0] if detail else exc}") from None


def check_file_output(path: str | os.PathLike, force: bool, suffixes: tuple[str, ...],
                      inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output ``path`` optc may not write: an existing one is replaced only with
    ``force`` and only when it is a regular file with one of ``suffixes`` and not an input;
    its directory must exist and be writable."""
    out = Path(path)
    if out.is_symlink() or out.exists():
        if out.is_dir() or out.is_symlink() or out.suffix.lower() not in suffixes:
            raise OutputError(f"'{out}' exists and is not a {'/'.join(suffixes)} file optc "
                              "would replace; choose another name")
        if any(out.resolve() == Path(i).resolve() for i in inputs if Path(i).exists()):
            raise OutputError(f"'{out}' is an input; choose another output name")
        if not force:
            raise OutputError(f"'{out}' exists (use --force to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{out}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{out}': directory '{parent}' is not writable")
    return out


def write_file(path: Path, data: bytes, force: bool, suffixes: tuple[str, ...],
               inputs: tuple[Path, ...] = ()) -> None:
    """Write ``data`` to ``path`` atomically (a temporary sibling renamed into place), after
    :func:`check_file_output`."""
    parent = check_file_output(path, force, suffixes, inputs).parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_graph_output(path: str | os.PathLike, force: bool,
                       inputs: tuple[Path, ...] = ()) -> Path:
    """Validate a ``--graph`` output before any slow work (the ``.dot`` file written instead
    when Graphviz is missing); returns it as a Path."""
    out = Path(path)
    if out.suffix.lower() not in GRAPH_SUFFIXES:
        raise PipelineSpecError(f"--graph {path}: the picture's name must end in .svg, .png or .dot")
    written = out if dot_available() else out.with_suffix(".dot")
    check_file_output(written, force, GRAPH_SUFFIXES, inputs)
    return out


def render(source: str, path: str | os.PathLike, force: bool = False,
           inputs: tuple[Path, ...] = ()) -> tuple[Path, str | None]:
    """Write the picture ``path`` (.svg, .png or .dot by suffix).

    Returns the path written and a one-line note when something else was written: without
    Graphviz's ``dot`` an ``.svg``/``.png`` request writes the DOT source to ``path`` with
    suffix ``.dot`` instead.
    """
    out = check_graph_output(path, force, inputs)
    fmt = out.suffix.lower()[1:]
    if fmt == "dot":
        write_file(out, source.encode(), force, GRAPH_SUFFIXES, inputs)
        return out, None
    if not dot_available():
        alt = out.with_suffix(".dot")
        write_file(alt, source.encode(), force, GRAPH_SUFFIXES, inputs)
        return alt, f"{DOT_MISSING_HINT}; wrote the DOT source to {alt} instead of {out}"
    write_file(out, _pipe(source, fmt), force, GRAPH_SUFFIXES, inputs)
    return out, None
