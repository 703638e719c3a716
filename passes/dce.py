"""Dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from optc.ir.core import Module
from optc.ir.targets import is_impure
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["DeadCodeElimination", "eliminate_dead_code"]


def eliminate_dead_code(module: Module, keep_params: bool = False) -> dict[str, int]:
    """Remove unused pure nodes and (unless ``keep_params``) unused parameters.

    Returns counts: ``nodes``, ``params`` and ``param_elements`` removed.
    """
    graph = module.graph
    live_outputs = {id(v) for v in graph.outputs.values()}
    dead = []
    # Walking backwards, a node is dead when none of its outputs is used by a live node.
    dead_set: set = set()
    for node in reversed(graph.nodes):
        if is_impure(node.op):
            continue
        used = False
        for out in node.outputs:
            if id(out) in live_outputs or any(u not in dead_set for u in out.users()):
                used = True
                break
        if not used:
            dead.append(node)
            dead_set.add(node)
    if dead:
        graph.remove_many(dead)
    removed_params = 0
    removed_elements = 0
    if not keep_params:
        for name, param in list(module.params.items()):
            if not param.users() and not graph.is_output(param):
                removed_params += 1
                removed_elements += param.data.numel()
                module.remove_param(name)
    return {"nodes": len(dead), "params": removed_params, "param_elements": removed_elements}


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
