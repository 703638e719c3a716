"""Choosing which heads or neurons to remove, shared by prune-heads and prune-neurons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optc.errors import PipelineSpecError
from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import AttentionBlock, Structure
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.ir.surgery import slice_conflict
from optc.passes.context import PassContext
from optc.passes.support.importance import normalize_per_layer, taylor_scores

__all__ = ["select_lowest", "check_unit_options", "choose_units", "remove_units",
           "layer_positions", "unit_positions", "units_requirement", "unraised_attention",
           "shared_layers", "block_label", "block_order", "BlockKey"]

BlockKey = int | tuple[int, str]
"""Which block of a layer holds units: the layer position (its attention or FFN), or
``(position, "cross")`` for a decoder layer's cross-attention."""


def block_order(key: BlockKey) -> tuple[int, str]:
    """Sort key of block keys: by layer, a layer's own block before its cross-attention."""
    return (key, "") if isinstance(key, int) else key


def block_label(key: BlockKey) -> str:
    """``3`` for a layer's block, ``3.cross`` for its cross-attention (stats, messages)."""
    return str(key) if isinstance(key, int) else f"{key[0]}.{key[1]}"


def layer_positions(structure: Structure, layers: tuple[int, ...], ids: bool,
                    ) -> tuple[list[int], str | None]:
    """Positions of ``layers`` (positions already, or stable ids when ``ids``), and why one
    does not exist (None when all do)."""
    positions = []
    for i in layers:
        layer = structure.by_id(i) if ids else (structure.layers[i] if i < len(structure.layers) else None)
        if layer is None:
            if ids:
                have = ", ".join(str(x.id) for x in structure.layers) or "none"
                return positions, f"there is no layer with id {i} (ids: {have})"
            return positions, f"layer {i} does not exist; the model has {structure.describe()}"
        positions.append(layer.index)
    return positions, None


def unit_positions(structure: Structure, units: tuple[tuple[int, int], ...], ids: bool,
                   unit_ids: Callable[[Any], list[int]], block: Callable[[Any], Any], what: str,
                   block_name: str | None = None) -> tuple[list[tuple[int, int]], str | None]:
    """``layer:unit`` pairs as current positions (translating stable ids when ``ids``), and
    why one does not exist (None when all do). ``block_name`` names the block in messages
    (default: attention for heads, FFN for neurons)."""
    block_name = block_name or ("attention" if what == "head" else "FFN")
    result = []
    for layer_ref, unit in units:
        positions, missing = layer_positions(structure, (layer_ref,), ids)
        if missing:
            return result, missing
        i = positions[0]
        b = block(structure.layers[i])
        name = f"layer {'id ' if ids else ''}{layer_ref}"
        if b is None:
            return result, f"{name} has no {block_name} block"
        known = unit_ids(b)
        if ids:
            if unit not in known:
                return result, f"{what} id {unit} is no longer in {name} (it has {len(known)} {what}s)"
            result.append((i, known.index(unit)))
        else:
            if unit >= len(known):
                return result, f"{what} {layer_ref}:{unit} does not exist; {name} has {len(known)} {what}s"
            result.append((i, unit))
    return result, None


def units_requirement(p: Any, structure: Structure, explicit: tuple[list[tuple[int, int]], str | None],
                      block_of: Callable[[Any], Any], kind: str,
                      blocks: dict[BlockKey, Any] | None = None) -> str | None:
    """Why prune-heads / prune-neurons cannot run: no layers, a unit that does not exist, a
    block that cannot lose units (``prunable``), a sparsity pattern the slices would break, or
    no block of ``kind`` at all for ``amount``; None when it can.

    ``explicit`` pairs and ``blocks`` are keyed by :data:`BlockKey`; ``blocks`` (the blocks
    that ``amount`` ranks) defaults to ``block_of(layer)`` of every layer.
    """
    if not structure.layers:
        return f"the module has {structure.describe()}"
    chosen, missing = explicit
    if missing:
        return missing
    if blocks is None:
        blocks = {layer.index: block_of(layer) for layer in structure.layers}
    touched = {i for i, _ in chosen} if p.amount is None else set(blocks)
    for key in sorted(touched, key=block_order):
        block = blocks.get(key)
        if block is None:
            continue
        i = key if isinstance(key, int) else key[0]
        where = f"layer {i}" if isinstance(key, int) else f"layer {i} ({key[1]}-attention)"
        shared = shared_layers(structure, i, block)
        if shared:
            return (f"{where}: its weights are shared with layer(s) {', '.join(map(str, shared))} "
                    "(tied across layers, as in ALBERT); removing units would change every layer "
                    "that shares them, so it is refused (drop-layers can remove shared layers)")
        prunable = (block.prunable if isinstance(block, AttentionBlock) and p.amount is None
                    else None)
        reason = prunable or slice_conflict(block)  # amount skips unprunable blocks itself
        if reason:
            return f"{where}: {reason}"
    if p.amount is not None and not any(blocks.values()):
        return f"the module has no {kind} blocks"
    return None


