"""int8 ``attention``: the kernels of an ``attention`` node with ``int8="dynamic"|"static"``.

The attribute makes the attention's two matmuls integer matmuls; the projections around it are
untouched (the ``quantize`` pass makes those int8 ``linear`` ops separately):

    attention(%q, %k, %v, %mask) {num_heads=12, head_dim=32, int8="dynamic"}

Q, K and V (the ``[batch, seq, heads*head_dim]`` operands) and the softmax output P are each
quantized per tensor when the node runs, exactly as ONNX's ``DynamicQuantizeLinear`` does
(asymmetric uint8: ``scale = (max(x, 0) - min(x, 0)) / 255``, zero point ``round(-min/scale)``,
round half to even). Then

    scores = float(Σ (q - zq)(k - zk)) * (sq * sk * scale)   (+ causal mask, + mask bias)
    P      = softmax(scores)
    out    = float(Σ (p - zp)(v - zv)) * (sp * sv)

where both sums are exact int32 results.

``int8="static"``: Q, K and V use calibrated scales and zero points instead, held by two more
operands of the node, ``int8_scale: f32[3]`` and ``int8_zero_point: u8[3]`` (Q, K, V; the
``quantize{mode=static}`` pass adds them as parameters), quantized as ONNX ``QuantizeLinear``
does (``clamp(round(x / scale) + zero_point, 0, 255)``); P, whose range [0, 1] is known, uses
the fixed scale 1/255 and zero point 0 (it cannot clip):

    attention(%q, %k, %v, %mask, @s, @z) {num_heads=12, head_dim=32, int8="static"}
 Eager and TorchScript compute them with real int8 x
int8 -> int32 GEMMs (``torch._int_mm``, one per (batch, head): it is 2-D only; on the CPU it
takes any shape), shifting uint8 to int8 and adding the zero-point terms in int32. ONNX lowers
to standard ops: ``DynamicQuantizeLinear`` -> ``MatMulInteger`` (uint8 x uint8, with the zero
points; exact in ONNX Runtime's kernels, no int16 saturation) -> ``Cast`` -> ``Mul`` (static: ``QuantizeLinear`` instead of
``DynamicQuantizeLinear``), with a dynamic sequence length and the padding mask as an additive bias; a query row whose boolean
mask allows no key outputs zeros (as the float op does).

Hard (``kind=topk``) attention and non-f32 operands are refused by the verifier.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

__all__ = ["INT8_ATTENTION_MODES", "dynamic_quantize", "int8_matmul", "int8_attention",
           "INT8_ATTENTION_SCRIPT", "int8_attention_problems", "int8_attention_custom_op",
           "int8_attention_translations"]

INT8_ATTENTION_MODES = ("dynamic", "static")
"""Values of the ``attention`` op's ``int8`` attribute."""

P_SCALE = 1.0 / 255.0
"""Static int8 attention: the scale of the softmax output P (zero point 0)."""


def dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX ``DynamicQuantizeLinear`` of the whole tensor: ``(q - 128 as i8, scale f32[],
    zero point f32[])``; the uint8 value is the int8 one plus 128."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.round(x / scale).add_(zp - 128).clamp_(-128, 127)
    return q.to(torch.int8), scale, zp


def static_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """ONNX ``QuantizeLinear`` to uint8 with ``scale`` and ``zp`` (f32[] each), returned as
    the uint8 value minus 128 in int8."""
    return torch.round(x / scale).add_(zp - 128).clamp_(-128, 127).to(torch.int8)


