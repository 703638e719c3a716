"""Canonicalization: remove ops that do nothing at inference time."""

from __future__ import annotations

from dataclasses import dataclass

from optc.ir.core import Module, Node, Value
from optc.passes.base import Pass, PassResult
from optc.passes.dce import eliminate_dead_code
from optc.passes.registry import register_pass

__all__ = ["Canonicalize", "canonicalize"]

_ALIASES = ("aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default")


def _identity_source(node: Node) -> Value | None:
    """The value a node passes through unchanged, or None if it computes something."""
    op = node.op
    if op == "aten.dropout.default":
        train = node.arg(2, node.attr("train", True))
        p = node.arg(1, node.attr("p", 0.5))
        if train is False or p == 0:
            return node.args[0]
    elif op in _ALIASES:
        return node.args[0]
    return None


def canonicalize(module: Module) -> dict[str, int]:
    """Bypass identity ops (eval-mode dropout, aliases) and drop metadata assertions."""
    graph = module.graph
    bypassed = asserts = 0
    for node in graph:
        if node.op == "aten._assert_tensor_metadata.default":
            graph.remove(node)
            asserts += 1
            continue
        src = _identity_source(node)
        if src is not None and len(node.outputs) == 1:
            graph.replace_all_uses(node.outputs[0], src)
            graph.remove(node)
            bypassed += 1
    return {"identities_removed": bypassed, "asserts_removed": asserts}


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Remove inference-time no-ops: eval dropout, aliases and dtype-metadata assertions.

    Rewrites: ``aten.dropout(x, p, train=False)``, ``aten.alias``/``detach`` -> ``x``;
    deletes ``aten._assert_tensor_metadata`` (its facts are in the IR types); then runs DCE on
    nodes. Guarantees: outputs are unchanged; idempotent.
    """

    name = "canonicalize"

    def run(self, module: Module) -> PassResult:
        stats = canonicalize(module)
        dce = eliminate_dead_code(module, keep_params=True)
        stats["nodes_removed"] = dce["nodes"]
        return PassResult(any(stats.values()), stats)
