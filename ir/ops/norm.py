"""Normalizations: ``layer_norm`` over the trailing ``normalized_shape`` dims, and
``rms_norm`` (``x * rsqrt(mean(x^2) + eps) * (offset + weight)`` over the last dim; Llama-style
models use offset 0, Gemma offset 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, sample_module, tensor_operand
from optc.ir.types import Type

__all__ = ["LAYER_NORM", "RMS_NORM", "rms_norm", "same_as_input"]


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               *, normalized_shape: list[int], eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, list(normalized_shape), weight, bias, eps)


def same_as_input(node: Node) -> list[Type]:
    """Output type = the first operand's type (elementwise ops)."""
    t = tensor_operand(node, 0)
    assert t is not None
    return [t]


def _check(node: Node) -> list[str]:
    x = tensor_operand(node, 0)
    assert x is not None
    shape = tuple(node.attr("normalized_shape"))
    problems = []
    if tuple(x.shape[len(x.shape) - len(shape):]) != shape:
        problems.append(f"layer_norm normalized_shape {list(shape)} does not end input {x}")
    for i, name in ((1, "weight"), (2, "bias")):
        t = tensor_operand(node, i)
        if t is not None and t.shape != shape:
            problems.append(f"layer_norm {name} {t} must have shape {list(shape)}")
    return problems


_SCRIPT = '''
def k_layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                 normalized_shape: List[int], eps: float) -> Tensor:
    return torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)
'''

LAYER_NORM = register_op(OpDef(
    name="layer_norm",
    doc="layer normalization over the trailing normalized_shape dims",
    operands=(Operand("x"), Operand("weight", optional=True, same_dtype_as="x"),
              Operand("bias", optional=True, same_dtype_as="x")),
    attrs={"normalized_shape": Attr((list, tuple), doc="trailing dims normalized over"),
           "eps": Attr(float, 1e-5, "added to the variance")},
    infer=same_as_input,
    check=_check,
    kernel=layer_norm,
    script=_SCRIPT,
    traits=frozenset({"norm"}),
    samples=(sample_module("%x : f32[2,3,8]",
                           "%y : f32[2,3,8] = layer_norm(%x, @w, @b, normalized_shape=[8], eps=1e-12)",
                           "param @w : f32[8]\nparam @b : f32[8]"),
             sample_module("%x : f32[2,4,6]",
                           "%y : f32[2,4,6] = layer_norm(%x, none, none, normalized_shape=[4,6])")),
))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, *, eps: float = 1e-6,
             offset: float = 0.0) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return y
    return y * (weight + offset) if offset else y * weight


def _rms_check(node: Node) -> list[str]:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None
    if w is not None and (w.rank != 1 or w.shape[0] != x.shape[-1]):
        return [f"rms_norm weight {w} must be a vector of the input's last dim ({x})"]
    return []


_RMS_SCRIPT = '''
def k_rms_norm(x: Tensor, weight: Optional[Tensor], eps: float, offset: float) -> Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return y
    if offset != 0.0:
        return y * (weight + offset)
    return y * weight
'''

RMS_NORM = register_op(OpDef(
    name="rms_norm",
    doc="root-mean-square normalization over the last dim, times (offset + weight)",
    operands=(Operand("x"), Operand("weight", optional=True, same_dtype_as="x")),
    attrs={"eps": Attr(float, 1e-6, "added to the mean square"),
           "offset": Attr(float, 0.0, "added to the weight (Gemma: 1)")},
    infer=same_as_input,
    check=_rms_check,
    kernel=rms_norm,
    script=_RMS_SCRIPT,
    traits=frozenset({"norm"}),
    samples=(sample_module("%x : f32[2,3,8]", "%y : f32[2,3,8] = rms_norm(%x, @w, eps=1e-6)",
                           "param @w : f32[8]"),
             sample_module("%x : f32[2,3,8]",
                           "%y : f32[2,3,8] = rms_norm(%x, @w, eps=1e-6, offset=1.0)",
                           "param @w : f32[8]")),
))
