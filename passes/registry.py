"""The pass registry: pass classes by their kebab-case names."""

from __future__ import annotations

import importlib
import re

from optc.errors import PipelineSpecError
from optc.passes.base import Pass

__all__ = ["register_pass", "get_pass", "all_passes"]

_PASSES: dict[str, type[Pass]] = {}
_KEBAB = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")

# Modules that define the built-in passes; imported on first lookup.
_BUILTIN_MODULES = (
    "optc.passes.dce",
    "optc.passes.canonicalize",
    "optc.passes.drop_layers",
    "optc.passes.prune_heads",
    "optc.passes.prune_neurons",
    "optc.passes.raise_ops",
    "optc.passes.finetune",
    "optc.passes.distill",
    "optc.passes.reconstruct",
    "optc.passes.sparsify",
    "optc.passes.quantize",
    "optc.passes.hard_attention",
    "optc.passes.gradual_prune",
    "optc.passes.l0_prune",
    "optc.passes.kv_cache",
)


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
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


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
