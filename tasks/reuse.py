"""Reading a task's files once per command: :func:`reuse_reads`.

A command checks its data before it loads its model (a bad path, a missing column or an
unknown label then fails in a second, not after a minute of loading and capture) and reads
the same files again later, where training, a pass or evaluation needs them. Inside
``with reuse_reads():`` :meth:`Task.read <optc.tasks.task.Task.read>` parses each file once:
the examples of a file, read for a task, are kept and handed out again (a new list of the
same immutable examples) as long as the file is unchanged (same size and modification
time). Outside it nothing is kept.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["reuse_reads", "read_once"]

_READS: contextvars.ContextVar[dict[Hashable, list[Any]] | None] = contextvars.ContextVar(
    "optc_task_reads", default=None)


@contextmanager
def reuse_reads() -> Iterator[None]:
    """Within the block, each task file is parsed once (nested blocks share the outer one's
    reads; everything is dropped when the outermost block ends)."""
    if _READS.get() is not None:
        yield
        return
    token = _READS.set({})
    try:
        yield
    finally:
        _READS.reset(token)


def read_once(owner: Hashable, file: Path, read: Callable[[], list[Any]]) -> list[Any]:
    """``read()`` (the examples of ``file`` as ``owner``, e.g. a task, reads them), or a copy
    of what it gave earlier inside the same :func:`reuse_reads` block."""
    reads = _READS.get()
    if reads is None:
        return read()
    try:
        stat = file.stat()
        key: Hashable = (owner, str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        hash(key)
    except (OSError, TypeError):  # unreadable (read() says why) or an unhashable owner
        return read()
    if key not in reads:
        reads[key] = read()
    return list(reads[key])
