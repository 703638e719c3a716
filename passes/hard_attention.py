"""Sparse hard attention: keep the top-k attention probabilities of each query row."""

from __future__ import annotations

from dataclasses import dataclass

from optc.errors import PipelineSpecError
from optc.ir.analysis import analyze, describe_layers
from optc.ir.core import Module, Node
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass
from optc.passes.support.selection import layer_positions

__all__ = ["HardAttention", "set_hard_attention", "DEFAULT_K"]

DEFAULT_K = 30
"""Probabilities kept per query row when neither ``k`` nor ``fraction`` is given (AxFormer's
value for GLUE)."""


def set_hard_attention(node: Node, k: int, renormalize: bool = False,
                       fraction: float | None = None) -> bool:
    """Make ``attention`` node ``node`` hard top-``k`` attention (or top ceil(``fraction`` x
    key length)); True if it changed."""
    before = (node.attr("kind", "softmax"), node.attr("topk"), bool(node.attr("renormalize", False)),
              node.attr("topk_fraction"))
    if before == ("topk", k, renormalize, fraction):
        return False
    node.set_attr("kind", "topk")
    node.set_attr("topk", k)
    for key, value in (("renormalize", True if renormalize else None), ("topk_fraction", fraction)):
        if value is not None:
            node.set_attr(key, value)
        elif node.attr(key) is not None:
            kwargs = node.kwargs
            kwargs.pop(key, None)
            node.kwargs = kwargs
    return True


@register_pass
@dataclass(frozen=True)
class HardAttention(Pass):
    """Replace soft attention by sparse hard attention in the chosen layers.

    Rewrites: each chosen layer's ``attention`` node gets ``kind="topk"`` and ``topk=k``: after
    the softmax, every head keeps the ``k`` highest probabilities of each query row (ties with
    the k-th are kept) and sets the others to zero, without renormalizing (as AxFormer
    publishes) unless ``renormalize=true``. Rows with at most ``k`` keys (short or padded
    sequences) are soft attention, exactly.
    Refuses: ``k`` < 1; ``k`` and ``fraction`` together (one rule per layer); a layer that does
    not exist or has no attention block.
    Guarantees: parameters and shapes are unchanged; running twice is a no-op; eager,
    TorchScript and ONNX (TopK threshold, dynamic sequence length) agree.
    """

    name = "hard-attention"

    k: int | None = None
    """Attention probabilities kept per query row (default 30, the paper's value for GLUE)."""
    layers: tuple[int, ...] = ()
    """Layers to change: positions, or stable ids with ids=true (default: every layer)."""
    ids: bool = False
    """Read ``layers`` as stable layer ids (indices in the captured model), not positions."""
    renormalize: bool = False
    """Rescale the kept probabilities so that each row sums to 1."""
    fraction: float | None = None
    """Keep ceil(fraction x sequence length) probabilities per row instead of ``k`` (0..1]."""

    def __post_init__(self) -> None:
        if self.k is not None and self.fraction is not None:
            raise PipelineSpecError(f"hard-attention takes k or fraction, not both (got k={self.k}, "
                                    f"fraction={self.fraction}): drop one")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int)
                                   or self.k < 1):
            raise PipelineSpecError(f"hard-attention k must be an integer >= 1 (attention "
                                    f"probabilities kept per query row), got {self.k!r}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise PipelineSpecError(f"hard-attention fraction must be in (0, 1], got "
                                    f"{self.fraction}")
        if any(i < 0 for i in self.layers):
            raise PipelineSpecError(f"hard-attention layers must be >= 0, got {list(self.layers)}")

    @property
    def keep(self) -> int:
        """The ``topk`` attribute written: ``k``, default 30 (with ``fraction`` the attention's
        ``topk_fraction`` decides and ``topk`` is not read)."""
        return DEFAULT_K if self.k is None else self.k

    def requires(self, module: Module) -> str | None:
        structure = analyze(module)
        if not structure.layers:
            return f"the module has {describe_layers(0)}"
        positions, missing = layer_positions(structure, self.layers, self.ids)
        if missing is not None:
            return missing
        for i in positions:
            if structure.layers[i].attention is None:
                return f"layer {i} (id {structure.layers[i].id}) has no attention block"
        if not self.layers and all(layer.attention is None for layer in structure.layers):
            return "the module has no attention block left"
        chosen = positions if self.layers else range(len(structure.layers))
        for i in chosen:
            block = structure.layers[i].attention
            if block is not None and block.node.attr("int8") is not None:
                return (f"layer {i} (id {structure.layers[i].id}) has int8 attention matmuls "
                        "(quantize targets=matmuls), whose kernels have no top-k: run "
                        "hard-attention before quantize")
        return None

    def run(self, module: Module) -> PassResult:
        structure = analyze(module)
        if self.layers:
            positions = sorted(set(layer_positions(structure, self.layers, self.ids)[0]))
        else:
            positions = [layer.index for layer in structure.layers if layer.attention is not None]
        changed = []
        for i in positions:
            block = structure.layers[i].attention
            fraction = float(self.fraction) if self.fraction is not None else None
            if set_hard_attention(block.node, self.keep, self.renormalize, fraction):
                changed.append(i)
        stats = {
            "layers": ",".join(map(str, changed)) or "-",
            "layer_ids": ",".join(str(structure.layers[i].id) for i in changed) or "-",
            "k": self.keep if self.fraction is None else f"{self.fraction} x seq",
        }
        return PassResult(bool(changed), stats)