def shared_layers(structure: Structure, index: int, block: Any) -> list[int]:
    """Positions of the other layers that read any weight of ``block`` (layer ``index``)."""
    names = set(block.param_names())
    return [layer.index for layer in structure.layers
            if layer.index != index and names & set(layer.param_names())]


def unraised_attention(module: Module, structure: Structure) -> str | None:
    """Why some attention stayed ATen (so layers may have lost their attention block to the
    analysis), or None when every attention pattern was raised."""
    misses = [m for m in raise_high_level_ops(module.clone()).misses if "not raised to attention" in m]
    if not misses:
        return None
    return (f"{len(misses)} attention pattern(s) of the model were not raised (first: "
            f"{misses[0]}); the analysis sees {len(structure.layers)} layers, "
            f"{sum(1 for x in structure.layers if x.attention)} with attention")


def select_lowest(scores: dict[BlockKey, torch.Tensor], amount: float, per_layer: bool,
                  ) -> dict[BlockKey, set[int]]:
    """The lowest-scoring units: ``round(amount * n)`` per block, or of all blocks together
    (ties: earlier block, then lower unit)."""
    chosen: dict[BlockKey, set[int]] = {i: set() for i in scores}
    if per_layer:
        for i, s in scores.items():
            k = int(round(amount * len(s)))
            chosen[i] = set(torch.argsort(s, stable=True)[:k].tolist())
        return chosen
    flat = [(float(v), i, j) for i, s in scores.items() for j, v in enumerate(s.tolist())]
    flat.sort(key=lambda t: (t[0], block_order(t[1]), t[2]))
    for _, i, j in flat[: int(round(amount * len(flat)))]:
        chosen[i].add(j)
    return chosen


def check_unit_options(p: Any, explicit: tuple[tuple[int, int], ...], unit: str) -> None:
    """Validate the options prune-heads and prune-neurons share; PipelineSpecError if bad."""
    if (p.amount is None) == (not explicit):
        raise PipelineSpecError(f"{p.name} needs either {unit}s=layer:{unit},... or amount=F")
    if p.amount is not None and not 0.0 <= p.amount <= 1.0:
        raise PipelineSpecError(f"{p.name} amount must be in [0, 1], got {p.amount}")
    if any(i < 0 or j < 0 for i, j in explicit):
        raise PipelineSpecError(f"{p.name} layer and {unit} indices must be >= 0")
    p.check_calibration_options(p.name)


def choose_units(p: Any, ctx: PassContext, module: Module, structure: Structure,
                 blocks: dict[BlockKey, Any], explicit: tuple[tuple[BlockKey, int], ...], magnitude: Callable[[Module, Any], torch.Tensor],
                 heads: bool) -> dict[BlockKey, set[int]]:
    """Units to remove per block: the explicit ones, or the lowest by the pass's criterion
    among ``blocks`` (Taylor scores of cross-attention heads are keyed ``(layer, "cross")``)."""
    if explicit:
        chosen: dict[BlockKey, set[int]] = {}
        for i, j in explicit:
            chosen.setdefault(i, set()).add(j)
        return chosen
    if p.criterion == "taylor":
        batches = p.calibration(module, ctx, f"{p.name}{{criterion=taylor}}")
        head_scores, neuron_scores = taylor_scores(module, batches, structure, heads=heads,
                                                   neurons=not heads)
        scores = {i: s for i, s in (head_scores if heads else neuron_scores).items() if i in blocks}
    else:
        scores = {i: magnitude(module, b) for i, b in blocks.items()}
    return select_lowest(normalize_per_layer(scores), float(p.amount), p.per_layer)


def remove_units(module: Module, blocks: dict[BlockKey, Any], chosen: dict[BlockKey, set[int]],
                 remove: Callable[[Module, Any, set[int]], None],
                 size: Callable[[Any], int]) -> dict[str, Any]:
    """Apply ``remove`` to every block with chosen units, then DCE.

    Returns ``removed`` (units), ``emptied`` (blocks left without units, as
    :func:`block_label` writes them, comma-separated or ``-``), ``params_removed`` and
    ``nodes_removed``.
    """
    params_before = module.num_parameters()
    removed = 0
    emptied = []
    for i, units in sorted(chosen.items(), key=lambda item: block_order(item[0])):
        if not units:
            continue
        if len(units) == size(blocks[i]):
            emptied.append(block_label(i))
        remove(module, blocks[i], units)
        removed += len(units)
    dce = eliminate_dead_code(module) if removed else {"nodes": 0}
    return {
        "removed": removed,
        "emptied": ",".join(emptied) or "-",
        "params_removed": params_before - module.num_parameters(),
        "nodes_removed": dce["nodes"],
    }