def int8_matmul(a: torch.Tensor, za: torch.Tensor, b: torch.Tensor,
                zb: torch.Tensor) -> torch.Tensor:
    """``Σ_k (a + 128 - za)(b + 128 - zb)`` in int32 (uint8 operands stored shifted to int8):
    ``a`` is ``[..., m, k]``, ``b`` ``[..., k, n]`` with the same leading dims; one int8 GEMM
    per leading index plus the zero-point terms."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    lead = a.shape[:-2]
    a3, b3 = a.reshape(-1, m, k), b.reshape(-1, k, n)
    if a3.shape[0] == 0 or m == 0 or n == 0:
        return torch.zeros((*lead, m, n), dtype=torch.int32, device=a.device)
    acc = torch.empty(a3.shape[0], m, n, dtype=torch.int32, device=a.device)
    for i in range(a3.shape[0]):
        torch._int_mm(a3[i], b3[i], out=acc[i])
    ca, cb = (128 - za).to(torch.int32), (128 - zb).to(torch.int32)
    rows = cb * a3.sum(-1, dtype=torch.int32)
    cols = ca * b3.sum(-2, dtype=torch.int32) + k * ca * cb
    acc.add_(rows[:, :, None]).add_(cols[:, None, :])
    return acc.reshape(*lead, m, n)


def int8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   mask: torch.Tensor | None, *, num_heads: int, head_dim: int,
                   scale: float | None, causal: bool, kv_index: list[int] | None,
                   scales: torch.Tensor | None = None,
                   zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention on ``[batch, seq, heads*head_dim]`` operands with int8 Q·Kᵀ and P·V
    (see the module docstring); ``kv_index``: the kv head of each query head (grouped-query
    attention), or None. ``causal`` aligns to the last key. ``scales``/``zero_points``
    (f32[3], u8[3]: Q, K, V): static quantization; None: dynamic."""
    batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
    s = float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)
    if scales is None or zero_points is None:
        qq, qs, qz = dynamic_quantize(query)
        kq, ks, kz = dynamic_quantize(key)
        vq, vs, vz = dynamic_quantize(value)
    else:
        zf = zero_points.to(torch.float32)
        qs, ks, vs, qz, kz, vz = scales[0], scales[1], scales[2], zf[0], zf[1], zf[2]
        qq, kq, vq = (static_quantize(query, qs, qz), static_quantize(key, ks, kz),
                      static_quantize(value, vs, vz))
    kv = key.shape[2] // head_dim
    q = qq.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
    k = kq.view(batch, k_len, kv, head_dim).permute(0, 2, 3, 1)
    v = vq.view(batch, k_len, kv, head_dim).transpose(1, 2)
    if kv_index is not None:
        index = torch.tensor(kv_index, dtype=torch.long, device=k.device)
        k, v = k.index_select(1, index), v.index_select(1, index)
    scores = int8_matmul(q, qz, k, kz).to(query.dtype) * (qs * ks * s)
    neg = torch.finfo(scores.dtype).min
    if causal:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, neg)
    if mask is not None:
        scores = scores + torch.where(mask, 0.0, neg).to(scores.dtype) if mask.dtype == torch.bool \
            else scores + mask
    probs = torch.softmax(scores, dim=-1)
    if scales is None or zero_points is None:
        pq, ps, pz = dynamic_quantize(probs)
    else:
        ps = torch.tensor(P_SCALE, dtype=torch.float32, device=probs.device)
        pz = torch.zeros((), dtype=torch.float32, device=probs.device)
        pq = static_quantize(probs, ps, pz)
    out = int8_matmul(pq, pz, v, vz).to(query.dtype) * (ps * vs)
    if mask is not None and mask.dtype == torch.bool:  # a row with no key gives zeros
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * head_dim)


