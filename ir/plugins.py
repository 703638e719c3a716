"""Plugins: ops and passes from outside optc, found without editing optc.

A plugin is any importable module that registers ops (:func:`optc.ir.ops.register_op`) or
passes (:func:`optc.passes.register_pass`) when it is imported; one file can hold an op (its
kernels, lowerings, traits and raising rule) and another a pass. optc imports, once:

- the modules named in the ``OPTC_PLUGINS`` environment variable (comma-separated dotted
  names, importable from ``sys.path``: ``OPTC_PLUGINS=myplugin.ops,myplugin.passes``);
- the entry points of the ``optc.plugins`` group of the installed distributions (in a
  plugin's ``pyproject.toml``: ``[project.entry-points."optc.plugins"] mine = "myplugin"``;
  a package entry point imports the package, whose ``__init__`` imports its modules).

They are loaded the first time optc looks up an op or a pass by a name it does not know, or
lists them all (``optc passes``, loading an artifact that uses a plugin op in a fresh process,
a pipeline spec naming a plugin pass). A plugin that fails to import is a one-line
:class:`~optc.errors.PluginError` naming it and the error (exit code 2).
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from optc.errors import PluginError

__all__ = ["ENV", "GROUP", "load_plugins", "plugin_names"]

ENV = "OPTC_PLUGINS"
"""Environment variable naming plugin modules (comma-separated)."""
GROUP = "optc.plugins"
"""Entry-point group of installed plugin distributions."""

_loaded: set[str] = set()
_entry_points: list[str] | None = None
_seen_env: str | None = None


def plugin_names() -> list[str]:
    """The plugin modules named by :data:`ENV` and the :data:`GROUP` entry points, in that
    order, each once (the installed entry points are read once per process)."""
    global _entry_points
    if _entry_points is None:
        _entry_points = [e.value.split(":")[0].strip()
                         for e in metadata.entry_points(group=GROUP)]
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names + _entry_points))


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; return the names newly imported. Cheap
    when nothing changed since the last call (lookups of unknown names call it)."""
    global _seen_env
    env = os.environ.get(ENV, "")
    if _entry_points is not None and env == _seen_env:
        return []
    _seen_env = env
    new = []
    for name in plugin_names():
        if name in _loaded:
            continue
        _loaded.add(name)  # once, even when it fails: the error is raised here, not each lookup
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported
            raise PluginError(f"optc plugin '{name}' (from ${ENV} or the '{GROUP}' entry "
                              f"points) failed to import: {type(exc).__name__}: {exc}") from None
        new.append(name)
    return new
