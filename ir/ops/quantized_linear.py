"""int8 ``linear``: the kernels of a ``linear`` whose weight is ``i8`` with a ``weight_scale``.

A quantized linear is the ``linear`` op (so the structure analysis, inspection and cost model
see it as one) with an ``i8[out, in]`` weight holding ``round(W / scale)`` per output channel
(symmetric, zero point 0, values in -127..127) and an ``f32[out]`` ``weight_scale`` operand:

    linear(%x, @w.int8, @bias, @w.scale)      # y = x @ (scale * w).T + bias

Activations are quantized at run time exactly as ONNX Runtime's ``DynamicQuantizeLinear``
does (per tensor, asymmetric uint8: ``scale = (max(x, 0) - min(x, 0)) / 255``, zero point
``round(-min / scale)``, round half to even), so the eager kernel, the TorchScript kernel and
ONNX Runtime's ``DynamicQuantizeMatMul`` (the ONNX lowering) compute the same integers: the
backends agree to float rounding (with 7-bit weights: see below), and all three run an int8 GEMM. The
kernel here is portable (``torch._int_mm`` and ATen ops on the IR's plain ``i8`` tensors); at
lowering time the eager and TorchScript backends hand the linears it would compute exactly to
fbgemm's prepacked ``quantized::linear_dynamic`` instead (:mod:`optc.backends.int8_exec`).

Weights use 7 bits by default (-63..63, ``quantization(bits=7)``): ONNX Runtime's uint8 x int8
kernels on CPUs without VNNI (AVX2 ``vpmaddubsw``) add pairs of products in saturating int16,
and 255 * 127 * 2 overflows it; 255 * 63 * 2 does not, so every backend computes the exact
integer result on every x86 CPU. ``quantize{bits=8}`` weights (some |w| > 63) are lowered to
ONNX as uint8 with zero point 128 instead (``w + 128``: the same integers), which ONNX Runtime
runs with its u8 x u8 kernels; those widen to int16 before multiplying and never saturate, so
an 8-bit file is exact on every CPU too (the u8 x s8 VNNI kernels are the 7-bit default's).

**Per-token activation scales** (the node attribute ``act_scales="token"``, set by
``quantize{token_scales=...}``): each row of ``x`` (one token) gets its own scale and zero point,
the same formula over that row's last dim. One outlier token then no longer flattens every other
token of the batch onto a few levels, which per-tensor scales do on models with outlier
activations: all-mpnet-base-v2's FFN ``down`` projections read GELU outputs whose largest value
is ~100 while the median is ~0.08 (64 SST-2 dev sentences, int8 everywhere, mean-pooled cosine
with fp32: 0.851 per tensor, 0.997 per token). ONNX Runtime has no fused kernel for it; the
lowering is ``ReduceMin``/``ReduceMax`` per row, the quantization in plain ops, ``MatMulInteger``
and the zero-point correction in int32 (``acc - zp * rowsum(w)``), the arithmetic of the eager
kernel, so the backends compute the same integers here too.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from optc.ir.core import Module, Node, Value

__all__ = ["quantize_weight", "int8_linear", "ACT_SCALES", "static_problems", "INT8_SCRIPT",
           "int8_onnx_rewrite", "int8_onnx_translations", "SATURATION_FREE_MAX", "as_uint8"]

SATURATION_FREE_MAX = 63
"""The largest |weight| (7 bits) whose u8 x s8 products ONNX Runtime's AVX2 kernels add
without saturating int16 (255 * 63 * 2 < 32767); larger weights are lowered as uint8."""


ACT_SCALES = ("tensor", "token")
"""Granularity of a dynamic int8 linear's activation scales: one per call, or one per row."""


def as_uint8(weight_t: torch.Tensor) -> torch.Tensor:
    """An i8 weight as uint8 with zero point 128 (``w + 128``: the same integers)."""
    return (weight_t.to(torch.int16) + 128).to(torch.uint8)