INT8_ATTENTION_SCRIPT = '''
from typing import Tuple


def k_dynamic_quantize(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.round(x / scale).add_(zp - 128).clamp_(-128, 127)
    return q.to(torch.int8), scale, zp


def k_static_quantize(x: Tensor, scale: Tensor, zp: Tensor) -> Tensor:
    return torch.round(x / scale).add_(zp - 128).clamp_(-128, 127).to(torch.int8)


def k_int8_matmul(a: Tensor, za: Tensor, b: Tensor, zb: Tensor) -> Tensor:
    m = a.size(-2)
    k = a.size(-1)
    n = b.size(-1)
    lead = a.size()[:-2]
    a3 = a.reshape(-1, m, k)
    b3 = b.reshape(-1, k, n)
    out_shape = lead + [m, n]
    if a3.size(0) == 0 or m == 0 or n == 0:
        return torch.zeros(out_shape, dtype=torch.int32, device=a.device)
    acc = torch.empty([a3.size(0), m, n], dtype=torch.int32, device=a.device)
    for i in range(a3.size(0)):
        torch._int_mm(a3[i], b3[i], out=acc[i])
    ca = (128 - za).to(torch.int32)
    cb = (128 - zb).to(torch.int32)
    rows = cb * a3.sum(-1, dtype=torch.int32)
    cols = ca * b3.sum(-2, dtype=torch.int32) + k * ca * cb
    acc.add_(rows.unsqueeze(2)).add_(cols.unsqueeze(1))
    return acc.reshape(out_shape)


def k_int8_attention(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor],
                     num_heads: int, head_dim: int, scale: Optional[float], causal: bool,
                     kv_index: Optional[List[int]], scales: Optional[Tensor],
                     zero_points: Optional[Tensor]) -> Tensor:
    batch = query.size(0)
    q_len = query.size(1)
    k_len = key.size(1)
    s = scale if scale is not None else 1.0 / math.sqrt(float(head_dim))
    static = scales is not None and zero_points is not None
    if scales is not None and zero_points is not None:
        zf = zero_points.to(torch.float32)
        qs = scales[0]
        ks = scales[1]
        vs = scales[2]
        qz = zf[0]
        kz = zf[1]
        vz = zf[2]
        qq = k_static_quantize(query, qs, qz)
        kq = k_static_quantize(key, ks, kz)
        vq = k_static_quantize(value, vs, vz)
    else:
        qq, qs, qz = k_dynamic_quantize(query)
        kq, ks, kz = k_dynamic_quantize(key)
        vq, vs, vz = k_dynamic_quantize(value)
    kv = key.size(2) // head_dim
    q = qq.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
    k = kq.view(batch, k_len, kv, head_dim).permute(0, 2, 3, 1)
    v = vq.view(batch, k_len, kv, head_dim).transpose(1, 2)
    if kv_index is not None:
        index = torch.tensor(kv_index, dtype=torch.long, device=k.device)
        k = k.index_select(1, index)
        v = v.index_select(1, index)
    scores = k_int8_matmul(q, qz, k, kz).to(query.dtype) * (qs * ks * s)
    neg = -3.4028234663852886e38
    if causal:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, neg)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores + torch.where(mask, 0.0, neg).to(scores.dtype)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    if static:
        ps = torch.tensor(0.00392156862745098, dtype=torch.float32, device=probs.device)
        pz = torch.zeros([], dtype=torch.float32, device=probs.device)
        pq = k_static_quantize(probs, ps, pz)
    else:
        pq, ps, pz = k_dynamic_quantize(probs)
    out = k_int8_matmul(pq, pz, v, vz).to(query.dtype) * (ps * vs)
    if mask is not None:
        if mask.dtype == torch.bool:
            out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * head_dim)
'''
"""TorchScript kernels, called by ``k_attention`` when ``int8`` is set."""


def int8_attention_problems(node: Any, query_dtype: torch.dtype, scales: Any,
                            zero_points: Any) -> list[str]:
    """Verifier problems with an ``attention`` node's ``int8`` attribute and its static
    operands (``scales``/``zero_points``: the types of operands 4 and 5, or None)."""
    mode = node.attr("int8")
    has = scales is not None or zero_points is not None
    if mode != "static" and has:
        return [f"attention int8_scale/int8_zero_point are the calibrated Q, K, V parameters of "
                f"int8=\"static\" attention, but int8={mode!r}: set int8=\"static\" or drop "
                "them"]
    if mode is None:
        return []
    problems = []
    if mode not in INT8_ATTENTION_MODES:
        problems.append(f"attention int8={mode!r} is not a mode; use int8=\"dynamic\" (Q, K, P, V "
                        "quantized per tensor at run time), \"static\" (calibrated) or drop "
                        "the attribute")
    if mode == "static" and (scales is None or zero_points is None
                             or scales.dtype != torch.float32 or scales.shape != (3,)
                             or zero_points.dtype != torch.uint8 or zero_points.shape != (3,)):
        problems.append(f"attention int8=\"static\" needs operands int8_scale: f32[3] and "
                        f"int8_zero_point: u8[3] (Q, K, V), got {scales or 'none'} and "
                        f"{zero_points or 'none'}; quantize{{mode=static}} adds them")
    if node.attr("kind", "softmax") != "softmax":
        problems.append("attention int8 makes the softmax attention's two matmuls integer; hard "
                        "attention (kind=topk) is not supported: drop int8 or the top-k "
                        "(run hard-attention before quantize{targets=matmuls}, or not at all)")
    if query_dtype != torch.float32:
        problems.append(f"attention int8 quantizes f32 operands, but the query is {query_dtype}: "
                        "cast the model to float32 first or drop int8")
    return problems


