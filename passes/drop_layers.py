"""Layer removal (the Poor Man's BERT strategies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optc.errors import PipelineSpecError
from optc.ir.analysis import analyze
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.passes.base import Pass, PassResult
from optc.passes.calibration import calibration_batches
from optc.passes.importance import layer_similarity
from optc.passes.registry import register_pass
from optc.passes.structural import bypass_block

__all__ = ["DropLayers", "choose_layers"]

Strategy = Literal["top", "bottom", "alternate", "symmetric", "contribution"]


def choose_layers(strategy: str, count: int, num_layers: int,
                  similarity: list[float] | None = None) -> list[int]:
    """Indices of the ``count`` layers a strategy drops from ``num_layers`` layers.

    top: the last layers; bottom: the first; alternate: every other layer from the top
    (L-1, L-3, ...); symmetric: the middle layers, keeping top and bottom; contribution: the
    layers whose output is most similar to their input (``similarity``, one per layer).
    """
    if count > num_layers:
        raise ValueError(f"cannot drop {count} layers: the model has {num_layers}")
    if count == 0:
        return []
    if strategy == "top":
        return list(range(num_layers - count, num_layers))
    if strategy == "bottom":
        return list(range(count))
    if strategy == "alternate":
        candidates = list(range(num_layers - 1, -1, -2))
        if count > len(candidates):
            raise ValueError(
                f"alternate dropping removes at most {len(candidates)} of {num_layers} layers"
            )
        return sorted(candidates[:count])
    if strategy == "symmetric":
        start = (num_layers - count) // 2
        return list(range(start, start + count))
    if strategy == "contribution":
        if similarity is None or len(similarity) != num_layers:
            raise ValueError("strategy contribution needs one similarity per layer")
        ranked = sorted(range(num_layers), key=lambda i: -similarity[i])
        return sorted(ranked[:count])
    raise ValueError(f"unknown strategy {strategy!r}")


@register_pass
@dataclass(frozen=True)
class DropLayers(Pass):
    """Remove whole transformer layers, or just their attention or FFN blocks.

    Rewrites: the chosen blocks' residual-stream output is replaced by their input (so the
    block, its residual add and its post-norm disappear, as when a layer is deleted from the
    model's layer list); DCE then removes the dead code and weights.
    Refuses: both or neither of ``strategy``/``layers``; a layer that does not exist; a count
    larger than the model; ``contribution`` without calibration data.
    Guarantees: exact (outputs equal those of the model with the layers deleted); indices
    refer to the layers as they are before this pass; idempotent for explicit empty sets.
    """

    name = "drop-layers"

    strategy: Strategy | None = None
    """How to choose layers: top, bottom, alternate, symmetric or contribution."""
    count: int = 0
    """How many layers a strategy drops."""
    layers: tuple[int, ...] = ()
    """Explicit layer indices to drop (instead of a strategy)."""
    blocks: Literal["attention", "ffn", "both"] = "both"
    """Which blocks of each chosen layer to remove."""
    data: str | None = None
    """Calibration data for strategy=contribution (file or task directory; CLI: --data)."""
    samples: int = 128
    """Calibration examples to read."""
    batch_size: int = 16
    """Calibration batch size."""
    max_length: int = 128
    """Calibration sequence length limit."""
    tokenizer: str | None = None
    """Tokenizer directory or id (default: the one recorded with the model)."""

    def __post_init__(self) -> None:
        if (self.strategy is None) == (not self.layers):
            raise PipelineSpecError(
                "drop-layers needs either strategy=... with count=N, or layers=i,j,..."
            )
        if self.strategy is not None and self.count < 0:
            raise PipelineSpecError(f"drop-layers count must be >= 0, got {self.count}")
        if any(i < 0 for i in self.layers):
            raise PipelineSpecError(f"drop-layers layers must be >= 0, got {list(self.layers)}")
        if self.samples < 1 or self.batch_size < 1 or self.max_length < 2:
            raise PipelineSpecError("drop-layers needs samples >= 1, batch_size >= 1, max_length >= 2")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.strategy == "contribution" and self.count > 0

    def requires(self, module: Module) -> str | None:
        num = len(analyze(module).layers)
        if num == 0:
            return "the module has no transformer layers (attention/FFN blocks were not found)"
        bad = [i for i in self.layers if i >= num]
        if bad:
            return f"layer {bad[0]} does not exist; the model has layers 0..{num - 1}"
        if self.strategy is not None and self.count > num:
            return f"cannot drop {self.count} layers: the model has {num}"
        if self.strategy == "alternate" and self.count > (num + 1) // 2:
            return f"alternate dropping removes at most {(num + 1) // 2} of {num} layers"
        return None

    def run(self, module: Module) -> PassResult:
        structure = analyze(module)
        num = len(structure.layers)
        similarity = None
        if self.strategy == "contribution" and self.count:
            batches = calibration_batches(module, self.data, self.samples, self.batch_size,
                                          self.max_length, self.tokenizer,
                                          "drop-layers{strategy=contribution}")
            similarity = layer_similarity(module, batches, structure)
        chosen = (sorted(set(self.layers)) if self.strategy is None
                  else choose_layers(self.strategy, self.count, num, similarity))
        params_before = module.num_parameters()
        removed_blocks = 0
        # Bypass from the last block backwards: a block's stream_in is the previous block's
        # stream_out, which must still be the live value when the later block is bypassed.
        for index in reversed(chosen):
            layer = structure.layers[index]
            for kind, block in (("ffn", layer.ffn), ("attention", layer.attention)):
                if block is None or self.blocks not in (kind, "both"):
                    continue
                bypass_block(module, block)
                removed_blocks += 1
        dce = eliminate_dead_code(module) if removed_blocks else {"nodes": 0}
        stats = {
            "layers": ",".join(map(str, chosen)) or "-",
            "blocks_removed": removed_blocks,
            "nodes_removed": dce["nodes"],
            "params_removed": params_before - module.num_parameters(),
        }
        if similarity is not None:
            stats["similarity"] = ",".join(f"{s:.3f}" for s in similarity)
        return PassResult(removed_blocks > 0, stats)