def quantize_weight(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric: ``(q: i8[out, in], scale: f32[out])`` with
    ``weight ≈ scale[:, None] * q`` and ``|q| <= 2**(bits-1) - 1``; all-zero rows get scale 1."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale.to(torch.float32)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None = None, input_scale: torch.Tensor | None = None,
                input_zero_point: torch.Tensor | None = None,
                act_scales: str = "tensor") -> torch.Tensor:
    """``x @ (weight_scale * weight).T + bias`` with ``x`` quantized to uint8 and an
    int8 x int8 -> int32 GEMM: dynamically (ONNX Runtime's ``DynamicQuantizeLinear`` scheme,
    per tensor, or per row with ``act_scales="token"``) or, given
    ``input_scale``/``input_zero_point`` (static mode), with those calibrated ones (ONNX
    ``QuantizeLinear``: ``clamp(round(x / scale) + zero_point, 0, 255)``)."""
    k = x.shape[-1]
    if input_scale is None or input_zero_point is None:
        rows = act_scales == "token"
        lo = torch.clamp(x.amin(-1, keepdim=True) if rows else x.min(), max=0.0)
        hi = torch.clamp(x.amax(-1, keepdim=True) if rows else x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    else:
        scale, zp = input_scale, input_zero_point.to(torch.float32)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255) - 128  # uint8 shifted into int8
    acc = torch._int_mm(q.to(torch.int8).reshape(-1, k), weight.t())
    if zp.dim():  # per row: [..., 1] -> [rows, 1]
        zp, scale = zp.reshape(-1, 1), scale.reshape(-1, 1)
    shift = (128 - zp).to(torch.int32) * weight.sum(1, dtype=torch.int32)
    y = (acc + shift).to(x.dtype) * (scale * weight_scale)
    if bias is not None:
        y = y + bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],))


def static_problems(w_dtype: torch.dtype, input_scale: Any, input_zero_point: Any) -> list[str]:
    """Problems with a static int8 linear's activation quantization operands (the types of
    operands 4 and 5 of ``linear``, or None): both or neither, on an i8 weight only, an
    ``f32[]`` scale and a ``u8[]`` zero point."""
    if input_scale is None and input_zero_point is None:
        return []
    problems = []
    if input_scale is None or input_zero_point is None:
        problems.append("linear has only one of input_scale / input_zero_point: static int8 "
                        "needs both (quantize{mode=static} adds them)")
    if w_dtype != torch.int8:
        problems.append("linear input_scale/input_zero_point quantize the activations of an "
                        "int8 linear; this weight is not i8 (drop them or quantize the weight)")
    if input_scale is not None and (input_scale.dtype != torch.float32 or input_scale.shape != ()):
        problems.append(f"linear input_scale must be f32[] (one scale per tensor), got {input_scale}")
    if input_zero_point is not None and (input_zero_point.dtype != torch.uint8
                                         or input_zero_point.shape != ()):
        problems.append(f"linear input_zero_point must be u8[] (affine uint8 activations), got "
                        f"{input_zero_point}")
    return problems


INT8_SCRIPT = '''
def k_int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                  input_scale: Optional[Tensor], input_zero_point: Optional[Tensor],
                  act_scales: str) -> Tensor:
    k = x.size(-1)
    if input_scale is None or input_zero_point is None:
        if act_scales == "token":
            lo = torch.clamp(torch.amin(x, -1, True), max=0.0)
            hi = torch.clamp(torch.amax(x, -1, True), min=0.0)
        else:
            lo = torch.clamp(x.min(), max=0.0)
            hi = torch.clamp(x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    else:
        scale = input_scale
        zp = input_zero_point.to(torch.float32)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255) - 128
    acc = torch._int_mm(q.to(torch.int8).reshape(-1, k), weight.t())
    if zp.dim() > 0:
        zp = zp.reshape(-1, 1)
        scale = scale.reshape(-1, 1)
    shift = (128 - zp).to(torch.int32) * weight.sum(1, dtype=torch.int32)
    y = (acc + shift).to(x.dtype) * (scale * weight_scale)
    if bias is not None:
        y = y + bias
    shape = x.size()[:-1]
    shape.append(weight.size(0))
    return y.reshape(shape)
'''
"""TorchScript kernel, called by ``k_linear`` when the weight is int8."""