# -- ONNX: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul --------------------------------
@functools.cache
def int8_attention_custom_op() -> Any:
    """The torch custom op that carries an int8 attention through torch.onnx export (its eager
    implementation is the exact kernel); the mask arrives as an additive float bias."""

    @torch.library.custom_op("optc_onnx::int8_attention", mutates_args=())
    def int8_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attention_bias: torch.Tensor | None, scales: torch.Tensor | None,
                          zero_points: torch.Tensor | None, num_heads: int, head_dim: int,
                          scale: float, causal: bool, kv_index: list[int]) -> torch.Tensor:
        return int8_attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                              scale=scale, causal=causal, kv_index=list(kv_index) or None,
                              scales=scales, zero_points=zero_points)

    @int8_attention_op.register_fake
    def _(q, k, v, attention_bias, scales, zero_points, num_heads, head_dim, scale, causal,  # noqa: ANN001
          kv_index):  # noqa: ANN001
        return q.new_empty((*q.shape[:-1], num_heads * head_dim))

    return int8_attention_op


def int8_attention_translations() -> dict[Any, Any]:
    """torch.onnx translation of ``optc_onnx::int8_attention`` into standard ONNX ops."""
    import onnx

    from optc.ir.ops.contrib import onnx_op

    int8_attention_custom_op()

    def translate(q, k, v, attention_bias, scales, zero_points, num_heads: int,  # noqa: ANN001, ANN202
                  head_dim: int, scale: float, causal: bool, kv_index: list[int]):
        op = onnx_op()
        f32 = onnx.TensorProto.FLOAT
        static = scales is not None and zero_points is not None
        if static:
            def pick(t, i):  # noqa: ANN001, ANN202
                return op.Gather(t, op.Constant(value_int=i), axis=0)

            qs, ks, vs = pick(scales, 0), pick(scales, 1), pick(scales, 2)
            qz, kz, vz = pick(zero_points, 0), pick(zero_points, 1), pick(zero_points, 2)
            qq, kq, vq = (op.QuantizeLinear(q, qs, qz), op.QuantizeLinear(k, ks, kz),
                          op.QuantizeLinear(v, vs, vz))
        else:
            qq, qs, qz = op.DynamicQuantizeLinear(q)
            kq, ks, kz = op.DynamicQuantizeLinear(k)
            vq, vs, vz = op.DynamicQuantizeLinear(v)
        split = op.Constant(value_ints=[0, 0, -1, head_dim])
        qh = op.Transpose(op.Reshape(qq, split), perm=[0, 2, 1, 3])
        kh = op.Transpose(op.Reshape(kq, split), perm=[0, 2, 3, 1])
        vh = op.Transpose(op.Reshape(vq, split), perm=[0, 2, 1, 3])
        if kv_index:
            index = op.Constant(value_ints=list(kv_index))
            kh, vh = op.Gather(kh, index, axis=1), op.Gather(vh, index, axis=1)
        factor = op.Mul(op.Mul(qs, ks), op.Constant(value_float=scale))
        scores = op.Mul(op.Cast(op.MatMulInteger(qh, kh, qz, kz), to=f32), factor)
        if causal:  # aligned to the last key: query i sees keys <= i + k_len - q_len
            square = op.Slice(op.Shape(scores), op.Constant(value_ints=[2]),
                              op.Constant(value_ints=[4]))
            ones = op.ConstantOfShape(square, value=onnx.helper.make_tensor("value", f32, [1], [1.0]))
            offset = op.Squeeze(op.Sub(op.Shape(scores, start=3, end=4),
                                       op.Shape(scores, start=2, end=3)))
            future = op.Equal(op.Trilu(ones, offset, upper=0), op.Constant(value_float=0.0))
            scores = op.Where(future, op.Constant(value_float=-3.4028234663852886e38), scores)
        if attention_bias is not None:
            scores = op.Add(scores, attention_bias)
        probs = op.Softmax(scores, axis=-1)
        if static:
            ps = op.Constant(value_float=P_SCALE)
            pz = op.Constant(value=onnx.helper.make_tensor("zero", onnx.TensorProto.UINT8, [], [0]))
            pq = op.QuantizeLinear(probs, ps, pz)
        else:
            pq, ps, pz = op.DynamicQuantizeLinear(probs)
        out = op.Mul(op.Cast(op.MatMulInteger(pq, vh, pz, vz), to=f32), op.Mul(ps, vs))
        out = op.Transpose(out, perm=[0, 2, 1, 3])
        return op.Reshape(out, op.Constant(value_ints=[0, 0, num_heads * head_dim]))

    return {torch.ops.optc_onnx.int8_attention.default: translate}
