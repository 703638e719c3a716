"""Canonicalization: remove ops that do nothing at inference time."""

from __future__ import annotations

from dataclasses import dataclass

from optc.ir.cleanup import canonicalize, eliminate_dead_code
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["Canonicalize"]


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Remove inference-time no-ops: eval dropout, aliases and dtype-metadata assertions.

    Rewrites: ``aten.dropout(x, p, train=False)``, ``aten.alias``/``detach``/``detach_`` -> ``x``
    (an in-place ``detach_`` on a view, which torch refuses to run, only drops autograd history);
    deletes ``aten._assert_tensor_metadata`` (its facts are in the IR types); then runs DCE on
    nodes. Guarantees: outputs are unchanged; idempotent.
    """

    name = "canonicalize"

    def run(self, module: Module) -> PassResult:
        stats = canonicalize(module)
        dce = eliminate_dead_code(module, keep_params=True)
        stats["nodes_removed"] = dce["nodes"]
        return PassResult(any(stats.values()), stats)
