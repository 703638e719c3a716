"""Dynamic int8 linears on fbgemm's prepacked kernel, for the eager and TorchScript backends.

The IR's dynamic int8 ``linear`` (an ``i8`` weight and its ``weight_scale``, see
:mod:`optc.ir.ops.quantized_linear`) has a portable kernel built from ATen ops around
``torch._int_mm``. At batch 1 it spends more time in its dozen elementwise ops (quantizing the
activations, the zero-point correction, the rescale) than in the GEMM, so at lowering time the
eager and TorchScript backends hand each such linear to ``quantized::linear_dynamic`` instead: the
weight is prepacked once (``quantized::linear_prepack``, per-channel, bias included) and one C++
call quantizes the activations, multiplies and rescales. fbgemm chooses the activations' scale and
zero point with the same formula as ONNX Runtime's ``DynamicQuantizeLinear`` (per tensor, uint8,
range widened to hold 0), so it computes the same integers up to a rounding tie (per tensor
only: linears with per-token activation scales keep the portable kernel); it runs with full
8-bit activations (``reduce_range=False``), which is exact on every x86 CPU only when the weights
fit 7 bits (``|q| <= 63``, the quantize pass's default): AVX2's ``vpmaddubsw`` adds pairs of
uint8 x int8 products in saturating int16. Wider weights, static (calibrated) activations, a
non-float32 input, a weight or scale computed in the graph, another device, or a PyTorch build
without fbgemm keep the portable kernel. ``build_graph_module(..., packed_int8=False)`` (the
ONNX backend and training) builds the graph without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from optc.ir.core import Module, Node, Parameter

__all__ = ["packed_int8_nodes", "pack_linear", "packed_weights", "packed_int8_linear",
           "unpacked_weights", "available"]

_MAX_EXACT = 63
"""The largest |weight| for which uint8 x int8 pairs cannot saturate int16 (2 * 255 * 63)."""


def available() -> bool:
    """Whether this PyTorch has fbgemm's dynamic quantized linear (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and \
        hasattr(torch.ops.quantized, "linear_dynamic")


def packed_int8_nodes(module: Module, device: torch.device | str | None = None) -> list[Node]:
    """The dynamic int8 ``linear`` nodes of ``module`` that can run on the prepacked kernel."""
    if device is not None and torch.device(device).type != "cpu" or not available():
        return []
    out = []
    for node in module.graph:
        if node.op != "linear" or len(node.args) < 4:
            continue
        x, w, bias, scale = (node.arg(i) for i in range(4))
        static = [node.arg(i) for i in range(4, len(node.args))]
        if not isinstance(w, Parameter) or not isinstance(scale, Parameter) or any(s is not None for s in static):
            continue
        if node.attr("act_scales", "tensor") != "tensor":
            continue  # fbgemm's kernel has one activation scale per call
        if w.data.dtype != torch.int8 or getattr(x.type, "dtype", None) != torch.float32:
            continue
        if bias is not None and (not isinstance(bias, Parameter) or bias.data.dtype != torch.float32):
            continue
        if w.data.is_meta or not w.data.numel() or \
                int(w.data.to(torch.int16).abs().max()) > _MAX_EXACT:
            continue
        out.append(node)
    return out


def pack_linear(node: Node) -> Any:
    """The prepacked fbgemm parameters of one node from :func:`packed_int8_nodes`."""
    w, bias, scale = node.arg(1), node.arg(2), node.arg(3)
    zero = torch.zeros(w.data.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, the fbgemm kernels are not
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(w.data, scale.data.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.data)


def packed_weights(nodes: Iterable[Node]) -> list[tuple[str, Any, list[Node]]]:
    """``(weight name, prepacked parameters, the nodes that use them)``, packed once per
    (weight, bias) pair (the bias is packed in, so linears sharing a weight with different
    biases get their own)."""
    users: dict[tuple[str, str | None], list[Node]] = {}
    for node in nodes:
        bias = node.arg(2)
        users.setdefault((node.arg(1).name, None if bias is None else bias.name), []).append(node)
    return [(weight, pack_linear(group[0]), group) for (weight, _), group in users.items()]


def packed_int8_linear(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """``linear`` of an int8 weight prepacked by :func:`pack_linear` (uint8 activations)."""
    return torch.ops.quantized.linear_dynamic(x, packed, False)


def unpacked_weights(packed: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(i8 weight, f32 scale, bias)`` back from prepacked parameters (for checks and tests)."""
    qweight, bias = torch.ops.quantized.linear_unpack(packed)
    return qweight.int_repr(), qweight.q_per_channel_scales().float(), bias
