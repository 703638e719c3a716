"""Raising to high-level ops as a pass: what was raised, and why the rest was not."""

from __future__ import annotations

from dataclasses import dataclass

from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import assign_layer_ids
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["RaiseOps"]


@register_pass
@dataclass(frozen=True)
class RaiseOps(Pass):
    """Rewrite ATen patterns into high-level ops (attention, linear, layer_norm, ...).

    Rewrites: every pattern a raising rule matches (see :mod:`optc.frontends.raising`), then
    removes what became dead and gives new transformer layers their stable ids.
    Reports: ops raised by kind, and for every attention/FFN candidate left alone the reason
    the rule gave (``misses``), so "why are my layers not found?" has an answer.
    Guarantees: outputs unchanged (kernels compute what the patterns computed); running it
    twice is a no-op the second time. ``optc`` runs it at capture.
    """

    name = "raise-ops"

    max_misses: int = 20
    """How many reasons to list in the stats (all are counted)."""

    def run(self, module: Module) -> PassResult:
        report = raise_high_level_ops(module)
        dce = eliminate_dead_code(module, keep_params=True)
        new_ids = assign_layer_ids(module)
        raised = sum(report.raised.values())
        stats: dict[str, object] = {
            "raised": ", ".join(f"{op}={n}" for op, n in sorted(report.raised.items())) or "-",
            "missed": len(report.misses),
            "layers_identified": new_ids,
            "nodes_removed": dce["nodes"],
        }
        if report.misses:
            stats["misses"] = "; ".join(report.misses[: self.max_misses])
        return PassResult(raised > 0 or dce["nodes"] > 0 or new_ids > 0, stats)
