"""int8 quantization of linear layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from optc.ir.analysis import analyze
from optc.ir.attributes import Quantization
from optc.ir.core import Module, Node, Parameter
from optc.ir.ops.quantized_linear import quantize_weight
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass
from optc.passes.sparsify import ROLES, linear_targets

__all__ = ["Quantize"]


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Quantize linear layers to int8: weights per output channel (symmetric), activations at
    run time.

    Rewrites: each target ``linear`` gets an ``i8`` weight (``round(W / scale)``, within
    ±(2**(bits-1) - 1): 7 bits by default, exact on every ONNX Runtime CPU kernel) with
    a ``quantization`` attribute and a new ``f32[out]`` scale parameter as its ``weight_scale``
    operand; activations are quantized per tensor when the layer runs (``mode=dynamic``, the
    scheme of ONNX Runtime's ``DynamicQuantizeMatMul``, which is the ONNX lowering; eager and
    TorchScript run ``torch._int_mm``). Targets are chosen by role from the structure analysis
    (default: attention and FFN projections; the pooler and classifier only with
    ``targets=head``). A weight's sparsity attribute is kept: its zeros stay zero in int8.
    Refuses: a weight that is already int8 (quantizing twice), a weight shared with an op
    that is not a target linear, a module with no target.
    Guarantees: the IR is unchanged when it refuses; each output differs from the float model
    only by int8 rounding.
    """

    name = "quantize"

    mode: Literal["dynamic"] = "dynamic"
    """``dynamic``: int8 weights, activations quantized at run time."""
    targets: tuple[str, ...] = ("attention", "ffn")
    """Roles to quantize: attention, ffn, query, key, value, output, up, down, head."""
    bits: int = 7
    """Weight bits stored in int8: 7 (-63..63; exact on ONNX Runtime's non-VNNI u8 x s8 kernels,
    which saturate with 8) or 8 (-127..127; for CPUs with VNNI/AMX)."""

    def __post_init__(self) -> None:
        if self.bits not in (7, 8):
            raise ValueError(f"bits must be 7 or 8, got {self.bits}")
        bad = [t for t in self.targets if t not in ROLES]
        if bad or not self.targets:
            raise ValueError(f"unknown target {bad[0] if bad else '(none)'!r}; "
                             f"choose from {', '.join(ROLES)}")

    def _targets(self, module: Module) -> list[tuple[str, Node]]:
        return [(role, node) for _, role, node in linear_targets(module, self.targets)]

    def requires(self, module: Module) -> str | None:
        targets = self._targets(module)
        if not targets:
            return (f"no linear layer has a role in targets={','.join(self.targets)} "
                    f"(the module has {analyze(module).describe()})")
        nodes = {id(n) for _, n in targets}
        for _, node in targets:
            w = node.arg(1)
            if not isinstance(w, Parameter):
                return f"{node!r} reads a computed weight, not a parameter; it cannot be quantized"
            if w.data.dtype == torch.int8 or "quantization" in w.attrs:
                return (f"weight @{w.name} is already quantized (int8): quantize runs once; "
                        "drop the second quantize")
            if w.data.dtype != torch.float32:
                return f"weight @{w.name} is {w.data.dtype}; int8 quantization starts from float32"
            if w.data.is_meta:
                return f"weight @{w.name} has no data (IR loaded without weights)"
            others = [u for u in w.users() if id(u) not in nodes]
            if others:
                return (f"weight @{w.name} is also read by {others[0]!r}, which is not a target "
                        "linear; untie it or leave this layer out of targets")
        return None

    def run(self, module: Module) -> PassResult:
        done: dict[str, Parameter] = {}
        by_role: dict[str, int] = {}
        before = after = 0
        for role, node in self._targets(module):
            w = node.args[1]
            if w.name not in done:
                before += w.data.numel() * w.data.element_size()
                q, scale = quantize_weight(w.data, self.bits)
                w.data = q
                w.attrs["quantization"] = Quantization("symmetric", self.bits, axis=0)
                done[w.name] = module.add_param(module.unique_param_name(w.name + "_scale"), scale)
                after += q.numel() + scale.numel() * 4
            args = list(node.args) + [None] * (3 - len(node.args))
            node.args = (args[0], args[1], args[2], done[w.name])
            by_role[role] = by_role.get(role, 0) + 1
        return PassResult(bool(done), {
            "linears": sum(by_role.values()),
            "by_role": ",".join(f"{r}={n}" for r, n in by_role.items()),
            "weight_bytes": f"{before}->{after}",
        })
