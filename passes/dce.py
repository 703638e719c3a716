"""Dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["DeadCodeElimination"]


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose results are unused and parameters no node reads.

    Rewrites: deletes pure nodes none of whose outputs reaches a graph output or an impure
    node; then deletes unreferenced parameters (and their weights).
    Refuses: nothing. Keeps impure nodes (assertions, in-place ops) and everything they read.
    Guarantees: outputs are unchanged; running it twice is a no-op the second time.
    """

    name = "dce"

    keep_params: bool = False
    """Keep unreferenced parameters (only remove nodes)."""

    def run(self, module: Module) -> PassResult:
        stats = eliminate_dead_code(module, keep_params=self.keep_params)
        modified = stats["nodes"] > 0 or stats["params"] > 0
        return PassResult(modified, {
            "nodes_removed": stats["nodes"],
            "params_removed": stats["params"],
            "param_elements_removed": stats["param_elements"],
        })
