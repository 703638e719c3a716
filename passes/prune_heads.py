"""Attention-head elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optc.ir.analysis import Structure, analyze
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.importance import head_magnitude
from optc.passes.registry import register_pass
from optc.passes.selection import (
    check_unit_options,
    choose_units,
    layer_positions,
    remove_units,
    unit_positions,
    units_requirement,
)
from optc.passes.structural import remove_heads

__all__ = ["PruneHeads"]


@register_pass
@dataclass(frozen=True)
class PruneHeads(Pass):
    """Remove attention heads, physically slicing their weights.

    Rewrites: for each removed head, its query/key/value rows (and biases) and its
    output-projection columns are sliced away and the attention's ``num_heads`` drops; a layer
    left without heads loses its attention block (its output becomes the projection bias).
    Grouped-query attention: heads are query heads; a kv head goes (its key/value rows) when
    the last query head of its group goes, and ``kv_heads`` records uneven groups.
    Choose heads explicitly (``heads=layer:head,...``, indices as they are before this pass;
    ``kv_groups=layer:kv,...`` adds every query head of those kv heads) or
    by ``amount`` (fraction, global across layers unless ``per_layer``) and ``criterion``
    (``magnitude``: weight norm; ``taylor``: gate-gradient importance on calibration data).
    Refuses: a head or layer that does not exist, an amount outside [0, 1], both or neither of
    ``heads``/``amount``, blocks whose projections are not separate linears, weights shared
    with other layers.
    Guarantees: removing heads whose weights are zero leaves outputs unchanged.
    Note: a layer that loses both its heads and its neurons is no longer counted as a layer by
    the structure analysis (its biases and norms remain), so later layer indices shift.
    """

    name = "prune-heads"

    heads: tuple[tuple[int, int], ...] = ()
    """Explicit heads to remove, as layer:head pairs."""
    kv_groups: tuple[tuple[int, int], ...] = ()
    """Grouped-query attention: kv heads to remove with every query head of their group, as
    layer:kv pairs (kv heads by current position; the layer as ``heads`` reads it)."""
    ids: bool = False
    """Read ``heads`` as stable ids (layer and head indices in the captured model), not
    current positions."""
    amount: float | None = None
    """Fraction of heads to remove (0..1)."""
    per_layer: bool = False
    """Apply amount within each layer instead of globally."""
    criterion: Literal["magnitude", "taylor"] = "magnitude"
    """How amount ranks heads: weight magnitude, or Taylor importance on data."""
    data: str | None = None
    """Calibration data for criterion=taylor (file or task directory; CLI: --data)."""
    samples: int = 64
    """Calibration examples to read."""
    batch_size: int = 16
    """Calibration batch size."""
    max_length: int = 128
    """Calibration sequence length limit."""
    tokenizer: str | None = None
    """Tokenizer directory or id (default: the one recorded with the model)."""

    def __post_init__(self) -> None:
        check_unit_options(self, self.heads + self.kv_groups, "head")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.amount is not None and self.criterion == "taylor"

    def requires(self, module: Module) -> str | None:
        structure = analyze(module)
        return units_requirement(self, structure, self._explicit(structure),
                                 lambda layer: layer.attention, "attention")

    def _explicit(self, structure: Structure) -> tuple[list[tuple[int, int]], str | None]:
        chosen, missing = unit_positions(structure, self.heads, self.ids, lambda b: b.head_ids,
                                         lambda layer: layer.attention, "head")
        if missing:
            return chosen, missing
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
        return chosen, None

    def run(self, module: Module) -> PassResult:
        structure = analyze(module)
        blocks = {layer.index: layer.attention for layer in structure.layers
                  if layer.attention is not None and layer.attention.prunable is None}
        explicit = tuple(self._explicit(structure)[0])
        chosen = choose_units(self, module, structure, blocks, explicit, head_magnitude,
                              heads=True)
        done = remove_units(module, blocks, chosen, remove_heads, lambda b: b.num_heads)
        after = analyze(module).layers
        heads_left = [layer.attention.num_heads if layer.attention else 0 for layer in after]
        return PassResult(done["removed"] > 0, {
            "heads_removed": done["removed"],
            "heads_per_layer": ",".join(map(str, heads_left)),
            "layer_ids": ",".join(str(layer.id) for layer in after),
            "attention_blocks_removed": done["emptied"],
            "params_removed": done["params_removed"],
            "nodes_removed": done["nodes_removed"],
        })
