"""ONNX lowering of a self-attention whose q, k and v projections are dynamic int8 ``linear``
ops reading one input: ONNX Runtime's ``com.microsoft.QAttention``.

    DynamicQuantizeLinear(x) -> QAttention(x_u8, W_qkv: i8[in, 3*hidden], bias, x_scale,
                                           w_scale: f32[3*hidden], mask_index: i32[B, S, S])

instead of three ``DynamicQuantizeMatMul`` (each quantizing ``x`` again) feeding
``MultiHeadAttention`` (which transposes q, k and v to heads first). ``x`` is quantized once;
the q/k/v GEMM is one batch of ``3 * heads`` per-head GEMMs that write heads directly; the
kernel parallelizes over them. Measured on MiniLM (batch 1, seq 128, sums of per-node minimum
kernel times over many ORT profiles): 14.4 -> 14.1 ms at 1 thread, 9.7 -> 8.1 ms at 2 threads.

The integers are the ones eager computes: the three linears quantize the same ``x`` with the
same per-tensor scale and zero point, so one ``DynamicQuantizeLinear`` gives each of them the
same uint8 input; the weights are the IR's i8 rows (per output channel scales become
QAttention's per-column ``weight_scale``), and each output column is ``acc * (x_scale *
w_scale) + bias`` as in ``DynamicQuantizeMatMul``.

Masks: QAttention takes a 0/1 ``mask_index``, so a boolean mask that broadcasts to
``[batch, 1, q, k]`` (no per-head masks) becomes ``int32[batch, seq, seq]``; masked keys get
``mask_filter_value`` = the float32 minimum, the additive bias the ``MultiHeadAttention``
path uses, and rows with no key give zeros (the caller's ``where``). Additive float masks,
static int8 linears (calibrated activation scales), int8 attention matmuls, grouped-query or
hard attention, q/k/v read by other nodes or from different inputs keep the other paths.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from optc.ir.core import Module, Node, Value
from optc.ir.ops.quantized_linear import int8_linear

__all__ = ["INT8_LINEAR_OP", "int8_qkv", "mask_fits_qattention", "pack_int8_qkv",
           "int8_self_attention", "int8_self_attention_custom_op",
           "int8_self_attention_translations"]

INT8_LINEAR_OP = "optc_onnx.int8_linear.default"
"""The node a dynamic int8 ``linear`` becomes in the ONNX lowering (``int8_onnx_rewrite``)."""

OP = "optc_onnx.int8_self_attention.default"


def int8_qkv(module: Module, node: Node) -> tuple[Value, list[Node]] | None:
    """The shared input and the three (already lowered) dynamic int8 linears of an attention
    ``node``'s q, k and v, when QAttention can take them: distinct nodes on one input, each
    read only by ``node`` (not graph outputs), with parameter weights, scales and biases (or
    none)."""
    linears = [a.producer if isinstance(a, Value) else None for a in node.args[:3]]
    if not all(n is not None and n.op == INT8_LINEAR_OP for n in linears):
        return None
    if len({id(n) for n in linears}) != 3 or len({id(n.args[0]) for n in linears}) != 1:
        return None
    if any(len(n.outputs[0].users()) != 1 or module.graph.is_output(n.outputs[0])
           for n in linears):
        return None
    for n in linears:
        bias = n.args[3] if len(n.args) > 3 else None
        if not (isinstance(n.args[1], Value) and n.args[1].is_param
                and isinstance(n.args[2], Value) and n.args[2].is_param
                and (bias is None or (isinstance(bias, Value) and bias.is_param))):
            return None
    widths = {n.args[1].tensor_type.shape[1] for n in linears}
    if len(widths) != 1:
        return None
    return linears[0].args[0], linears


def mask_fits_qattention(mask: Any) -> bool:
    """A mask QAttention's ``mask_index`` can carry: none, or boolean of rank <= 4 with no head
    dimension (size 1 or absent)."""
    if mask is None:
        return True
    if not isinstance(mask, Value):
        return False
    t = mask.tensor_type
    if t.dtype != torch.bool or t.rank > 4:
        return False
    return t.rank < 3 or t.shape[-3] == 1


def pack_int8_qkv(module: Module, linears: list[Node]) -> tuple[Value, Value, Value]:
    """Parameters ``(weight: i8[in, 3*hidden], weight_scale: f32[3*hidden], bias:
    f32[3*hidden])`` of the three lowered int8 linears (their weights are stored ``[in, out]``);
    a linear without a bias contributes zeros."""
    weights = [n.args[1] for n in linears]
    weight = torch.cat([w.data for w in weights], 1).contiguous()
    scale = torch.cat([n.args[2].data.to(torch.float32) for n in linears])
    biases = []
    for n, w in zip(linears, weights, strict=True):
        b = n.args[3] if len(n.args) > 3 else None
        biases.append(b.data.to(torch.float32) if isinstance(b, Value)
                      else torch.zeros(w.data.shape[1], dtype=torch.float32))
    name = weights[0].name  # e.g. encoder.layer.0.attention.self.query.weight_t
    stem = (name[:-len("_t")] if name.endswith("_t") else name).rsplit(".", 2)[0]
    return (module.add_param(module.unique_param_name(f"{stem}.qkv_weight_int8"), weight),
            module.add_param(module.unique_param_name(f"{stem}.qkv_weight_scale"), scale),
            module.add_param(module.unique_param_name(f"{stem}.qkv_bias"), torch.cat(biases)))


def int8_self_attention(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor, mask: torch.Tensor | None, num_heads: int,
                        head_dim: int, scale: float, causal: bool) -> torch.Tensor:
    """What the QAttention node computes, in torch: the packed int8 projection of ``x`` (one
    dynamic quantization, the integers of three int8 linears), then soft attention with the
    boolean ``mask`` (rank 4) and causal masking (query and key lengths are equal)."""
    qkv = int8_linear(x, weight_t.t(), weight_scale, bias)
    batch, seq = x.shape[0], x.shape[1]
    q, k, v = (t.view(batch, seq, num_heads, head_dim).transpose(1, 2)
               for t in qkv.split(num_heads * head_dim, dim=-1))
    if causal:
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        mask = allowed if mask is None else allowed & mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)


@functools.cache
def int8_self_attention_custom_op() -> Any:
    """The torch custom op that carries the packed int8 self-attention through torch.onnx
    export (its eager implementation is :func:`int8_self_attention`)."""

    @torch.library.custom_op("optc_onnx::int8_self_attention", mutates_args=())
    def op(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
           bias: torch.Tensor, mask: torch.Tensor | None, num_heads: int, head_dim: int,
           scale: float, causal: bool) -> torch.Tensor:
        return int8_self_attention(x, weight_t, weight_scale, bias, mask, num_heads, head_dim,
                                   scale, causal)

    @op.register_fake
    def _(x, weight_t, weight_scale, bias, mask, num_heads, head_dim, scale, causal):  # noqa: ANN001
        return x.new_empty((*x.shape[:-1], num_heads * head_dim))

    return op


@functools.cache
def _qattention_opset() -> Any:
    """``com.microsoft`` with QAttention's schema declared (onnx ships no contrib schemas)."""
    import onnx
    import onnxscript

    if not onnx.defs.has("QAttention", "com.microsoft"):
        P = onnx.defs.OpSchema.FormalParameter
        Opt = onnx.defs.OpSchema.FormalParameterOption
        A = onnx.defs.OpSchema.AttrType
        onnx.defs.register_schema(onnx.defs.OpSchema(
            "QAttention", "com.microsoft", 1,
            inputs=[P("input", "T1", ""), P("weight", "T2", ""), P("bias", "T3", ""),
                    P("input_scale", "T3", ""), P("weight_scale", "T3", ""),
                    P("mask_index", "T4", "", param_option=Opt.Optional),
                    P("input_zero_point", "T1", "", param_option=Opt.Optional),
                    P("weight_zero_point", "T2", "", param_option=Opt.Optional),
                    P("past", "T3", "", param_option=Opt.Optional)],
            outputs=[P("output", "T3", "")],
            type_constraints=[("T1", ["tensor(uint8)"], ""),
                              ("T2", ["tensor(int8)", "tensor(uint8)"], ""),
                              ("T3", ["tensor(float)"], ""), ("T4", ["tensor(int32)"], "")],
            attributes=[onnx.defs.OpSchema.Attribute(a, t, "") for a, t in
                        {"num_heads": A.INT, "scale": A.FLOAT, "unidirectional": A.INT,
                         "mask_filter_value": A.FLOAT}.items()],
        ))
    return onnxscript.values.Opset("com.microsoft", 1)


def int8_self_attention_translations() -> dict[Any, Any]:
    """torch.onnx translation of ``optc_onnx::int8_self_attention``: DynamicQuantizeLinear ->
    QAttention, the boolean mask as ``int32[batch, seq, seq]``."""
    import onnx

    int8_self_attention_custom_op()

    def translate(x, weight_t, weight_scale, bias, mask, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                  scale: float, causal: bool):
        from onnxscript import opset18 as op

        xq, xs, xz = op.DynamicQuantizeLinear(x)
        mask_index = None
        if mask is not None:
            batch, seq = op.Shape(x, start=0, end=1), op.Shape(x, start=1, end=2)
            full = op.Expand(mask, op.Concat(batch, op.Constant(value_ints=[1]), seq, seq,
                                             axis=0))
            mask_index = op.Cast(op.Squeeze(full, op.Constant(value_ints=[1])),
                                 to=onnx.TensorProto.INT32)
        return _qattention_opset().QAttention(
            xq, weight_t, bias, xs, weight_scale, mask_index, xz,
            num_heads=num_heads, scale=scale, unidirectional=int(causal),
            mask_filter_value=float(torch.finfo(torch.float32).min))

    return {torch.ops.optc_onnx.int8_self_attention.default: translate}
