"""Structural edits of the IR: slicing heads and neurons out, bypassing blocks.

The structural passes (drop-layers, prune-heads, prune-neurons, ...) make them, and so does the
search when it commits a configuration physically (:mod:`optc.search.candidates`), so they
live in the IR below both, next to the analysis that finds the blocks.

Every edit keeps the module verifiable: parameters are replaced (never edited in place), the
types of the nodes whose shapes change are updated, and attributes follow the weights.
Callers find what to edit with :func:`optc.ir.analysis.analyze`, never by parameter names.
"""

from __future__ import annotations

import dataclasses

import torch

from optc.errors import PassError
from optc.ir.analysis import AttentionBlock, FFNBlock, set_unit_ids
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Node, Parameter, Value
from optc.ir.types import TensorType

__all__ = ["slice_param", "slice_conflict", "set_last_dim", "remove_heads", "remove_neurons",
           "bypass_block"]


def slice_param(module: Module, node: Node, arg: int, dim: int, index: list[int],
                also: tuple[Node, ...] = ()) -> None:
    """Make argument ``arg`` of ``node`` (a parameter) keep only ``index`` along ``dim``.

    A parameter read by this node alone is replaced in place; a shared one (tied weights) is
    copied into a new parameter for this node so the other readers keep the full tensor.
    ``also``: other nodes that take the same slice of the parameter when they read it at
    ``arg`` too (DeBERTa's position projections reuse the query/key weights); they stay
    sharing one parameter, sliced in place when nobody else reads it.
    Typed attributes follow: an unstructured sparsity's density is updated, an N:M or block
    pattern that the slice would cut through is refused (:class:`PassError`: prune before
    sparsifying), and an int8 weight's per-row scales are sliced with its rows.
    """
    param = node.args[arg]
    if not isinstance(param, Parameter):
        raise PassError(f"argument {arg} of {node!r} is computed, not a parameter, so it cannot "
                        "be sliced")
    data = param.data.index_select(dim, torch.tensor(index, dtype=torch.long)).contiguous()
    attrs = _sliced_attrs(param, data, dim)
    readers = [node] + [n for n in also if n is not node and n.arg(arg) is param]
    scales = [n.arg(3) for n in readers]
    if set(param.users()) == set(readers) and param.num_uses == len(readers) and \
            not module.graph.is_output(param):
        param.data = data
        param.attrs = attrs
    else:
        fresh = module.add_param(module.unique_param_name(param.name), data)
        fresh.attrs = attrs
        for reader in readers:
            args = list(reader.args)
            args[arg] = fresh
            reader.args = tuple(args)
    scale = scales[0]
    if node.op == "linear" and arg == 1 and dim == 0 and isinstance(scale, Parameter):
        # int8 weight: its per-row scales go with it
        slice_param(module, node, 3, 0, index,
                    tuple(n for n, s in zip(readers[1:], scales[1:], strict=True) if s is scale))


def _cuts(param: Parameter, dim: int) -> str | None:
    """Why slicing ``param`` along ``dim`` would break its declared sparsity pattern."""
    sparsity = param.attrs.get("sparsity")
    if not isinstance(sparsity, Sparsity):
        return None
    cut = {"n:m": dim == param.data.dim() - 1,
           "block": sparsity.block is not None and sparsity.block[dim] != 1}.get(sparsity.pattern, False)
    if not cut:
        return None
    return (f"@{param.name} is {sparsity.pattern} sparse; removing heads or neurons slices it "
            f"along dim {dim} and would break the pattern: run structural passes before sparsify")


def slice_conflict(block: AttentionBlock | FFNBlock) -> str | None:
    """Why removing units from ``block`` would break a weight's sparsity pattern (checked
    before any edit, so a refusing pass leaves the module unchanged), or None."""
    if isinstance(block, AttentionBlock):
        pairs = [(block.query, 0), (block.key, 0), (block.value, 0), (block.output, 1),
                 (block.pos_query, 0), (block.pos_key, 0)]
    else:
        pairs = [(block.up, 0), (block.gated, 0), (block.down, 1)]
    for node, dim in pairs:
        weight = node.arg(1) if node is not None else None
        if isinstance(weight, Parameter):
            reason = _cuts(weight, dim)
            if reason:
                return reason
    return None


