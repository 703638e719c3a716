"""Graph cleanups every layer needs: dead-code elimination and canonicalization.

They live in the IR (not in passes/) because capture, the backends and the passes all run
them; the ``dce`` and ``canonicalize`` passes wrap these functions.
"""

from __future__ import annotations

from optc.ir.core import Module, Node, Value
from optc.ir.targets import is_impure

__all__ = ["eliminate_dead_code", "canonicalize"]


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


_ALIASES = ("aten.alias.default", "aten.detach.default", "aten.detach_.default",
            "aten.lift_fresh_copy.default")


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
