"""Layer removal (the Poor Man's BERT strategies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optc.errors import PassError, PipelineSpecError
from optc.ir.analysis import Layer, analyze, describe_layers
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module, Value
from optc.ir.surgery import bypass_block
from optc.passes.base import Pass, PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.registry import register_pass
from optc.passes.support.calibration import CalibrationOptions
from optc.passes.support.importance import layer_similarity
from optc.passes.support.selection import layer_positions, unraised_attention

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
        raise PassError(f"cannot drop {count} layers: the model has {num_layers}")
    if count == 0:
        return []
    if strategy == "top":
        return list(range(num_layers - count, num_layers))
    if strategy == "bottom":
        return list(range(count))
    if strategy == "alternate":
        candidates = list(range(num_layers - 1, -1, -2))
        if count > len(candidates):
            raise PassError(
                f"alternate dropping removes at most {len(candidates)} of {num_layers} layers"
            )
        return sorted(candidates[:count])
    if strategy == "symmetric":
        start = (num_layers - count) // 2
        return list(range(start, start + count))
    if strategy == "contribution":
        if similarity is None or len(similarity) != num_layers:
            raise PassError("strategy contribution needs one similarity per layer")
        ranked = sorted(range(num_layers), key=lambda i: -similarity[i])
        return sorted(ranked[:count])
    raise PassError(f"unknown strategy {strategy!r}")


def _bias_tables(layer: Layer, weights: set[str]) -> set[str]:
    """Parameters that compute the additive bias (mask operand) of ``layer``'s attention and
    are no layer's weights: T5's relative-position table, which layer 0 owns and every
    layer's bias is computed from."""
    seen: set[int] = set()
    stack = [b.node.arg(3) for b in (layer.attention, layer.cross_attention) if b is not None]
    tables: set[str] = set()
    while stack:
        value = stack.pop()
        if not isinstance(value, Value) or id(value) in seen:
            continue
        seen.add(id(value))
        if value.is_param and value.name not in weights:
            tables.add(value.name)
        elif value.producer is not None:
            stack += value.producer.inputs
    return tables


