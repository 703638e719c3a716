"""Attention-head elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optc.errors import PipelineSpecError
from optc.ir.analysis import AttentionBlock, Structure, analyze
from optc.ir.core import Module
from optc.ir.surgery import remove_heads
from optc.passes.base import Pass, PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.registry import register_pass
from optc.passes.support.calibration import CalibrationOptions
from optc.passes.support.importance import head_magnitude
from optc.passes.support.selection import (
    BlockKey,
    check_unit_options,
    choose_units,
    layer_positions,
    remove_units,
    unit_positions,
    units_requirement,
)

__all__ = ["PruneHeads"]


@register_pass
@dataclass(frozen=True)
class PruneHeads(CalibrationOptions, Pass):
    """Remove attention heads, physically slicing their weights.

    Rewrites: for each removed head, its query/key/value rows (and biases) and its
    output-projection columns are sliced away and the attention's ``num_heads`` drops; a layer
    left without heads loses its attention block (its output becomes the projection bias).
    Grouped-query attention: heads are query heads; a kv head goes (its key/value rows) when
    the last query head of its group goes, and ``kv_heads`` records uneven groups.
    Cross-attention (a decoder layer of an encoder-decoder, BART): its heads are units of
    their own, apart from the layer's self-attention heads: ``cross_heads=layer:head,...``
    names them (q rows and output columns; k/v rows, which read the encoder output), with
    their own stable ids (``ids=true``); ``heads=`` always means self-attention heads.
    Choose heads explicitly (``heads=layer:head,...``, indices as they are before this pass;
    ``kv_groups=layer:kv,...`` adds every query head of those kv heads; ``cross_heads=``) or
    by ``amount`` (fraction, global across blocks unless ``per_layer``) and ``criterion``
    (``magnitude``: weight norm; ``taylor``: gate-gradient importance on calibration data);
    ``blocks`` says which heads ``amount`` ranks: ``self``, ``cross`` or ``all`` (default:
    self- and cross-attention heads in one ranking, each block's scores normalized by their
    norm; ``per_layer`` takes the fraction of each block).
    Refuses: a head or layer that does not exist, cross heads on a layer (or a model) without
    cross-attention, an amount outside [0, 1], both or neither of heads/amount, ``blocks``
    without ``amount``, blocks whose projections are not separate linears, weights shared
    with other layers.
    Guarantees: removing heads whose weights are zero leaves outputs unchanged.
    Note: a layer that loses both its heads and its neurons is no longer counted as a layer by
    the structure analysis (its biases and norms remain), so later layer indices shift.
    """

    name = "prune-heads"

    heads: tuple[tuple[int, int], ...] = ()
    """Explicit self-attention heads to remove, as layer:head pairs."""
    kv_groups: tuple[tuple[int, int], ...] = ()
    """Grouped-query attention: kv heads to remove with every query head of their group, as
    layer:kv pairs (kv heads by current position; the layer as ``heads`` reads it)."""
    cross_heads: tuple[tuple[int, int], ...] = ()
    """Encoder-decoders (BART): cross-attention heads to remove, as layer:head pairs; units of
    their own, apart from the self-attention heads ``heads`` names (same layer numbering;
    with ids=true, the cross-attention's own head ids)."""
    ids: bool = False
    """Read ``heads`` and ``cross_heads`` as stable ids (layer and head indices in the
    captured model), not current positions."""
    amount: float | None = None
    """Fraction of heads to remove (0..1)."""
    blocks: Literal["self", "cross", "all"] = "all"
    """Which heads amount ranks: self (self-attention), cross (encoder-decoders'
    cross-attention) or all (one ranking over both, each block's scores normalized)."""
    per_layer: bool = False
    """Apply amount within each attention block instead of globally."""
    criterion: Literal["magnitude", "taylor"] = "magnitude"
    """How amount ranks heads: weight magnitude, or Taylor importance on data."""
    samples: int = 64
    """Calibration examples to read (criterion=taylor; the other calibration options are
    :class:`~optc.passes.support.calibration.CalibrationOptions`)."""

    def __post_init__(self) -> None:
        check_unit_options(self, self.heads + self.kv_groups + self.cross_heads, "head")
        if self.blocks != "all" and self.amount is None:
            raise PipelineSpecError(
                f"prune-heads blocks={self.blocks} chooses which heads amount=F ranks; explicit "
                "heads say their block themselves (heads=layer:head for self-attention, "
                "cross_heads=layer:head for cross-attention)")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.amount is not None and self.criterion == "taylor"

    def requires(self, module: Module) -> str | None:
        structure = analyze(module)
        crossed = [layer.index for layer in structure.layers if layer.cross_attention is not None]
        if (self.cross_heads or self.blocks == "cross") and structure.layers and not crossed:
            asked = "cross_heads=" if self.cross_heads else "blocks=cross"
            return (f"{asked} names cross-attention heads, but the model has no cross-attention "
                    "(only an encoder-decoder's decoder layers have one); name self-attention "
                    "heads with heads=layer:head, or rank them with amount=F")
        return units_requirement(self, structure, self._explicit(structure), lambda layer: None,
                                 "cross-attention" if self.blocks == "cross" else "attention",
                                 blocks=self._candidates(structure, prunable_only=False))

    def _candidates(self, structure: Structure, prunable_only: bool = True) -> dict[BlockKey, AttentionBlock]:
        """The attention blocks ``amount`` ranks (explicit heads may name any block)."""
        blocks: dict[BlockKey, AttentionBlock] = {}
        for layer in structure.layers:
            for key, block, kind in ((layer.index, layer.attention, "self"),
                                     ((layer.index, "cross"), layer.cross_attention, "cross")):
                if block is None or (prunable_only and block.prunable is not None):
                    continue
                if self.amount is None or self.blocks in (kind, "all"):
                    blocks[key] = block
        return blocks

    def _explicit(self, structure: Structure) -> tuple[list[tuple[BlockKey, int]], str | None]:
        chosen, missing = unit_positions(structure, self.heads, self.ids, lambda b: b.head_ids,
                                         lambda layer: layer.attention, "head")
        if missing:
            return list(chosen), missing
        for layer_ref, kv in self.kv_groups:
            positions, missing = layer_positions(structure, (layer_ref,), self.ids)
            if missing:
                return chosen, missing
            block = structure.layers[positions[0]].attention
            if block is None:
                return chosen, f"layer {layer_ref} has no attention block"
            if kv >= block.num_kv_heads:
                return chosen, (f"kv head {layer_ref}:{kv} does not exist; layer {layer_ref} has "
                                f"{block.num_kv_heads} kv heads")
            chosen += [(positions[0], h) for h in block.kv_group(kv) if (positions[0], h) not in chosen]
        cross, missing = unit_positions(structure, self.cross_heads, self.ids, lambda b: b.head_ids,
                                        lambda layer: layer.cross_attention, "cross-attention head",
                                        block_name="cross-attention")
        result: list[tuple[BlockKey, int]] = list(chosen) + [((i, "cross"), h) for i, h in cross]
        if missing:
            have = [str(x.id if self.ids else x.index) for x in structure.layers if x.cross_attention]
            missing += f" (layers with cross-attention: {', '.join(have) or 'none'})" \
                if "has no cross-attention" in missing else ""
        return result, missing

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        structure = analyze(module)
        blocks = self._candidates(structure)
        explicit, _ = self._explicit(structure)
        for key, _ in explicit:  # explicit heads are refused (requires) on unprunable blocks
            i = key if isinstance(key, int) else key[0]
            layer = structure.layers[i]
            blocks.setdefault(key, layer.attention if isinstance(key, int) else layer.cross_attention)
        chosen = choose_units(self, ctx, module, structure, blocks, tuple(explicit), head_magnitude,
                              heads=True)
        done = remove_units(module, blocks, chosen, remove_heads, lambda b: b.num_heads)
        after = analyze(module).layers
        heads_left = [layer.attention.num_heads if layer.attention else 0 for layer in after]
        emptied = done["emptied"].split(",") if done["emptied"] != "-" else []
        stats = {
            "heads_removed": done["removed"],
            "heads_per_layer": ",".join(map(str, heads_left)),
            "layer_ids": ",".join(str(layer.id) for layer in after),
            "attention_blocks_removed": ",".join(e for e in emptied if "." not in e) or "-",
            "params_removed": done["params_removed"],
            "nodes_removed": done["nodes_removed"],
        }
        if any(layer.cross_attention is not None for layer in structure.layers):
            cross_removed = sum(len(units) for key, units in chosen.items() if not isinstance(key, int))
            stats["cross_heads_removed"] = cross_removed
            stats["cross_heads_per_layer"] = ",".join(
                str(layer.cross_attention.num_heads) if layer.cross_attention else "-" for layer in after)
            stats["cross_attention_blocks_removed"] = ",".join(
                e.split(".")[0] for e in emptied if "." in e) or "-"
        return PassResult(done["removed"] > 0, stats)