# -- ONNX: com.microsoft DynamicQuantizeMatMul (dynamic), QDQ around MatMul (static) --------
@functools.cache
def _custom_op() -> Any:
    @torch.library.custom_op("optc_onnx::int8_linear", mutates_args=())
    def int8_linear_op(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        return int8_linear(x, weight_t.t(), weight_scale, bias)

    @int8_linear_op.register_fake
    def _(x, weight_t, weight_scale, bias):  # noqa: ANN001
        return x.new_empty(x.shape[:-1] + (weight_t.shape[1],))

    @torch.library.custom_op("optc_onnx::int8_linear_static", mutates_args=())
    def int8_linear_static_op(x: torch.Tensor, weight_t: torch.Tensor,
                              weight_scale: torch.Tensor, bias: torch.Tensor | None,
                              input_scale: torch.Tensor,
                              input_zero_point: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, weight_t.t(), weight_scale, bias, input_scale, input_zero_point)

    @int8_linear_static_op.register_fake
    def _(x, weight_t, weight_scale, bias, input_scale, input_zero_point):  # noqa: ANN001
        return x.new_empty(x.shape[:-1] + (weight_t.shape[1],))

    @torch.library.custom_op("optc_onnx::int8_linear_u8", mutates_args=())
    def int8_linear_u8_op(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                          zero_point: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return int8_linear(x, _signed(weight_t, zero_point).t(), weight_scale, bias)

    @int8_linear_u8_op.register_fake
    def _(x, weight_t, weight_scale, zero_point, bias):  # noqa: ANN001
        return x.new_empty(x.shape[:-1] + (weight_t.shape[1],))

    @torch.library.custom_op("optc_onnx::int8_linear_static_u8", mutates_args=())
    def int8_linear_static_u8_op(x: torch.Tensor, weight_t: torch.Tensor,
                                 weight_scale: torch.Tensor, zero_point: torch.Tensor,
                                 bias: torch.Tensor | None, input_scale: torch.Tensor,
                                 input_zero_point: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, _signed(weight_t, zero_point).t(), weight_scale, bias,
                           input_scale, input_zero_point)

    @int8_linear_static_u8_op.register_fake
    def _(x, weight_t, weight_scale, zero_point, bias, input_scale, input_zero_point):  # noqa: ANN001
        return x.new_empty(x.shape[:-1] + (weight_t.shape[1],))

    @torch.library.custom_op("optc_onnx::int8_linear_token", mutates_args=())
    def int8_linear_token_op(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                             rowsum: torch.Tensor, zero_point: torch.Tensor | None,
                             bias: torch.Tensor | None) -> torch.Tensor:
        weight = weight_t if zero_point is None else _signed(weight_t, zero_point)
        return int8_linear(x, weight.t(), weight_scale, bias, act_scales="token")

    @int8_linear_token_op.register_fake
    def _(x, weight_t, weight_scale, rowsum, zero_point, bias):  # noqa: ANN001
        return x.new_empty(x.shape[:-1] + (weight_t.shape[1],))

    return int8_linear_op


def _signed(weight_u8: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return (weight_u8.to(torch.int16) - zero_point.to(torch.int16)).to(torch.int8)


@functools.cache
def _declare_schema() -> Any:
    import onnx
    import onnxscript

    if not onnx.defs.has("DynamicQuantizeMatMul", "com.microsoft"):
        P = onnx.defs.OpSchema.FormalParameter
        Opt = onnx.defs.OpSchema.FormalParameterOption
        onnx.defs.register_schema(onnx.defs.OpSchema(
            "DynamicQuantizeMatMul", "com.microsoft", 1,
            inputs=[P("A", "T1", ""), P("B", "T2", ""), P("b_scale", "T1", ""),
                    P("b_zero_point", "T2", "", param_option=Opt.Optional),
                    P("bias", "T1", "", param_option=Opt.Optional)],
            outputs=[P("Y", "T1", "")],
            type_constraints=[("T1", ["tensor(float)"], ""),
                              ("T2", ["tensor(int8)", "tensor(uint8)"], "")],
        ))
    return onnxscript.values.Opset("com.microsoft", 1)


def int8_onnx_rewrite(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """Replace an int8 ``linear`` by a custom op exported as ``DynamicQuantizeMatMul``
    (dynamic) or as ``QuantizeLinear -> DequantizeLinear -> MatMul <- DequantizeLinear(w)``
    (static: the QDQ form, which ONNX Runtime fuses into ``MatMulIntegerToFloat``); the weight
    is stored transposed, ``[in, out]``, as ``MatMul`` wants, and as uint8 with zero point 128
    when some |w| > :data:`SATURATION_FREE_MAX` (8-bit weights: see the module docstring).
    Float linears stay."""
    weight = node.args[1]
    if not (isinstance(weight, Value) and weight.tensor_type.dtype == torch.int8):
        return
    if not weight.is_param:
        return  # traced from the eager kernel
    _custom_op()
    key = f"int8_linear:{weight.name}"
    wide = int(weight.data.abs().max()) > SATURATION_FREE_MAX if weight.data.numel() else False
    if key not in cache:
        data = weight.data.t().contiguous()
        cache[key] = module.add_param(module.unique_param_name(weight.name + "_t"),
                                      as_uint8(data) if wide else data)
    bias = node.arg(2)
    out = node.outputs[0]
    static = node.arg(4) is not None
    if node.attr("act_scales", "tensor") == "token":
        _rewrite_token(module, node, cache[key], wide, cache)
        return
    if wide:
        zp_key = f"int8_linear_zp:{static}:{weight.tensor_type.shape[0] if static else 0}"
        if zp_key not in cache:  # static: per-axis like its scale; dynamic: one scalar
            shape = (weight.tensor_type.shape[0],) if static else ()
            cache[zp_key] = module.add_param(module.unique_param_name("int8_weight_zero_point"),
                                             torch.full(shape, 128, dtype=torch.uint8))
        zp = cache[zp_key]
        op = ("optc_onnx.int8_linear_static_u8.default" if static
              else "optc_onnx.int8_linear_u8.default")
        args: tuple[Any, ...] = (node.args[0], cache[key], node.arg(3), zp, bias)
    else:
        op = ("optc_onnx.int8_linear_static.default" if static
              else "optc_onnx.int8_linear.default")
        args = (node.args[0], cache[key], node.arg(3), bias)
    if static:
        args = args + (node.arg(4), node.arg(5))
    new = module.graph.create_node(op, args, {}, [out.type], names=out.name, after=node)
    module.graph.replace_all_uses(out, new.outputs[0])
    module.graph.remove(node)


def _rewrite_token(module: Module, node: Node, weight_t: Value, wide: bool,
                   cache: dict[str, Any]) -> None:
    """A dynamic int8 linear with per-token activation scales: ``optc_onnx::int8_linear_token``
    (its translation is the op chain of the module docstring), with the weight's row sums
    (``sum_in w``, int32) for the zero-point correction."""
    weight = node.args[1]
    key = f"int8_linear_rowsum:{weight.name}"
    if key not in cache:
        cache[key] = module.add_param(module.unique_param_name(weight.name + "_rowsum"),
                                      weight.data.sum(1, dtype=torch.int32))
    zp = None
    if wide:
        if "int8_linear_zp:token" not in cache:
            cache["int8_linear_zp:token"] = module.add_param(
                module.unique_param_name("int8_weight_zero_point"),
                torch.tensor(128, dtype=torch.uint8))
        zp = cache["int8_linear_zp:token"]
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.int8_linear_token.default",
                                   (node.args[0], weight_t, node.arg(3), cache[key], zp,
                                    node.arg(2)), {}, [out.type], names=out.name, after=node)
    module.graph.replace_all_uses(out, new.outputs[0])
    module.graph.remove(node)


def _int8_linear_token_onnx(x, weight_t, weight_scale, rowsum, zero_point=None,  # noqa: ANN001, ANN202
                            bias=None):  # noqa: ANN001
    import onnx
    from onnxscript import opset18 as op

    zero, last = op.Constant(value_float=0.0), op.Constant(value_ints=[-1])
    top = op.Constant(value_float=255.0)
    lo = op.Min(op.ReduceMin(x, last, keepdims=1), zero)
    hi = op.Max(op.ReduceMax(x, last, keepdims=1), zero)
    scale = op.Div(op.Sub(hi, lo), top)
    scale = op.Where(op.Equal(scale, zero), op.Constant(value_float=1.0), scale)
    zp = op.Clip(op.Round(op.Div(op.Neg(lo), scale)), zero, top)
    q = op.Cast(op.Clip(op.Add(op.Round(op.Div(x, scale)), zp), zero, top),
                to=onnx.TensorProto.UINT8)
    acc = op.MatMulInteger(q, weight_t, None, zero_point)
    acc = op.Sub(acc, op.Mul(op.Cast(zp, to=onnx.TensorProto.INT32), rowsum))
    y = op.Mul(op.Cast(acc, to=onnx.TensorProto.FLOAT), op.Mul(scale, weight_scale))
    return y if bias is None else op.Add(y, bias)


def int8_onnx_translations() -> dict[Any, Any]:
    _custom_op()

    def int8_linear_onnx(x, weight_t, weight_scale, bias=None):  # noqa: ANN001, ANN202
        return _declare_schema().DynamicQuantizeMatMul(x, weight_t, weight_scale, None, bias)

    def int8_linear_static_onnx(x, weight_t, weight_scale, bias, input_scale,  # noqa: ANN001, ANN202
                                input_zero_point):  # noqa: ANN001
        from onnxscript import opset18 as op

        xq = op.QuantizeLinear(x, input_scale, input_zero_point)
        xd = op.DequantizeLinear(xq, input_scale, input_zero_point)
        wd = op.DequantizeLinear(weight_t, weight_scale, axis=1)
        y = op.MatMul(xd, wd)
        return y if bias is None else op.Add(y, bias)

    def int8_linear_u8_onnx(x, weight_t, weight_scale, zero_point, bias=None):  # noqa: ANN001, ANN202
        return _declare_schema().DynamicQuantizeMatMul(x, weight_t, weight_scale, zero_point,
                                                       bias)

    def int8_linear_static_u8_onnx(x, weight_t, weight_scale, zero_point, bias,  # noqa: ANN001, ANN202
                                   input_scale, input_zero_point):  # noqa: ANN001
        from onnxscript import opset18 as op

        xq = op.QuantizeLinear(x, input_scale, input_zero_point)
        xd = op.DequantizeLinear(xq, input_scale, input_zero_point)
        wd = op.DequantizeLinear(weight_t, weight_scale, zero_point, axis=1)
        y = op.MatMul(xd, wd)
        return y if bias is None else op.Add(y, bias)

    return {torch.ops.optc_onnx.int8_linear.default: int8_linear_onnx,
            torch.ops.optc_onnx.int8_linear_static.default: int8_linear_static_onnx,
            torch.ops.optc_onnx.int8_linear_u8.default: int8_linear_u8_onnx,
            torch.ops.optc_onnx.int8_linear_static_u8.default: int8_linear_static_u8_onnx,
            torch.ops.optc_onnx.int8_linear_token.default: _int8_linear_token_onnx}
