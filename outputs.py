"""Writing outputs safely: refuse to overwrite without ``force``, never leave partial files.

Every writer (artifacts, TorchScript and ONNX files, the CLI's early checks) goes through
:func:`check_output` and :func:`atomic_file`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optc.errors import OutputError

__all__ = ["check_output", "atomic_file", "umask_mode"]


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Raise :class:`OutputError` unless ``path`` may be written; returns its directory."""
    target = Path(path)
    if target.exists() and not force:
        raise OutputError(f"output '{target}' already exists; pass --force (force=True) to replace it")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{target}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{target}': directory '{parent}' is not writable")
    return parent


def umask_mode(mode: int) -> int:
    """``mode`` with the process umask applied (what a plainly created file would get)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_file(path: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On any failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    target = Path(path)
    parent = check_output(target, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write '{target}': {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