@register_pass
@dataclass(frozen=True)
class DropLayers(CalibrationOptions, Pass):
    """Remove whole transformer layers, or just their attention or FFN blocks.

    Rewrites: the chosen blocks' residual-stream output is replaced by their input (so the
    block, its residual add and its post-norm disappear, as when a layer is deleted from the
    model's layer list); DCE then removes the dead code and weights.
    Refuses: both or neither of ``strategy``/``layers``; a strategy without ``count``; a layer
    that does not exist; a count larger than the model; ``contribution`` without calibration
    data; removing attention blocks from a model whose attention was not raised (it would
    silently drop only the FFNs: say ``blocks=ffn`` to mean that).
    Guarantees: exact (outputs equal those of the model with the layers deleted); ``layers``
    are positions before this pass, or stable layer ids with ``ids=true``.
    Shared position bias: a table that a dropped layer owns but whose bias the remaining
    layers read (T5: layer 0's relative-position table, used by every layer) is kept, and
    the stats say so (``position_bias_kept``): dropping T5's layer 0 equals the Hugging Face
    model with block 0 deleted and its ``relative_attention_bias`` moved to the new first
    block.
    """

    name = "drop-layers"

    strategy: Strategy | None = None
    """How to choose layers: top, bottom, alternate, symmetric or contribution."""
    count: int | None = None
    """How many layers a strategy drops (required with strategy)."""
    layers: tuple[int, ...] = ()
    """Explicit layers to drop (instead of a strategy): positions, or stable ids with ids=true."""
    ids: bool = False
    """Read ``layers`` as stable layer ids (indices in the captured model), not positions."""
    blocks: Literal["attention", "ffn", "both"] = "both"
    """Which blocks of each chosen layer to remove."""

    def __post_init__(self) -> None:
        if (self.strategy is None) == (not self.layers):
            raise PipelineSpecError(
                "drop-layers needs either strategy=... with count=N, or layers=i,j,..."
            )
        if self.strategy is not None and self.count is None:
            raise PipelineSpecError(
                f"drop-layers{{strategy={self.strategy}}} needs count=N (how many layers to drop)"
            )
        if self.count is not None and self.strategy is None:
            raise PipelineSpecError("drop-layers count=N goes with strategy=...; with layers=... "
                                    "leave count out")
        if self.count is not None and self.count < 0:
            raise PipelineSpecError(f"drop-layers count must be >= 0, got {self.count}")
        if any(i < 0 for i in self.layers):
            raise PipelineSpecError(f"drop-layers layers must be >= 0, got {list(self.layers)}")
        self.check_calibration_options("drop-layers")

    @property
    def uses_data(self) -> bool:
        """Whether this configuration reads calibration data (the CLI's --data fills it)."""
        return self.strategy == "contribution" and bool(self.count)

    def requires(self, module: Module) -> str | None:
        structure = analyze(module)
        num = len(structure.layers)
        if num == 0:
            return f"the module has {describe_layers(0)}"
        if self.layers:
            _, missing = layer_positions(structure, self.layers, self.ids)
            if missing is not None:
                return missing
        if self.strategy is not None and (self.count or 0) > num:
            return f"cannot drop {self.count} layers: the model has {num}"
        if self.strategy == "alternate" and (self.count or 0) > (num + 1) // 2:
            return f"alternate dropping removes at most {(num + 1) // 2} of {num} layers"
        if self.blocks != "ffn":
            missed = unraised_attention(module, structure)
            if missed:
                return (f"{missed}: dropping layers would remove only their FFN blocks; raise the "
                        "attention first, or pass blocks=ffn to drop only FFN blocks")
        return None

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        structure = analyze(module)
        num = len(structure.layers)
        similarity = None
        if self.strategy == "contribution" and self.count:
            batches = self.calibration(module, ctx, "drop-layers{strategy=contribution}")
            similarity = layer_similarity(module, batches, structure)
        chosen = (sorted(set(layer_positions(structure, self.layers, self.ids)[0]))
                  if self.strategy is None
                  else choose_layers(self.strategy, self.count or 0, num, similarity))
        params_before = module.num_parameters()
        weights = {p for layer in structure.layers for p in layer.param_names()}
        readers = [_bias_tables(layer, weights) for layer in structure.layers]
        # a table belongs to the first layer that reads it (T5 computes the bias there)
        tables = {t for i in chosen if self.blocks != "ffn" for t in readers[i]
                  if next(j for j, r in enumerate(readers) if t in r) == i}
        removed_blocks = 0
        # Bypass from the last block backwards: a block's stream_in is the previous block's
        # stream_out, which must still be the live value when the later block is bypassed.
        for index in reversed(chosen):
            layer = structure.layers[index]
            for kind, block in (("ffn", layer.ffn), ("attention", layer.cross_attention),
                                ("attention", layer.attention)):
                if block is None or self.blocks not in (kind, "both"):
                    continue
                bypass_block(module, block)
                removed_blocks += 1
        dce = eliminate_dead_code(module) if removed_blocks else {"nodes": 0}
        stats = {
            "layers": ",".join(map(str, chosen)) or "-",
            "layer_ids": ",".join(str(structure.layers[i].id) for i in chosen) or "-",
            "blocks_removed": removed_blocks,
            "nodes_removed": dce["nodes"],
            "params_removed": params_before - module.num_parameters(),
        }
        if similarity is not None:
            stats["similarity"] = ",".join(f"{s:.3f}" for s in similarity)
        kept = sorted(t for t in tables if t in module.params)
        if kept and removed_blocks:
            users = [str(layer.id) for layer in analyze(module).layers
                     if set(kept) & _bias_tables(layer, set())]
            stats["position_bias_kept"] = (
                f"{', '.join('@' + t for t in kept)} (a dropped layer's position-bias table) is "
                f"kept: layer id(s) {', '.join(users) or '-'} compute their attention bias from it")
        return PassResult(removed_blocks > 0, stats)
