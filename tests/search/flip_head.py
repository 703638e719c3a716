"""A test pass for search rounds: a "refit" that makes the task head confidently wrong.

Imported (never collected) by the tests that use it, by one module name, so it is registered
once."""

from __future__ import annotations

from dataclasses import dataclass

from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["FlipHead"]


@register_pass
@dataclass(frozen=True)
class FlipHead(Pass):
    """Test pass: negates the task head's weights and scales them up (confident, and wrong
    wherever the head was right)."""

    name = "test-flip-head"

    def run(self, module):
        for name, param in module.params.items():
            if name.startswith("classifier") and name.endswith("weight"):
                param.data = -50.0 * param.data
        return PassResult(True)
