"""Normalizations: ``layer_norm`` over the trailing ``normalized_shape`` dims, and
``rms_norm`` (``x * rsqrt(mean(x^2) + eps) * (offset + weight)`` over the last dim; Llama-style
models use offset 0, Gemma offset 1).

Both take ``head_dim``: the last dim is ``heads*head_dim`` features and each head's
``head_dim`` features are normalized on their own, with one weight (and bias) of ``head_dim``
entries shared by every head. That is the per-head query/key normalization of Qwen3, OLMoE,
Persimmon or Cohere written on the projection's ``[batch, seq, heads*head_dim]`` result: like
``rotary`` it does not depend on the head count, so removing heads only slices the projection
before it (:mod:`optc.frontends.raising` regroups a norm of a head split into this form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, sample_module, tensor_operand
from optc.ir.types import Type

__all__ = ["LAYER_NORM", "RMS_NORM", "rms_norm", "same_as_input"]


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               *, normalized_shape: list[int], eps: float = 1e-5,
               head_dim: int | None = None) -> torch.Tensor:
    if head_dim is not None:
        heads = x.unflatten(-1, (-1, head_dim))
        return F.layer_norm(heads, list(normalized_shape), weight, bias, eps).flatten(-2)
    return F.layer_norm(x, list(normalized_shape), weight, bias, eps)


def same_as_input(node: Node) -> list[Type]:
    """Output type = the first operand's type (elementwise ops)."""
    t = tensor_operand(node, 0)
    assert t is not None
    return [t]


def _head_dim_problems(node: Node) -> list[str]:
    """Why ``head_dim`` does not split the input's last dim into whole heads."""
    head_dim, x = node.attr("head_dim"), tensor_operand(node, 0)
    assert x is not None
    if head_dim is None:
        return []
    last = x.shape[-1] if x.shape else None
    if head_dim < 1 or (isinstance(last, int) and last % head_dim):
        return [f"{node.op} head_dim {head_dim} does not divide the last dim of {x}"]
    return []


def _check(node: Node) -> list[str]:
    x = tensor_operand(node, 0)
    assert x is not None
    shape = tuple(node.attr("normalized_shape"))
    problems = _head_dim_problems(node)
    if node.attr("head_dim") is not None:
        if shape != (node.attr("head_dim"),):
            problems.append(f"layer_norm normalized_shape {list(shape)} is not [head_dim]")
    elif tuple(x.shape[len(x.shape) - len(shape):]) != shape:
        problems.append(f"layer_norm normalized_shape {list(shape)} does not end input {x}")
    for i, name in ((1, "weight"), (2, "bias")):
        t = tensor_operand(node, i)
        if t is not None and t.shape != shape:
            problems.append(f"layer_norm {name} {t} must have shape {list(shape)}")
    return problems


_HEAD_DIM_DOC = "normalize each group of head_dim features of the last dim (per-head q/k norms)"

_SCRIPT = '''
def k_layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                 normalized_shape: List[int], eps: float, head_dim: Optional[int]) -> Tensor:
    if head_dim is not None:
        heads = x.unflatten(-1, (-1, head_dim))
        return torch.nn.functional.layer_norm(heads, normalized_shape, weight, bias, eps).flatten(-2)
    return torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)
'''

LAYER_NORM = register_op(OpDef(
    name="layer_norm",
    doc="layer normalization over the trailing normalized_shape dims",
    operands=(Operand("x"), Operand("weight", optional=True, same_dtype_as="x"),
              Operand("bias", optional=True, same_dtype_as="x")),
    attrs={"normalized_shape": Attr((list, tuple), doc="trailing dims normalized over"),
           "eps": Attr(float, 1e-5, "added to the variance"),
           "head_dim": Attr(int, None, _HEAD_DIM_DOC)},
    infer=same_as_input,
    check=_check,
    kernel=layer_norm,
    script=_SCRIPT,
    traits=frozenset({"norm"}),
    samples=(sample_module("%x : f32[2,3,8]",
                           "%y : f32[2,3,8] = layer_norm(%x, @w, @b, normalized_shape=[8], eps=1e-12)",
                           "param @w : f32[8]\nparam @b : f32[8]"),
             sample_module("%x : f32[2,4,6]",
                           "%y : f32[2,4,6] = layer_norm(%x, none, none, normalized_shape=[4,6])"),
             sample_module("%x : f32[2,3,8]",
                           "%y : f32[2,3,8] = layer_norm(%x, @w, @b, normalized_shape=[4], head_dim=4)",
                           "param @w : f32[4]\nparam @b : f32[4]")),
))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, *, eps: float = 1e-6,
             offset: float = 0.0, head_dim: int | None = None) -> torch.Tensor:
    h = x if head_dim is None else x.unflatten(-1, (-1, head_dim))
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight + offset) if offset else y * weight
    return y if head_dim is None else y.flatten(-2)


def _rms_check(node: Node) -> list[str]:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None
    head_dim = node.attr("head_dim")
    size = x.shape[-1] if head_dim is None else head_dim
    problems = _head_dim_problems(node)
    if w is not None and (w.rank != 1 or w.shape[0] != size):
        what = "the input's last dim" if head_dim is None else "head_dim"
        problems.append(f"rms_norm weight {w} must be a vector of {what} ({x})")
    return problems


_RMS_SCRIPT = '''
def k_rms_norm(x: Tensor, weight: Optional[Tensor], eps: float, offset: float,
               head_dim: Optional[int]) -> Tensor:
    h = x
    if head_dim is not None:
        h = x.unflatten(-1, (-1, head_dim))
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        if offset != 0.0:
            y = y * (weight + offset)
        else:
            y = y * weight
    if head_dim is not None:
        y = y.flatten(-2)
    return y
'''

RMS_NORM = register_op(OpDef(
    name="rms_norm",
    doc="root-mean-square normalization over the last dim, times (offset + weight)",
    operands=(Operand("x"), Operand("weight", optional=True, same_dtype_as="x")),
    attrs={"eps": Attr(float, 1e-6, "added to the mean square"),
           "offset": Attr(float, 0.0, "added to the weight (Gemma: 1)"),
           "head_dim": Attr(int, None, _HEAD_DIM_DOC)},
    infer=same_as_input,
    check=_rms_check,
    kernel=rms_norm,
    script=_RMS_SCRIPT,
    traits=frozenset({"norm"}),
    samples=(sample_module("%x : f32[2,3,8]", "%y : f32[2,3,8] = rms_norm(%x, @w, eps=1e-6)",
                           "param @w : f32[8]"),
             sample_module("%x : f32[2,3,8]",
                           "%y : f32[2,3,8] = rms_norm(%x, @w, eps=1e-6, offset=1.0)",
                           "param @w : f32[8]"),
             sample_module("%x : f32[2,3,8]", "%y : f32[2,3,8] = rms_norm(%x, @w, eps=1e-6, head_dim=2)",
                           "param @w : f32[2]")),
))
