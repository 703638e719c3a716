"""optc: a compiler that specializes transformer models for their task.

    import optc
    module = optc.capture(model)                    # torch.export -> optc IR
    optc.run_pipeline(module, "dce")                # passes, verified between each
    optc.save(module, "out")                        # IR text + safetensors + metadata
    compiled = optc.load("out")                     # callable, no original class needed

The names below are imported on first use (PEP 562), so ``import optc`` and the command line
start without loading torch until they need it (and Ctrl-C during start-up ends cleanly).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "capture": "optc.frontends.capture",
    "load_model": "optc.frontends.huggingface",
    "save": "optc.backends",
    "load_module": "optc.artifacts",
    "load": "optc.backends",
    "to_eager": "optc.backends.eager",
    "Module": "optc.ir",
    "parse_module": "optc.ir",
    "print_module": "optc.ir",
    "verify": "optc.ir",
    "Pass": "optc.passes",
    "PassManager": "optc.passes",
    "PassResult": "optc.passes",
    "parse_pipeline": "optc.passes",
    "register_pass": "optc.passes",
    "run_pipeline": "optc.passes",
    "OptcError": "optc.errors",
}
"""Public name -> the module that defines it."""

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
