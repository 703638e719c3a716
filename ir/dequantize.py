"""The float module an int8 module stands for.

:func:`dequantized` undoes what ``quantize`` did, in a copy: each int8 linear weight and
embedding table becomes ``scale * q`` in float32 (so the weights are the rounded ones), the
activations are no longer quantized (dynamic, per-token or static), and int8 attention matmuls
run in float. What remains between the two modules is exactly the rounding of the activations.

The ONNX self-check uses it to tell a lowering fault from int8 rounding noise: after a dozen
layers two correct int8 runtimes can differ by as much as each differs from the float model
(ONNX Runtime's GELU moves an activation across a rounding step, the step's error grows layer
by layer), so it accepts an int8 output that is no further from the float module than the IR's
own int8 kernels are (:mod:`optc.backends.selfcheck`).
"""

from __future__ import annotations

import torch

from optc.errors import IRError
from optc.ir.core import Module, Node, Parameter

__all__ = ["dequantized", "is_quantized"]


def is_quantized(module: Module) -> bool:
    """Whether ``module`` has int8 weights or tables, or int8 attention matmuls."""
    return (any("quantization" in p.attrs for p in module.params.values())
            or any(n.op == "attention" and n.attr("int8") is not None for n in module.graph))


def dequantized(module: Module) -> Module:
    """A float copy of ``module`` (see the module docstring); raises :class:`IRError` for an
    int8 weight or scale computed in the graph (not a parameter)."""
    work = module.clone()
    floats: dict[str, Parameter] = {}
    for node in list(work.graph):
        if node.op == "linear" and node.arg(3) is not None:
            weight = _float_param(work, node, 1, 3, floats)
            node.args = (node.args[0], weight, node.arg(2))
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "act_scales"}
        elif node.op == "embedding" and node.arg(2) is not None:
            node.args = (node.args[0], _float_param(work, node, 1, 2, floats))
        elif node.op == "attention" and node.attr("int8") is not None:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "int8"}
            node.args = tuple(node.args[:4])
    return work


def _float_param(module: Module, node: Node, index: int, scale_index: int,
                 done: dict[str, Parameter]) -> Parameter:
    q, scale = node.arg(index), node.arg(scale_index)
    if not isinstance(q, Parameter) or not isinstance(scale, Parameter):
        raise IRError(f"{node!r}: its int8 operand or scale is computed in the graph; only "
                      "parameters can be dequantized")
    if q.name not in done:
        data = q.data.to(torch.float32) * scale.data.to(torch.float32)[:, None]
        done[q.name] = module.add_param(module.unique_param_name(q.name + "_dequantized"), data)
    return done[q.name]
