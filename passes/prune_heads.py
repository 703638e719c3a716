"""Attention-head elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from optc.errors import PipelineSpecError
from optc.ir.analysis import analyze
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.calibration import calibration_batches
from optc.passes.dce import eliminate_dead_code
from optc.passes.registry import register_pass
from optc.passes.structural import remove_heads

__all__ = ["PruneHeads", "select_lowest"]


def select_lowest(scores: dict[int, torch.Tensor], amount: float, per_layer: bool) -> dict[int, set[int]]:
    """The lowest-scoring units: ``round(amount * n)`` per layer, or of all layers together."""
    chosen: dict[int, set[int]] = {i: set() for i in scores}
    if per_layer:
        for i, s in scores.items():
            k = int(round(amount * len(s)))
            chosen[i] = set(torch.argsort(s, stable=True)[:k].tolist())
        return chosen
    flat = [(float(v), i, j) for i, s in scores.items() for j, v in enumerate(s.tolist())]
    flat.sort()
    for _, i, j in flat[: int(round(amount * len(flat)))]:
        chosen[i].add(j)
    return chosen


@register_pass
@dataclass(frozen=True)
class PruneHeads(Pass):
    """Remove attention heads, physically slicing their weights.

    Rewrites: for each removed head, its query/key/value rows (and biases) and its
    output-projection columns are sliced away and the attention's ``num_heads`` drops; a layer
    left without heads loses its attention block (its output becomes the projection bias).
    Choose heads explicitly (``heads=layer:head,...``, indices as they are before this pass) or
    by ``amount`` (fraction, global across layers unless ``per_layer``) and ``criterion``
    (``magnitude``: weight norm; ``taylor``: gate-gradient importance on calibration data).
    Refuses: a head or layer that does not exist, an amount outside [0, 1], both or neither of
    ``heads``/``amount``, blocks whose projections are not separate linears.
    Guarantees: removing heads whose weights are zero leaves outputs unchanged.
    Note: a layer that loses both its heads and its neurons is no longer counted as a layer by
    the structure analysis (its biases and norms remain), so later layer indices shift.
    """

    name = "prune-heads"

    heads: tuple[tuple[int, int], ...] = ()
    """Explicit heads to remove, as layer:head pairs."""
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
        if (self.amount is None) == (not self.heads):
            raise PipelineSpecError("prune-heads needs either heads=layer:head,... or amount=F")
        if self.amount is not None and not 0.0 <= self.amount <= 1.0:
            raise PipelineSpecError(f"prune-heads amount must be in [0, 1], got {self.amount}")
        if any(i < 0 or j < 0 for i, j in self.heads):
            raise PipelineSpecError("prune-heads layer and head indices must be >= 0")
        if self.samples < 1 or self.batch_size < 1 or self.max_length < 2:
            raise PipelineSpecError("prune-heads needs samples >= 1, batch_size >= 1, max_length >= 2")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.amount is not None and self.criterion == "taylor"

    def requires(self, module: Module) -> str | None:
        layers = analyze(module).layers
        for layer_index, head in self.heads:
            if layer_index >= len(layers):
                return f"layer {layer_index} does not exist; the model has layers 0..{len(layers) - 1}"
            att = layers[layer_index].attention
            if att is None:
                return f"layer {layer_index} has no attention block"
            if head >= att.num_heads:
                return f"head {layer_index}:{head} does not exist; layer {layer_index} has {att.num_heads} heads"
            if att.prunable:
                return f"layer {layer_index}: {att.prunable}"
        if self.amount is not None and not any(layer.attention for layer in layers):
            return "the module has no attention blocks"
        return None

    def run(self, module: Module) -> PassResult:
        structure = analyze(module)
        blocks = {layer.index: layer.attention for layer in structure.layers
                  if layer.attention is not None and layer.attention.prunable is None}
        if self.heads:
            chosen: dict[int, set[int]] = {}
            for i, h in self.heads:
                chosen.setdefault(i, set()).add(h)
        else:
            from optc.passes.importance import head_magnitude, normalize_per_layer, taylor_scores

            if self.criterion == "taylor":
                batches = calibration_batches(module, self.data, self.samples, self.batch_size,
                                              self.max_length, self.tokenizer,
                                              "prune-heads{criterion=taylor}")
                scores, _ = taylor_scores(module, batches, structure, heads=True, neurons=False)
                scores = {i: s for i, s in scores.items() if i in blocks}
            else:
                scores = {i: head_magnitude(module, b) for i, b in blocks.items()}
            chosen = select_lowest(normalize_per_layer(scores), float(self.amount), self.per_layer)
        params_before = module.num_parameters()
        removed_heads = 0
        emptied = []
        for i, heads in sorted(chosen.items()):
            if not heads:
                continue
            block = blocks[i]
            if len(heads) == block.num_heads:
                emptied.append(str(i))
            remove_heads(module, block, heads)
            removed_heads += len(heads)
        dce = eliminate_dead_code(module) if removed_heads else {"nodes": 0}
        heads_left = [layer.attention.num_heads if layer.attention else 0
                      for layer in analyze(module).layers]
        return PassResult(removed_heads > 0, {
            "heads_removed": removed_heads,
            "heads_per_layer": ",".join(map(str, heads_left)),
            "attention_blocks_removed": ",".join(emptied) or "-",
            "params_removed": params_before - module.num_parameters(),
            "nodes_removed": dce["nodes"],
        })
