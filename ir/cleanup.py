"""Graph cleanups every layer needs: dead-code elimination and canonicalization.

They live in the IR (not in passes/) because capture, the backends and the passes all run
them; the ``dce`` and ``canonicalize`` passes wrap these functions.
"""

from __future__ import annotations

from optc.errors import IRError
from optc.ir.core import Module, Node, Value
from optc.ir.targets import is_impure, resolve

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


def _functional_twin(module: Module, node: Node) -> str | None:
    """The out-of-place op of an in-place ``node`` (``aten.add_.Tensor`` -> ``aten.add.Tensor``)
    when the mutation is invisible: the mutated operand is an intermediate result (no input,
    parameter or output) that nothing but this node reads, once. Else None."""
    parts = node.op.split(".")
    if len(parts) != 3 or parts[0] != "aten" or not is_impure(node.op) or len(node.outputs) != 1:
        return None
    target = node.args[0] if node.args else None
    if not isinstance(target, Value) or target.producer is None or module.graph.is_output(target):
        return None
    if target.users() != [node] or sum(a is target for a in node.args) != 1 or \
            any(v is target for v in node.kwargs.values()) or target.type != node.outputs[0].type:
        return None
    if not _fresh(target.producer.op):  # a view of another tensor: the mutation reaches it
        return None
    twin = f"aten.{parts[1][:-1]}.{parts[2]}"
    try:
        resolve(twin)
    except IRError:
        return None
    return twin


def _fresh(op: str) -> bool:
    """Whether ``op`` returns new memory, never a view of an operand: ATen ops whose schema
    marks no alias on their results, and optc's high-level ops (their kernels compute new
    tensors). Python ops (``getitem`` of a split) and aliasing ATen ops are not."""
    if not op.startswith("aten."):
        return not op.startswith("py.")
    try:
        schema = getattr(resolve(op), "_schema", None)
    except IRError:
        return False
    return schema is not None and all(r.alias_info is None for r in schema.returns)


def canonicalize(module: Module) -> dict[str, int]:
    """Bypass identity ops (eval-mode dropout, aliases), drop metadata assertions, and make
    in-place ops whose mutation nothing else can see out-of-place (``x.add_(b)`` on a temporary
    ``x`` becomes ``add(x, b)``), so that they are pure: DCE can remove them and raising rules
    match them like any other op."""
    graph = module.graph
    bypassed = asserts = functionalized = 0
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
            continue
        twin = _functional_twin(module, node)
        if twin is not None:
            new = graph.create_node(twin, node.args, dict(node.kwargs), [node.outputs[0].type],
                                    before=node)
            new.loc = node.loc
            graph.replace_all_uses(node.outputs[0], new.outputs[0])
            graph.remove(node)
            functionalized += 1
    return {"identities_removed": bypassed, "asserts_removed": asserts,
            "inplace_functionalized": functionalized}
