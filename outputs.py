"""Writing outputs safely: refuse to overwrite without ``force``, never leave partial files.

Every writer (artifacts, TorchScript and ONNX files, the CLI) goes through :func:`check_output`
and writes through :func:`atomic_file`, :func:`atomic_directory` or :func:`staged_output`.

What ``force`` may replace (:func:`check_output`): only an optc output of the same kind —

- ``kind="artifact"``: a directory optc wrote (``model.optc`` and a ``metadata.json`` whose
  format is ``optc-artifact``);
- ``kind="file"``: a regular file named like a model file (``.onnx``, ``.pt``, ``.ts``,
  ``.jit``), as the TorchScript and ONNX backends write.

It never replaces one of the ``inputs``, a directory that contains an input, the current
directory or one of its parents, a directory that is not an artifact, a directory where a file
is expected or a file where a directory is expected, or a symbolic link.

Replacing is atomic: the new output is written beside the target under a hidden temporary name
and swapped into place in one step (``renameat2(RENAME_EXCHANGE)`` where the system has it);
an interrupt (Ctrl-C) or a failure at any moment leaves either the old output or the new one,
never a mix and never a ``.NAME.tmp-*`` or ``.NAME.old-*`` leftover.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from optc.errors import OutputError

__all__ = [
    "OutputKind",
    "MODEL_FILE_SUFFIXES",
    "check_output",
    "atomic_file",
    "atomic_directory",
    "staged_output",
    "deferred_interrupts",
    "is_optc_artifact",
    "is_optc_export",
    "umask_mode",
]

OutputKind = Literal["file", "artifact"]
"""What a writer produces: a regular file (TorchScript, ONNX) or an artifact directory."""

_ARTIFACT_FILES = ("model.optc", "metadata.json")

MODEL_FILE_SUFFIXES = (".onnx", ".pt", ".ts", ".jit")
"""Suffixes of the model files (ONNX, TorchScript) that ``force`` may replace."""


def is_optc_artifact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory optc wrote: ``model.optc`` plus a ``metadata.json`` whose
    ``format`` is ``optc-artifact`` (read strictly; anything else is not optc's to replace)."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir() or not all((p / f).is_file() for f in _ARTIFACT_FILES):
        return False
    try:
        meta = json.loads((p / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == "optc-artifact"


def is_optc_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face directory optc exported: its ``config.json`` has an
    ``optc`` record naming a modeling file that is there (``--backend hf``), or the ONNX file
    of a sentence-transformers directory that is there (``--backend onnx-st``)."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir() or not (p / "config.json").is_file():
        return False
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    record = config.get("optc") if isinstance(config, dict) else None
    if not isinstance(record, dict):
        return False
    name = record.get("modeling_file")
    if isinstance(name, str) and "/" not in name:
        return (p / name).is_file()
    name = record.get("onnx_file") if record.get("format") == "onnx-st" else None
    return (isinstance(name, str) and not Path(name).is_absolute()
            and ".." not in Path(name).parts and (p / name).is_file())


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _contains(outer: Path, inner: Path) -> bool:
    """Whether resolved ``inner`` is ``outer`` or lies under it."""
    return inner == outer or outer in inner.parents


def _refuse_protected(target: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse ``target`` when it is, or contains, an input or the working directory."""
    real = _resolved(target)
    for given in inputs:
        if given is None:
            continue
        inp = _resolved(given)
        if real == inp:
            raise OutputError(f"refusing to write '{target}': it is the input model; "
                              "choose another output path")
        if _contains(real, inp):
            raise OutputError(f"refusing to replace '{target}': it contains the input model "
                              f"'{given}'; choose another output path")
    cwd = _resolved(os.getcwd())
    if _contains(real, cwd):
        what = "the current directory" if real == cwd else "a parent of the current directory"
        raise OutputError(f"refusing to replace '{target}': it is {what}; "
                          "give -o a new name, e.g. -o out")