def _sliced_attrs(param: Parameter, data: torch.Tensor, dim: int) -> dict:
    attrs = dict(param.attrs)
    sparsity = attrs.get("sparsity")
    if isinstance(sparsity, Sparsity):
        reason = _cuts(param, dim)
        if reason:
            raise PassError(reason)
        found = float((data != 0).float().mean()) if data.numel() else 0.0
        if sparsity.pattern == "unstructured" and found > sparsity.density:
            attrs["sparsity"] = dataclasses.replace(sparsity, density=round(found + 5e-7, 6))
    return attrs
def set_last_dim(value: Value, size: int) -> None:
    """Set the last dimension of a tensor value's type."""
    t = value.tensor_type
    value.type = TensorType(t.dtype, t.shape[:-1] + (size,))


def _rows(heads: list[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def remove_heads(module: Module, block: AttentionBlock, heads: set[int]) -> None:
    """Remove query ``heads`` from an attention block (run DCE afterwards to drop dead weights).

    With grouped-query attention, a kv head whose query heads all go is removed too (its key
    and value rows); the others keep serving the query heads that remain (``kv_heads``).
    Removing every head removes the block: its result is replaced by the output projection's
    bias (what a head-less attention contributes), or the residual passes through unchanged.
    """
    reason = block.prunable
    if reason:
        raise PassError(f"cannot remove heads from {block.node!r}: {reason}")
    keep = [h for h in range(block.num_heads) if h not in heads]
    ids = block.head_ids
    if not keep:
        _replace_by_bias(module, block.output, block)
        return
    grouped = block.grouped
    kv_of = block.kv_heads
    kv_keep = sorted({kv_of[h] for h in keep})
    rows = _rows(keep, block.head_dim)
    kv_rows = _rows(kv_keep, block.head_dim) if grouped else rows
    positional = {id(block.query): block.pos_query, id(block.key): block.pos_key}
    for lin, chain, index in zip((block.query, block.key, block.value), block.head_ops,
                                 (rows, kv_rows, kv_rows), strict=True):
        pos = positional.get(id(lin))
        for arg in (1, 2):
            if pos is not None and isinstance(pos.arg(arg), Parameter) and pos.arg(arg) is not lin.arg(arg):
                slice_param(module, pos, arg, 0, index)  # its own weights (share_att_key=False)
            if arg == 1 or isinstance(lin.arg(arg), Parameter):
                slice_param(module, lin, arg, 0, index, also=(pos,) if pos is not None else ())
        for out in (lin.outputs[0], *(op.outputs[0] for op in chain), pos.outputs[0] if pos else None):
            if out is not None:
                set_last_dim(out, len(index))
    slice_param(module, block.output, 1, 1, rows)
    if block.position is not None:  # DeBERTa: the position bias computes the kept heads only
        block.position.set_attr("num_heads", len(keep))
        t = block.position.outputs[0].tensor_type
        block.position.outputs[0].type = TensorType(t.dtype, (t.shape[0], len(keep), *t.shape[2:]))
    else:
        _slice_head_mask(module, block, keep)
    block.node.set_attr("num_heads", len(keep))
    if grouped:
        new_map = [kv_keep.index(kv_of[h]) for h in keep]
        block.node.set_attr("num_kv_heads", len(kv_keep))
        group = len(keep) // len(kv_keep)
        regular = len(keep) % len(kv_keep) == 0 and new_map == [h // group for h in range(len(keep))]
        block.node.set_attr("kv_heads", None if regular else new_map)
        if regular:
            kwargs = block.node.kwargs
            kwargs.pop("kv_heads", None)
            block.node.kwargs = kwargs
    set_unit_ids(block.node, "head_ids", [ids[h] for h in keep], len(keep))
    set_last_dim(block.node.outputs[0], len(rows))


def _slice_head_mask(module: Module, block: AttentionBlock, keep: list[int]) -> None:
    """A per-head mask ([batch|1, heads, q, k], e.g. T5's relative position bias) keeps the
    planes of the heads that remain: slices of consecutive heads, concatenated."""
    mask = block.node.arg(3)
    if not isinstance(mask, Value) or not isinstance(mask.type, TensorType):
        return
    t = mask.tensor_type
    if t.rank != 4 or t.shape[1] != block.num_heads or block.num_heads == 1:
        return
    runs: list[list[int]] = []
    for h in keep:
        if runs and runs[-1][1] == h:
            runs[-1][1] = h + 1
        else:
            runs.append([h, h + 1])
    pieces = []
    for start, end in runs:
        node = module.graph.create_node(
            "aten.slice.Tensor", (mask, 1, start, end), {},
            [TensorType(t.dtype, (t.shape[0], end - start, *t.shape[2:]))], names="head_mask",
            before=block.node)
        pieces.append(node.outputs[0])
    value = pieces[0]
    if len(pieces) > 1:
        cat = module.graph.create_node("aten.cat.default", (pieces, 1), {},
                                       [TensorType(t.dtype, (t.shape[0], len(keep), *t.shape[2:]))],
                                       names="head_mask", before=block.node)
        value = cat.outputs[0]
    block.node.args = (*block.node.args[:3], value, *block.node.args[4:])


def remove_neurons(module: Module, block: FFNBlock, neurons: set[int]) -> None:
    """Remove intermediate ``neurons`` from an FFN block (run DCE afterwards).

    Removing every neuron removes the block (its result becomes the down projection's bias).
    """
    keep = [i for i in range(block.width) if i not in neurons]
    if not keep:
        _replace_by_bias(module, block.down, block)
        return
    ids = block.neuron_ids
    for lin in (block.up, block.gated):
        if lin is None:
            continue
        slice_param(module, lin, 1, 0, keep)
        if isinstance(lin.arg(2), Parameter):
            slice_param(module, lin, 2, 0, keep)
        set_last_dim(lin.outputs[0], len(keep))
    set_unit_ids(block.up, "unit_ids", [ids[i] for i in keep], len(keep))
    for node in block.pointwise or (block.activation,):
        set_last_dim(node.outputs[0], len(keep))
    if block.product is not None:
        set_last_dim(block.product.outputs[0], len(keep))
    slice_param(module, block.down, 1, 1, keep)


def _replace_by_bias(module: Module, projection: Node, block: AttentionBlock | FFNBlock) -> None:
    """A block whose inner width is zero outputs its last projection's bias (or nothing)."""
    bias = projection.arg(2)
    if block.branch_norms and (isinstance(bias, Parameter) or
                               any(n.op != "rms_norm" for n in block.branch_norms)):
        raise PassError(  # x + norm(bias) is not x + bias; only an RMS norm maps 0 to 0
            f"cannot remove every head/neuron: the block's result goes through "
            f"{block.branch_norms[0]!r} before its residual add, and that norm of "
            f"{'its bias' if isinstance(bias, Parameter) else 'zero'} is not zero; keep one unit "
            "or drop the whole block (drop-layers)")
    if block.branch_norms and block.residual is not None and block.stream_in is not None:
        module.graph.replace_all_uses(block.residual.outputs[0], block.stream_in)  # x + rms(0)
    elif isinstance(bias, Parameter) and block.residual is not None:
        branch = block.branch if block.branch is not None else projection.outputs[0]
        module.graph.replace_all_uses(branch, bias)  # x + bias broadcasts
    elif block.residual is not None and block.stream_in is not None:
        module.graph.replace_all_uses(block.residual.outputs[0], block.stream_in)
    else:
        raise PassError(
            "cannot remove every head/neuron: the block's residual add was not found, so there "
            "is nothing to pass through instead"
        )


def bypass_block(module: Module, block: AttentionBlock | FFNBlock) -> None:
    """Remove a whole block (sublayer, residual add and post-norm): its input passes through."""
    if block.stream_in is None or block.stream_out is None:
        raise PassError("the block's residual stream was not found, so it cannot be bypassed")
    module.graph.replace_all_uses(block.stream_out, block.stream_in)
