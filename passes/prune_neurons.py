"""FFN-neuron elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optc.ir.analysis import Structure, analyze
from optc.ir.core import Module
from optc.ir.surgery import remove_neurons
from optc.passes.base import Pass, PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.registry import register_pass
from optc.passes.support.calibration import CalibrationOptions
from optc.passes.support.importance import neuron_magnitude
from optc.passes.support.selection import (
    check_unit_options,
    choose_units,
    remove_units,
    unit_positions,
    units_requirement,
)

__all__ = ["PruneNeurons"]


@register_pass
@dataclass(frozen=True)
class PruneNeurons(CalibrationOptions, Pass):
    """Remove intermediate FFN neurons, physically slicing their weights.

    Rewrites: each removed neuron's up-projection row (and bias), its row of the second up
    projection of a gated FFN (SwiGLU/GeGLU), and its down-projection column are sliced away; a layer left without neurons loses its FFN block (its output becomes the
    down projection's bias). Choose neurons explicitly (``neurons=layer:neuron,...``) or by
    ``amount`` (fraction, global unless ``per_layer``) and ``criterion`` (``magnitude`` or
    ``taylor`` on calibration data).
    Refuses: a neuron or layer that does not exist, an amount outside [0, 1], both or neither
    of ``neurons``/``amount``, weights shared with other layers.
    Guarantees: removing neurons whose weights are zero leaves outputs unchanged.
    """

    name = "prune-neurons"

    neurons: tuple[tuple[int, int], ...] = ()
    """Explicit neurons to remove, as layer:neuron pairs."""
    ids: bool = False
    """Read ``neurons`` as stable ids (layer and neuron indices in the captured model), not
    current positions."""
    amount: float | None = None
    """Fraction of neurons to remove (0..1)."""
    per_layer: bool = False
    """Apply amount within each layer instead of globally."""
    criterion: Literal["magnitude", "taylor"] = "magnitude"
    """How amount ranks neurons: weight magnitude, or Taylor importance on data."""
    samples: int = 64
    """Calibration examples to read (criterion=taylor; the other calibration options are
    :class:`~optc.passes.support.calibration.CalibrationOptions`)."""

    def __post_init__(self) -> None:
        check_unit_options(self, self.neurons, "neuron")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.amount is not None and self.criterion == "taylor"

    def requires(self, module: Module) -> str | None:
        structure = analyze(module)
        return units_requirement(self, structure, self._explicit(structure),
                                 lambda layer: layer.ffn, "FFN")

    def _explicit(self, structure: Structure) -> tuple[list[tuple[int, int]], str | None]:
        return unit_positions(structure, self.neurons, self.ids, lambda b: b.neuron_ids,
                              lambda layer: layer.ffn, "neuron")

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        structure = analyze(module)
        blocks = {layer.index: layer.ffn for layer in structure.layers if layer.ffn is not None}
        explicit = tuple(self._explicit(structure)[0])
        chosen = choose_units(self, ctx, module, structure, blocks, explicit, neuron_magnitude,
                              heads=False)
        done = remove_units(module, blocks, chosen, remove_neurons, lambda b: b.width)
        after = analyze(module).layers
        widths = [layer.ffn.width if layer.ffn else 0 for layer in after]
        return PassResult(done["removed"] > 0, {
            "neurons_removed": done["removed"],
            "ffn_per_layer": ",".join(map(str, widths)),
            "layer_ids": ",".join(str(layer.id) for layer in after),
            "ffn_blocks_removed": done["emptied"],
            "params_removed": done["params_removed"],
            "nodes_removed": done["nodes_removed"],
        })
