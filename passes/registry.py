"""The pass registry: pass classes by their kebab-case names.

Passes are discovered: every module directly in the :mod:`optc.passes` package and every plugin
(:mod:`optc.ir.plugins`) is imported on the first lookup, and the ``@register_pass`` classes
they define are the registry."""

from __future__ import annotations

import importlib
import pkgutil
import re

from optc.errors import PipelineSpecError
from optc.ir.plugins import load_plugins
from optc.passes.base import Pass

__all__ = ["register_pass", "get_pass", "all_passes"]

_PASSES: dict[str, type[Pass]] = {}
_KEBAB = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")
_builtins_loaded = False


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PipelineSpecError(f"register_pass decorates a Pass subclass (a frozen dataclass "
                                f"with a kebab-case name), got {cls!r:.60}")
    if not _KEBAB.match(cls.name or ""):
        raise PipelineSpecError(f"pass {cls.__qualname__} needs a kebab-case name, got "
                                f"{cls.name!r}")
    params = cls.__dict__.get("__dataclass_params__")
    if params is None or not params.frozen:
        raise PipelineSpecError(f"pass {cls.__qualname__} must be a frozen dataclass "
                                "(@dataclass(frozen=True))")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls:
        raise PipelineSpecError(f"pass name {cls.name!r} is taken by {existing.__qualname__}")
    _PASSES[cls.name] = cls
    return cls


def _load_builtins() -> None:
    """Import every module of the :mod:`optc.passes` package (a pass is one file there: no
    list to edit), then the plugins (:mod:`optc.ir.plugins`). Its sub-packages are not
    scanned: they hold what passes share (:mod:`optc.passes.support`), not passes."""
    global _builtins_loaded
    if not _builtins_loaded:
        import optc.passes

        for info in pkgutil.iter_modules(optc.passes.__path__):
            if not info.ispkg:
                importlib.import_module(f"optc.passes.{info.name}")
        _builtins_loaded = True
    load_plugins()


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name, sorted."""
    _load_builtins()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class called ``name``; :class:`PipelineSpecError` listing valid names if none."""
    passes = all_passes()
    try:
        return passes[name]
    except KeyError:
        raise PipelineSpecError(
            f"unknown pass '{name}'; valid passes: {', '.join(passes)}"
        ) from None