def check_output(path: str | os.PathLike, force: bool, *, kind: OutputKind = "file",
                 inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Raise :class:`OutputError` unless ``path`` may be written; returns its directory.

    A new path needs an existing, writable parent directory. An existing one needs ``force``
    and must be an optc output of ``kind`` that is not one of ``inputs`` nor contains one (see
    the module docstring); everything else is refused even with ``force``.
    """
    if kind not in ("file", "artifact"):
        raise ValueError(f"kind must be 'file' or 'artifact', not {kind!r}")
    target = Path(path)
    if str(target) in ("", ".", "..") or target.name in ("", ".", ".."):
        _refuse_protected(target, inputs)
        raise OutputError(f"cannot write '{target}': give -o a new name, e.g. -o out")
    exists = os.path.lexists(target)
    if exists or inputs:
        _refuse_protected(target, inputs)
    if exists:
        _check_replaceable(target, force, kind)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{target}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{target}': directory '{parent}' is not writable")
    return parent


def _check_replaceable(target: Path, force: bool, kind: OutputKind) -> None:
    keep = "optc replaces only its own outputs: remove it yourself or choose another path"
    if target.is_symlink():
        raise OutputError(f"output '{target}' exists and is a symbolic link; {keep}")
    if kind == "artifact":
        if not target.is_dir():
            raise OutputError(f"output '{target}' exists and is not a directory; an optc artifact "
                              f"is a directory, so it cannot replace it: {keep}")
        if not (is_optc_artifact(target) or is_optc_export(target)):
            raise OutputError(f"output '{target}' exists and is not an optc artifact (no model.optc "
                              f"and optc metadata.json) or optc Hugging Face export, so --force "
                              f"will not replace it; {keep}")
    elif not target.is_file():
        what = "a directory" if target.is_dir() else "not a regular file"
        raise OutputError(f"output '{target}' exists and is {what}; this backend writes a file, "
                          f"so --force will not replace it; {keep}")
    elif target.suffix.lower() not in MODEL_FILE_SUFFIXES:
        raise OutputError(f"output '{target}' exists and is not a model file "
                          f"({', '.join(MODEL_FILE_SUFFIXES)}), so --force will not replace it; "
                          f"{keep}")
    if not force:
        raise OutputError(f"output '{target}' already exists; pass --force (force=True) to "
                          "replace it")


def umask_mode(mode: int) -> int:
    """``mode`` with the process umask applied (what a plainly created file would get)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


# -- interrupts ---------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) for the duration of a short critical section.

    A KeyboardInterrupt that arrives inside is raised when the section ends, so file-system
    steps that must happen together (swap the output into place, delete the temporary) are
    never cut in half. Outside the main thread, or when SIGINT is not Python's, does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # pragma: no cover - no signal support
        yield
        return
    if previous is None or previous in (signal.SIG_IGN, signal.SIG_DFL):
        yield
        return
    received: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists (errors ignored), without interruption."""
    with deferred_interrupts():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (Linux ``renameat2``); ``False`` if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an existing ``target`` atomically; the old one is
    deleted afterwards. Runs with interrupts held back."""
    with deferred_interrupts():
        if not os.path.lexists(target):
            os.replace(new, target)
            return
        if new.is_dir() or target.is_dir():
            if _exchange(new, target):
                _remove(new)  # now holds the old output
                return
            # No atomic swap here: move the old output aside, put the new one in, roll back on error.
            old = new.with_name(new.name + ".old")
            os.replace(target, old)
            try:
                os.replace(new, target)
            except OSError:
                os.replace(old, target)
                raise
            _remove(old)
        else:
            os.replace(new, target)  # rename(2) replaces a file atomically


def _write_error(target: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write '{target}': {exc.strerror or exc}")


# -- writers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _temporary(target: Path, parent: Path, *, directory: bool) -> Iterator[Path]:
    """A hidden temporary file or directory beside ``target``, removed when the block ends.

    It is made with Ctrl-C held back, and an interrupt held back there is raised inside the
    cleanup's ``try``, so no ``.NAME.tmp-*`` entry is ever left behind."""
    made: list[Path] = []
    try:
        with deferred_interrupts():
            try:
                if directory:
                    made.append(Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent)))
                else:
                    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-",
                                                suffix=target.suffix, dir=parent)
                    made.append(Path(name))
                    os.close(fd)
            except OSError as exc:
                raise _write_error(target, exc) from None
        yield made[0]
    finally:
        for path in made:
            _remove(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool, *, inputs: Iterable[str | os.PathLike] = ()
                ) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On any failure or interrupt the temporary file is removed and an existing ``path`` is left
    untouched. ``path`` must pass :func:`check_output` with ``kind="file"``.
    """
    target = Path(path)
    inputs = list(inputs)
    parent = check_output(target, force, kind="file", inputs=inputs)
    with _temporary(target, parent, directory=False) as tmp:
        try:
            yield tmp
            os.chmod(tmp, umask_mode(0o666))
            check_output(target, force, kind="file", inputs=inputs)  # still ours to replace
            _install(tmp, target)
        except OSError as exc:
            raise _write_error(target, exc) from None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, force: bool, *,
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it replaces ``path``.

    ``path`` must pass :func:`check_output` with ``kind="artifact"``. On any failure or
    interrupt the temporary directory is removed and an existing ``path`` is left untouched.
    """
    target = Path(path)
    inputs = list(inputs)
    parent = check_output(target, force, kind="artifact", inputs=inputs)
    with _temporary(target, parent, directory=True) as tmp:
        try:
            yield tmp
            os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; give normal permissions
            check_output(target, force, kind="artifact", inputs=inputs)
            _install(tmp, target)
        except OSError as exc:
            raise _write_error(target, exc) from None


@contextlib.contextmanager
def staged_output(path: str | os.PathLike, force: bool, *, kind: OutputKind,
                  inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh path (inside a hidden staging directory beside ``path``) to write the
    output of ``kind`` to, with any writer; when the block ends without error it is moved to
    ``path`` atomically (replacing an existing output only as :func:`check_output` allows).

    This lets a caller check what it wrote before it becomes visible: raising inside the block
    discards the staged output and leaves an existing ``path`` untouched.
    """
    target = Path(path)
    inputs = list(inputs)
    parent = check_output(target, force, kind=kind, inputs=inputs)
    with _temporary(target, parent, directory=True) as staging:
        try:
            staged = staging / target.name
            yield staged
            wrote_kind = staged.is_dir() if kind == "artifact" else staged.is_file()
            if not wrote_kind:
                raise OutputError(f"cannot write '{target}': the writer produced no "
                                  f"{'directory' if kind == 'artifact' else 'file'}")
            check_output(target, force, kind=kind, inputs=inputs)
            _install(staged, target)
        except OSError as exc:
            raise _write_error(target, exc) from None
