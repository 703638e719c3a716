"""``linear``: ``y = x @ weight.T + bias``.

The smallest complete op definition: signature, type inference and checks, cost, and its
lowerings (eager kernel and TorchScript source; ONNX traces the eager kernel into a MatMul+Add
that ONNX Runtime fuses).

An ``i8`` weight with an ``f32[out]`` ``weight_scale`` operand makes it an int8 linear (per-channel
symmetric weights, activations quantized at run time): see :mod:`optc.ir.ops.quantized_linear`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from optc.errors import IRError
from optc.ir.core import Node
from optc.ir.ids import parse_ids
from optc.ir.ops.base import (
    Attr,
    OnnxLowering,
    OpDef,
    Operand,
    numel,
    register_op,
    same_dim,
    sample_module,
    tensor_operand,
)
from optc.ir.ops.quantized_linear import (
    ACT_SCALES,
    INT8_SCRIPT,
    int8_linear,
    int8_onnx_rewrite,
    int8_onnx_translations,
    static_problems,
)
from optc.ir.types import TensorType, Type, dtype_name

__all__ = ["LINEAR", "UNIT_ATTRS", "check_unit_ids"]

UNIT_ATTRS = {
    "layer": Attr(int, None, "stable id of the transformer layer (its index at capture)", kernel=False),
    "unit_ids": Attr(str, None, "stable ids of the output features that remain, as ranges "
                                "('0-99,120-1535'); absent: all of them", kernel=False),
}
"""Metadata attributes that give FFN neurons and layers a stable identity."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           weight_scale: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
           input_zero_point: torch.Tensor | None = None, *,
           act_scales: str = "tensor") -> torch.Tensor:
    if weight_scale is not None:
        return int8_linear(x, weight, weight_scale, bias, input_scale, input_zero_point,
                           act_scales)
    return F.linear(x, weight, bias)


def _infer(node: Node) -> list[Type]:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None and w is not None
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))]


def _check(node: Node) -> list[str]:
    x, w, b = tensor_operand(node, 0), tensor_operand(node, 1), tensor_operand(node, 2)
    s = tensor_operand(node, 3)
    assert x is not None and w is not None
    problems = []
    weight = f"linear operand 'weight' ({node.arg(1)!r})"
    if w.dtype == torch.int8:
        if s is None or s.dtype != torch.float32 or s.shape != (w.shape[0],):
            problems.append(f"{weight} is i8 but must be float unless an f32[{w.shape[0]}] "
                            f"weight_scale operand dequantizes it (got {s or 'none'}); the "
                            "quantize pass adds one per output channel")
    elif w.dtype != x.dtype:
        problems.append(f"linear operand 'weight' is {dtype_name(w.dtype)} but 'x' is "
                        f"{dtype_name(x.dtype)}: they must have the same dtype (cast one, or "
                        "quantize it to int8 with the quantize pass)")
    elif s is not None:
        problems.append(f"linear weight_scale {s} is only for int8 weights; {weight} is {w}")
    if b is not None and b.dtype != x.dtype:
        problems.append(f"linear operand 'bias' is {dtype_name(b.dtype)} but 'x' is "
                        f"{dtype_name(x.dtype)}: they must have the same dtype")
    if w.rank != 2:
        problems.append(f"linear weight must be 2-D [out, in], got {w}")
    elif x.rank < 1 or not same_dim(x.shape[-1], w.shape[1]):
        problems.append(
            f"linear input {x} does not match weight {w}: the input's last dim must equal "
            "weight.shape[1]; slice both sides together"
        )
    if b is not None and w.rank == 2 and b.shape != (w.shape[0],):
        problems.append(f"linear bias {b} must be [{w.shape[0]}] to match weight {w}")
    problems += static_problems(w.dtype, tensor_operand(node, 4), tensor_operand(node, 5))
    act_scales = node.attr("act_scales")
    if act_scales is not None:
        if act_scales not in ACT_SCALES:
            problems.append(f"linear act_scales={act_scales!r}: must be one of "
                            f"{', '.join(ACT_SCALES)}")
        elif act_scales == "token" and (w.dtype != torch.int8 or node.arg(4) is not None):
            problems.append("linear act_scales='token' is for dynamic int8 linears (an i8 weight "
                            "and no input_scale); this one is not")
    problems += check_unit_ids(node, "unit_ids", int(w.shape[0]), "output features")
    return problems


def check_unit_ids(node: Node, key: str, count: int, what: str) -> list[str]:
    """Problems with a stable-id attribute: it must name exactly ``count`` units."""
    text = node.attr(key)
    if text is None:
        return []
    try:
        ids = parse_ids(text)
    except IRError as exc:
        return [str(exc)]
    if len(ids) != count:
        return [f"{node.op} {key}={text!r} names {len(ids)} units but there are {count} {what}: "
                "keep the ids in step with the weights when slicing"]
    return []


def _flops(node: Node, dims: Mapping[str, int]) -> int:
    x, w = tensor_operand(node, 0), tensor_operand(node, 1)
    assert x is not None and w is not None
    return 2 * numel(x, dims, -1) * int(w.shape[0]) * int(w.shape[1])


_SCRIPT = INT8_SCRIPT + '''
def k_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Optional[Tensor],
             input_scale: Optional[Tensor], input_zero_point: Optional[Tensor],
             act_scales: str) -> Tensor:
    if weight_scale is not None:
        return k_int8_linear(x, weight, weight_scale, bias, input_scale, input_zero_point,
                             act_scales)
    return torch.nn.functional.linear(x, weight, bias)
'''

LINEAR = register_op(OpDef(
    name="linear",
    doc="y = x @ weight.T + bias; weight is [out, in]",
    operands=(
        Operand("x"),
        Operand("weight", dtypes="any"),
        Operand("bias", optional=True),
        Operand("weight_scale", optional=True),
        Operand("input_scale", optional=True),
        Operand("input_zero_point", dtypes="int", optional=True),
    ),
    attrs={**UNIT_ATTRS,
           "act_scales": Attr(str, "tensor", "dynamic int8: activation scales per 'tensor' or "
                                             "per 'token' (row)")},
    infer=_infer,
    check=_check,
    kernel=linear,
    script=_SCRIPT,
    flops=_flops,
    onnx=OnnxLowering(int8_onnx_rewrite, int8_onnx_translations),
    traits=frozenset({"projection"}),
    samples=(
        sample_module("%x : f32[2,3,8]", "%y : f32[2,3,6] = linear(%x, @w, @b)",
                      "param @w : f32[6,8]\nparam @b : f32[6]"),
        *(sample_module("%x : f32[2,3,8]",
                        f"%y : f32[2,3,6] = linear(%x, @w, @b, @s{attrs})",
                        f'''param @w : i8[6,8] {{quantization=quantization(scheme="symmetric", bits={bits}, axis=0)}}
                        param @b : f32[6]
                        param @s : f32[6]''')
          for bits, attrs in ((7, ""), (8, ""), (7, ', act_scales="token"'),
                              (8, ', act_scales="token"'))),
        sample_module("%x : f32[2,3,8]", "%y : f32[2,3,6] = linear(%x, @w, @b, @s, @xs, @xz)",
                      '''param @w : i8[6,8] {quantization=quantization(scheme="symmetric", bits=7, axis=0)}
                      param @b : f32[6]
                      param @s : f32[6]
                      param @xs : f32[]
                      param @xz : u8[]'''),
    ),
))
