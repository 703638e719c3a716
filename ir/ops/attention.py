"""``attention``: multi-head scaled dot-product attention, soft (softmax) or hard (top-k).

Operands are ``[batch, seq, num_heads*head_dim]`` query, key and value and an optional mask
that broadcasts to ``[batch, heads, q_seq, k_seq]`` (boolean, True = attend, or additive).
A query row whose boolean mask allows no key outputs zeros (as torch's SDPA does).

ONNX lowering: the node becomes ONNX Runtime's fused ``com.microsoft.Attention`` (q/k/v
projections packed into one GEMM) or ``MultiHeadAttention``, each node with its own head
count, so pruned models with per-layer head counts keep the fused kernel. Non-f32 attention,
and grouped-query attention (``num_kv_heads`` < ``num_heads``: ORT's fused kernels take equal
head counts), are traced from the eager kernel instead. Hard attention (``kind="topk"``),
grouped-query included, becomes standard ONNX ops with k = min(topk, key length) taken at run
time. When q, k and v are dynamic int8
linears of one input (``quantize``), the node and the three linears become one
``com.microsoft.QAttention`` (one quantization of the input, packed int8 q/k/v weights; see
:mod:`optc.ir.ops.quantized_self_attention`).

``int8="dynamic"|"static"`` (set by ``quantize{targets=...,matmuls}``; static takes two more
operands, the calibrated ``int8_scale: f32[3]`` and ``int8_zero_point: u8[3]`` of Q, K, V)
makes Q·Kᵀ and P·V int8 matmuls:
kernels and ONNX lowering (DynamicQuantizeLinear + MatMulInteger) in
:mod:`optc.ir.ops.quantized_attention`.

Grouped-query attention: key and value are ``[batch, seq, num_kv_heads*head_dim]``; query head
``h`` reads kv head ``kv_heads[h]`` (default ``h // (num_heads // num_kv_heads)``, the
``repeat_kv`` of Llama-style models), so pruning query heads unevenly across groups stays exact.

``rotary`` (also defined here, as it only exists to feed attention): rotary position
embeddings applied per head to a ``[batch, seq, heads*head_dim]`` projection, with the
``rotate_half`` convention (Llama, Mistral, Gemma, Phi-3) or, ``interleaved``, GPT-J's
``rotate_every_two``, from ``cos``/``sin`` tables of shape ``[batch|1, seq, rotary_dim]``.
It is head-count agnostic, so head pruning only slices the
projection before it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from optc.errors import BackendError
from optc.ir.core import Module, Node, Value
from optc.ir.ops.base import (
    Attr,
    OnnxLowering,
    OpDef,
    Operand,
    numel,
    register_op,
    tensor_operand,
)
from optc.ir.ops.linear import check_unit_ids
from optc.ir.ops.quantized_attention import (
    INT8_ATTENTION_SCRIPT,
    int8_attention,
    int8_attention_custom_op,
    int8_attention_problems,
    int8_attention_translations,
)
from optc.ir.ops.quantized_self_attention import (
    int8_qkv,
    int8_self_attention_custom_op,
    int8_self_attention_translations,
    mask_fits_qattention,
    pack_int8_qkv,
)
from optc.ir.types import TensorType, Type

__all__ = ["ATTENTION", "ROTARY", "attention", "rotary", "topk_attention", "kv_index"]


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    int8_scale: torch.Tensor | None = None,
    int8_zero_point: torch.Tensor | None = None,
    *,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    causal: bool = False,
    kind: str = "softmax",
    topk: int | None = None,
    renormalize: bool = False,
    topk_fraction: float | None = None,
    num_kv_heads: int | None = None,
    kv_heads: list[int] | None = None,
    int8: str | None = None,
) -> torch.Tensor:
    """Multi-head attention on [batch, seq, heads*head_dim] operands.

    Key and value have ``num_kv_heads`` heads (grouped-query attention); query head ``h``
    attends with kv head ``kv_index(...)[h]``.

    ``kind="topk"`` is hard attention: after the softmax, each query row keeps its ``topk``
    highest probabilities (ties with the k-th are kept too) and the others are set to zero,
    without renormalizing unless ``renormalize``. Rows with at most ``topk`` keys are soft
    attention, exactly. ``topk_fraction`` instead keeps ceil(fraction * key length).

    ``int8="dynamic"|"static"``: Q·Kᵀ and P·V are int8 matmuls, static with the calibrated Q, K,
    V ``int8_scale``/``int8_zero_point`` (see :mod:`optc.ir.ops.quantized_attention`).
    """
    batch, q_len = query.shape[0], query.shape[1]
    k_len = key.shape[1]
    kv = num_heads if num_kv_heads is None else num_kv_heads
    if int8 is not None:
        grouped = kv != num_heads or kv_heads is not None
        return int8_attention(query, key, value, mask, num_heads=num_heads, head_dim=head_dim,
                              scale=scale, causal=causal,
                              kv_index=kv_index(num_heads, kv, kv_heads) if grouped else None,
                              scales=int8_scale, zero_points=int8_zero_point)
    q = query.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
    k = key.view(batch, k_len, kv, head_dim).transpose(1, 2)
    v = value.view(batch, k_len, kv, head_dim).transpose(1, 2)
    if kv != num_heads or kv_heads is not None:
        index = torch.tensor(kv_index(num_heads, kv, kv_heads), dtype=torch.long, device=k.device)
        k, v = k.index_select(1, index), v.index_select(1, index)
    keep = int(topk or 1) if topk_fraction is None else max(1, math.ceil(topk_fraction * k_len))
    # SDPA's is_causal aligns top-left; here the last query is the last key. Symbolic lengths
    # (export) take the explicit mask too, so tracing adds no q_len == k_len guard.
    if causal and not (type(q_len) is int and q_len == k_len):
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        mask = allowed if mask is None else (allowed & mask if mask.dtype == torch.bool
                                             else mask.masked_fill(~allowed, float("-inf")))
        causal = False
    if kind == "softmax" or keep >= k_len:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    else:
        out = topk_attention(q, k, v, mask, causal, scale, keep, renormalize)
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * v.shape[-1])


def kv_index(num_heads: int, num_kv_heads: int | None, kv_heads: list[int] | None) -> list[int]:
    """The kv head each query head reads."""
    if kv_heads is not None:
        return [int(i) for i in kv_heads]
    kv = num_heads if num_kv_heads is None else num_kv_heads
    group = max(1, num_heads // max(1, kv))
    return [h // group for h in range(num_heads)]


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   causal: bool, scale: float | None, topk: int,
                   renormalize: bool = False) -> torch.Tensor:
    """Hard attention on [batch, heads, seq, head_dim] tensors (``topk`` < key length)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    neg = torch.finfo(scores.dtype).min
    if causal:
        q_len, k_len = scores.shape[-2], scores.shape[-1]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, neg)
    if mask is not None:
        scores = scores.masked_fill(~mask, neg) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    threshold = scores.topk(topk, dim=-1).values[..., -1:]
    probs = probs.masked_fill(scores < threshold, 0.0)
    if renormalize:
        probs = probs / probs.sum(dim=-1, keepdim=True)
    out = torch.matmul(probs, v)
    if mask is not None and mask.dtype == torch.bool:  # a row with no key gives zeros (as SDPA)
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


_SCRIPT = INT8_ATTENTION_SCRIPT + '''
def k_attention(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor],
                int8_scale: Optional[Tensor], int8_zero_point: Optional[Tensor],
                num_heads: int, head_dim: int, scale: Optional[float], causal: bool,
                kind: str, topk: Optional[int], renormalize: bool,
                topk_fraction: Optional[float], num_kv_heads: Optional[int],
                kv_heads: Optional[List[int]], int8: Optional[str]) -> Tensor:
    batch = query.size(0)
    q_len = query.size(1)
    k_len = key.size(1)
    kv = num_kv_heads if num_kv_heads is not None else num_heads
    if int8 is not None:
        kv_index: Optional[List[int]] = None
        if kv != num_heads or kv_heads is not None:
            group = max(1, num_heads // max(1, kv))
            kv_index = [h // group for h in range(num_heads)]
            if kv_heads is not None:
                kv_index = kv_heads
        return k_int8_attention(query, key, value, mask, num_heads, head_dim, scale, causal,
                                kv_index, int8_scale, int8_zero_point)
    q = query.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
    k = key.view(batch, k_len, kv, head_dim).transpose(1, 2)
    v = value.view(batch, k_len, kv, head_dim).transpose(1, 2)
    if kv != num_heads or kv_heads is not None:
        group = max(1, num_heads // max(1, kv))
        index_list: List[int] = [h // group for h in range(num_heads)]
        if kv_heads is not None:
            index_list = kv_heads
        index = torch.tensor(index_list, dtype=torch.long, device=k.device)
        k = k.index_select(1, index)
        v = v.index_select(1, index)
    keep = topk if topk is not None else 1
    if topk_fraction is not None:
        keep = max(1, int(math.ceil(topk_fraction * float(k_len))))
    if causal and q_len != k_len:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        if mask is None:
            mask = allowed
        elif mask.dtype == torch.bool:
            mask = allowed & mask
        else:
            mask = mask.masked_fill(~allowed, float("-inf"))
        causal = False
    if kind == "softmax" or keep >= k_len:
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    else:
        s = scale if scale is not None else 1.0 / math.sqrt(float(head_dim))
        scores = torch.matmul(q, k.transpose(-1, -2)) * s
        neg = -3.4028234663852886e38 if scores.dtype == torch.float32 else -65504.0
        if causal:
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
            scores = scores.masked_fill(~allowed, neg)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, neg)
            else:
                scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        threshold = scores.topk(keep, dim=-1)[0][..., keep - 1:keep]
        probs = probs.masked_fill(scores < threshold, 0.0)
        if renormalize:
            probs = probs / probs.sum(dim=-1, keepdim=True)
        out = torch.matmul(probs, v)
        if mask is not None:
            if mask.dtype == torch.bool:
                out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * head_dim)
'''


def _infer(node: Node) -> list[Type]:
    q = tensor_operand(node, 0)
    assert q is not None
    return [TensorType(q.dtype, q.shape[:-1] + (int(node.attr("num_heads")) * int(node.attr("head_dim")),))]


def _check(node: Node) -> list[str]:
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    if heads < 1 or dim < 1:
        return [f"attention needs num_heads >= 1 and head_dim >= 1, got {heads} and {dim}"]
    problems = []
    kv = node.attr("num_kv_heads")
    kv = heads if kv is None else kv
    kv_heads = node.attr("kv_heads")
    if kv < 1:
        problems.append(f"attention needs num_kv_heads >= 1, got {kv}")
        kv = heads
    if kv_heads is None and heads % kv:
        problems.append(f"attention num_heads {heads} is not a multiple of num_kv_heads {kv}: "
                        "give kv_heads (the kv head of each query head)")
    if kv_heads is not None:
        kv_heads = list(kv_heads)
        if len(kv_heads) != heads or not all(isinstance(i, int) and 0 <= i < kv for i in kv_heads):
            problems.append(f"attention kv_heads {kv_heads} must name a kv head in 0..{kv - 1} for "
                            f"each of the {heads} query heads")
        elif set(kv_heads) != set(range(kv)):
            problems.append(f"attention kv_heads {kv_heads} leaves kv heads unused: remove their "
                            "key/value rows and lower num_kv_heads")
    for i, name in enumerate(("query", "key", "value")):
        t = tensor_operand(node, i)
        assert t is not None
        n = heads if i == 0 else kv
        width = n * dim
        if t.rank != 3 or t.shape[-1] != width:
            what = "num_heads" if i == 0 else "num_kv_heads"
            problems.append(
                f"attention {name} is {t} but {what}*head_dim = {n}*{dim} = {width}: "
                f"operands are [batch, seq, {what}*head_dim]"
            )
    kind = node.attr("kind", "softmax")
    if kind not in ("softmax", "topk"):
        problems.append(f"attention kind must be 'softmax' or 'topk', got {kind!r}")
    fraction = node.attr("topk_fraction")
    if fraction is not None and not (isinstance(fraction, float) and 0 < fraction <= 1):
        problems.append(f"attention topk_fraction must be a float in (0, 1], got {fraction!r}")
    elif kind == "topk" and fraction is None and not (isinstance(node.attr("topk"), int)
                                                      and node.attr("topk") >= 1):
        problems.append("attention kind=topk needs an integer attribute topk >= 1 (or "
                        "topk_fraction)")
    problems += check_unit_ids(node, "head_ids", heads, "heads")
    problems += int8_attention_problems(node, tensor_operand(node, 0).dtype,
                                        tensor_operand(node, 4), tensor_operand(node, 5))
    return problems


def _flops(node: Node, dims: Mapping[str, int]) -> int:
    """Scores plus weighted sum: 4 * batch * q_len * k_len * heads * head_dim."""
    q, k = tensor_operand(node, 0), tensor_operand(node, 1)
    assert q is not None and k is not None
    k_len = numel(k, dims, 2) // max(1, numel(k, dims, 1))
    return 4 * numel(q, dims, 2) * k_len * int(node.attr("num_heads")) * int(node.attr("head_dim"))


# -- ONNX lowering ---------------------------------------------------------------------------
def _create(module: Module, op: str, args: tuple, shape: tuple, dtype: torch.dtype, name: str,
            after: Node | None, before: Node | None) -> Value:
    node = module.graph.create_node(op, args, {}, [TensorType(dtype, shape)], names=name,
                                    after=after, before=None if after is not None else before)
    return node.outputs[0]


def _mask_nodes(module: Module, mask: Value, dtype: torch.dtype, before: Node,
                cache: dict[str, Any]) -> tuple[Value, Value | None]:
    """(additive bias of ``dtype`` in rank 4, [batch, q, 1] "row has a key" for bool masks)."""
    key = ("attention_mask", id(mask), dtype)
    if key in cache:
        return cache[key]
    t = mask.tensor_type
    anchor = mask.producer
    shape = t.shape
    value = mask
    while len(shape) < 4:  # broadcast from the left, as SDPA does
        shape = (1, *shape)
        value = _create(module, "aten.unsqueeze.default", (value, 0), shape, t.dtype,
                        "attention_mask4", anchor, before)
        anchor = value.producer
    valid = None
    if t.dtype == torch.bool:
        bias = _create(module, "aten.where.Scalar", (value, 0.0, torch.finfo(dtype).min),
                       shape, dtype, "attention_bias", anchor, before)
        any_key = _create(module, "aten.any.dim", (value, -1), shape[:3], torch.bool,
                          "attention_rows", bias.producer, before)
        rows = _create(module, "aten.squeeze.dim", (any_key, 1), (shape[0], shape[2]),
                       torch.bool, "attention_rows", any_key.producer, before)
        valid = _create(module, "aten.unsqueeze.default", (rows, -1), (shape[0], shape[2], 1),
                        torch.bool, "attention_rows", rows.producer, before)
    elif t.dtype != dtype:
        bias = _create(module, "aten._to_copy.default", (value,), shape, dtype,
                       "attention_bias", anchor, before)
        bias.producer.kwargs = {"dtype": dtype}
    else:
        bias = value
    cache[key] = (bias, valid)
    return bias, valid


def _packable(node: Node) -> tuple[Value, list[Node]] | None:
    """The shared input and q/k/v linears when they can be packed into one projection."""
    linears = [a.producer if isinstance(a, Value) else None for a in node.args[:3]]
    if not all(n is not None and n.op == "linear" for n in linears):
        return None
    if len({id(n.args[0]) for n in linears}) != 1:
        return None
    if any(len(n.outputs[0].users()) != 1 for n in linears):
        return None
    if not all(isinstance(n.args[1], Value) and n.args[1].is_param for n in linears):
        return None
    return linears[0].args[0], linears


def _onnx_rewrite(module: Module, node: Node, cache: dict[str, Any]) -> None:
    if node.attr("int8") is not None:
        _onnx_rewrite_int8(module, node, cache)
        return
    kind = node.attr("kind", "softmax")
    if kind == "topk":
        _onnx_rewrite_topk(module, node, cache)
        return
    if kind != "softmax":
        raise BackendError(f"onnx backend cannot lower {node!r}: attention kind={kind!r}")
    q = node.args[0].tensor_type
    if q.dtype != torch.float32:
        return  # traced from the eager kernel: ORT's fused CPU kernels take f32 only
    kv = node.attr("num_kv_heads")
    if (kv is not None and kv != node.attr("num_heads")) or node.attr("kv_heads") is not None:
        _traced_with_bias(module, node, cache)  # ORT's fused kernels need equal head counts
        return
    if _fuse_int8_qkv(module, node, cache):
        return
    _fuse(module, node, cache, q.dtype)


def _traced_with_bias(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """Leave ``node`` to be traced from the eager kernel, with a boolean mask turned into an
    additive bias and rows that allow no key set to zero explicitly (the exported SDPA would
    average them instead of giving zeros, as torch does)."""
    mask = node.arg(3)
    if not isinstance(mask, Value) or mask.tensor_type.dtype != torch.bool:
        return
    out = node.outputs[0]
    if module.graph.is_output(out):
        return
    bias, valid = _mask_nodes(module, mask, out.tensor_type.dtype, node, cache)
    node.args = (*node.args[:3], bias, *node.args[4:])
    users = out.users()
    result = _create(module, "aten.where.ScalarOther", (valid, out, 0.0), out.type.shape,
                     out.type.dtype, out.name + "_rows", node, None)
    for user in users:
        user.replace_input(out, result)


def _fuse(module: Module, node: Node, cache: dict[str, Any], bias_dtype: torch.dtype) -> None:
    """Replace ``node`` by the fused custom op (its mask as an additive ``bias_dtype`` bias)."""
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, bias_dtype, node, cache) if isinstance(mask, Value)
                   else (None, None))
    attrs = {"num_heads": heads, "head_dim": dim, "scale": scale,
             "causal": bool(node.attr("causal", False))}
    packed = _packable(node)
    if packed is not None:
        x, linears = packed
        weight = torch.cat([n.args[1].data for n in linears], 0).t().contiguous()
        biases = []
        for n in linears:
            b = n.arg(2)
            biases.append(b.data if isinstance(b, Value) and b.is_param
                          else torch.zeros(n.args[1].data.shape[0], dtype=weight.dtype))
        stem = linears[0].args[1].name.rsplit(".", 1)[0]
        w = module.add_param(module.unique_param_name(f"{stem}.qkv_weight"), weight)
        b = module.add_param(module.unique_param_name(f"{stem}.qkv_bias"), torch.cat(biases))
        args: tuple = (x, w, b, bias)
        op = "optc_onnx.self_attention.default"
    else:
        args = (node.args[0], node.args[1], node.args[2], bias)
        op = "optc_onnx.multi_head_attention.default"
    _register_custom_ops()
    out = node.outputs[0]
    new = module.graph.create_node(op, args, attrs, [out.type], names=out.name + "_fused", after=node)
    _replace_attention(module, node, new, valid)


def _onnx_rewrite_topk(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """Hard attention becomes standard ONNX ops (MatMul, Softmax, TopK threshold, Where) with
    k = min(topk, key length) taken at run time, so shorter sequences are soft attention.
    Grouped-query attention too: the kv head each query head reads is gathered in the graph
    (tracing the eager kernel would freeze k, and ORT's TopK fails on fewer keys than k)."""
    q = node.args[0].tensor_type
    kv = node.attr("num_kv_heads")
    grouped = (kv is not None and kv != node.attr("num_heads")) or node.attr("kv_heads") is not None
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, q.dtype, node, cache) if isinstance(mask, Value)
                   else (None, None))
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False)), "topk": int(node.attr("topk") or 1),
             "renormalize": bool(node.attr("renormalize", False)),
             "topk_fraction": float(node.attr("topk_fraction") or 0.0),
             "kv_index": kv_index(heads, kv, node.attr("kv_heads")) if grouped else []}
    _register_custom_ops()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.topk_attention.default",
                                   (node.args[0], node.args[1], node.args[2], bias), attrs,
                                   [out.type], names=out.name + "_topk", after=node)
    _replace_attention(module, node, new, valid)


def _onnx_rewrite_int8(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """int8 attention becomes DynamicQuantizeLinear + MatMulInteger (standard ONNX ops)."""
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, node.args[0].tensor_type.dtype, node, cache)
                   if isinstance(mask, Value) else (None, None))
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    kv = node.attr("num_kv_heads")
    grouped = (kv is not None and kv != heads) or node.attr("kv_heads") is not None
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False)),
             "kv_index": kv_index(heads, kv, node.attr("kv_heads")) if grouped else []}
    int8_attention_custom_op()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.int8_attention.default",
                                   (node.args[0], node.args[1], node.args[2], bias, node.arg(4),
                                    node.arg(5)), attrs,
                                   [out.type], names=out.name + "_int8", after=node)
    _replace_attention(module, node, new, valid)


def _fuse_int8_qkv(module: Module, node: Node, cache: dict[str, Any]) -> bool:
    """Soft attention whose q, k and v are dynamic int8 linears of one input becomes one
    QAttention (:mod:`optc.ir.ops.quantized_self_attention`); False, changing nothing, where
    that does not apply (the caller then emits MultiHeadAttention)."""
    mask = node.arg(3)
    found = int8_qkv(module, node)
    if found is None or not mask_fits_qattention(mask) or found[0].tensor_type.rank != 3:
        return False
    x, linears = found
    valid = None
    if isinstance(mask, Value):
        _, valid = _mask_nodes(module, mask, x.tensor_type.dtype, node, cache)
        t = mask.tensor_type
        anchor, shape = mask.producer, t.shape
        while len(shape) < 4:  # broadcast from the left, as SDPA does
            shape = (1, *shape)
            mask = _create(module, "aten.unsqueeze.default", (mask, 0), shape, t.dtype,
                           "attention_mask4", anchor, node)
            anchor = mask.producer
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False))}
    weight, weight_scale, bias = pack_int8_qkv(module, linears)
    int8_self_attention_custom_op()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.int8_self_attention.default",
                                   (x, weight, weight_scale, bias, mask), attrs, [out.type],
                                   names=out.name + "_qattention", after=node)
    _replace_attention(module, node, new, valid)
    return True


def _replace_attention(module: Module, node: Node, new: Node, valid: Value | None) -> None:
    """Put ``new`` (a custom op for ONNX export) in place of the attention ``node``; rows with
    no key to attend to (``valid`` False) give zeros, as in torch."""
    out = node.outputs[0]
    result = new.outputs[0]
    if valid is not None:
        result = _create(module, "aten.where.ScalarOther", (valid, result, 0.0), out.type.shape,
                         out.type.dtype, out.name + "_rows", new, None)
    module.graph.replace_all_uses(out, result)
    module.graph.remove(node)


@functools.cache
def _register_custom_ops() -> tuple[Any, Any, Any]:
    """torch custom ops that carry the fused attention through torch.onnx export; their eager
    implementations are exact, so tracing and shape inference see real semantics."""

    @torch.library.custom_op("optc_onnx::self_attention", mutates_args=())
    def self_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                       scale: float, causal: bool) -> torch.Tensor:
        qkv = torch.matmul(x, weight) + bias
        q, k, v = qkv.split(num_heads * head_dim, dim=-1)
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal)

    @self_attention.register_fake
    def _(x, weight, bias, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
        return x.new_empty((*x.shape[:-1], num_heads * head_dim))

    @torch.library.custom_op("optc_onnx::multi_head_attention", mutates_args=())
    def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                             scale: float, causal: bool) -> torch.Tensor:
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal)

    @multi_head_attention.register_fake
    def _(q, k, v, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
        return q.new_empty((*q.shape[:-1], num_heads * head_dim))

    @torch.library.custom_op("optc_onnx::topk_attention", mutates_args=())
    def topk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                          scale: float, causal: bool, topk: int, renormalize: bool,
                          topk_fraction: float, kv_index: list[int]) -> torch.Tensor:
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal, kind="topk", topk=topk,
                         renormalize=renormalize, topk_fraction=topk_fraction or None,
                         num_kv_heads=k.shape[-1] // head_dim if kv_index else None,
                         kv_heads=list(kv_index) or None)

    @topk_attention_op.register_fake
    def _(q, k, v, attention_bias, num_heads, head_dim, scale, causal, topk, renormalize,  # noqa: ANN001
          topk_fraction, kv_index):  # noqa: ANN001
        return q.new_empty((*q.shape[:-1], num_heads * head_dim))

    return self_attention, multi_head_attention, topk_attention_op


def _onnx_translations() -> dict[Any, Any]:
    from optc.ir.ops.contrib import msft, onnx_op

    _register_custom_ops()

    def expand_bias(attention_bias, query):  # noqa: ANN001, ANN202
        if attention_bias is None:
            return None
        # ORT wants the bias as [batch|1, heads|1, q_seq, k_seq]: broadcast a mask that is
        # shared by all query rows ([batch, 1, 1, k_seq]) over them.
        op = onnx_op()
        rows = op.Shape(query, start=1, end=2)
        one = op.Constant(value_ints=[1])
        return op.Expand(attention_bias, op.Concat(one, one, rows, one, axis=0))

    def self_attention_onnx(x, weight, bias, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                            scale: float, causal: bool):
        width = num_heads * head_dim
        return msft().Attention(
            x, weight, bias, None, None, expand_bias(attention_bias, x),
            num_heads=num_heads, qkv_hidden_sizes=[width, width, width], scale=scale,
            unidirectional=int(causal),
        )

    def causal_bias(q, k):  # noqa: ANN001, ANN202
        """[1, 1, q_len, k_len] additive bias: query i sees keys <= i + k_len - q_len."""
        op = onnx_op()
        q_len, k_len = op.Shape(q, start=1, end=2), op.Shape(k, start=1, end=2)
        ones = op.ConstantOfShape(op.Concat(q_len, k_len, axis=0), value=_float_tensor(1.0))
        lower = op.Trilu(ones, op.Squeeze(op.Sub(k_len, q_len)), upper=0)
        bias = op.Where(op.Equal(lower, op.Constant(value_float=0.0)),
                        op.CastLike(op.Constant(value_float=-3.4028234663852886e38), q),
                        op.CastLike(op.Constant(value_float=0.0), q))
        return op.Unsqueeze(bias, op.Constant(value_ints=[0, 1]))

    def multi_head_attention_onnx(q, k, v, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                                  scale: float, causal: bool):
        # ORT's unidirectional flag aligns the causal mask top-left when keys outnumber queries
        # (a cache): the causal part is an explicit bias aligned to the last key instead.
        bias = expand_bias(attention_bias, q)
        if causal:
            bias = causal_bias(q, k) if bias is None else onnx_op().Add(bias, causal_bias(q, k))
        return msft().MultiHeadAttention(
            q, k, v, None, None, bias, num_heads=num_heads, scale=scale, unidirectional=0,
        )

    def topk_attention_onnx(q, k, v, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                            scale: float, causal: bool, topk: int, renormalize: bool,
                            topk_fraction: float = 0.0, kv_index: list[int] | None = None):
        op = onnx_op()
        split = op.Constant(value_ints=[0, 0, num_heads, head_dim])
        qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])
        if kv_index:  # grouped-query: [batch, seq, kv, head_dim] -> query head h reads kv_index[h]
            kv_split = op.Constant(value_ints=[0, 0, -1, head_dim])
            heads = op.Constant(value_ints=list(kv_index))
            k = op.Gather(op.Reshape(k, kv_split), heads, axis=2)
            v = op.Gather(op.Reshape(v, kv_split), heads, axis=2)
        kh = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])
        vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])
        scores = op.Mul(op.MatMul(qh, kh), op.CastLike(op.Constant(value_float=scale), q))
        if causal:  # aligned to the last key: query i sees keys <= i + k_len - q_len
            square = op.Slice(op.Shape(scores), op.Constant(value_ints=[2]),
                              op.Constant(value_ints=[4]))
            ones = op.ConstantOfShape(square, value=_float_tensor(1.0))
            offset = op.Squeeze(op.Sub(op.Shape(scores, start=3, end=4),
                                       op.Shape(scores, start=2, end=3)))
            future = op.Equal(op.Trilu(ones, offset, upper=0), op.Constant(value_float=0.0))
            scores = op.Where(future, op.CastLike(op.Constant(value_float=-3.4028234663852886e38),
                                                  q), scores)
        if attention_bias is not None:
            scores = op.Add(scores, attention_bias)
        probs = op.Softmax(scores, axis=-1)
        keys = op.Shape(scores, start=3, end=4)
        if topk_fraction > 0:
            wanted = op.Cast(op.Ceil(op.Mul(op.Cast(keys, to=1),
                                            op.Constant(value_floats=[topk_fraction]))), to=7)
            wanted = op.Max(wanted, op.Constant(value_ints=[1]))
        else:
            wanted = op.Constant(value_ints=[topk])
        keep = op.Min(wanted, keys)
        values, _ = op.TopK(scores, keep, axis=-1, largest=1, sorted=1)
        last = op.Sub(keep, op.Constant(value_ints=[1]))
        threshold = op.Gather(values, last, axis=3)  # [batch, heads, q, 1]
        probs = op.Where(op.Less(scores, threshold), op.CastLike(op.Constant(value_float=0.0), q),
                         probs)
        if renormalize:
            probs = op.Div(probs, op.ReduceSum(probs, op.Constant(value_ints=[-1]), keepdims=1))
        out = op.Transpose(op.MatMul(probs, vh), perm=[0, 2, 1, 3])
        return op.Reshape(out, op.Constant(value_ints=[0, 0, num_heads * head_dim]))

    return {
        torch.ops.optc_onnx.self_attention.default: self_attention_onnx,
        torch.ops.optc_onnx.multi_head_attention.default: multi_head_attention_onnx,
        torch.ops.optc_onnx.topk_attention.default: topk_attention_onnx,
        **int8_attention_translations(),
        **int8_self_attention_translations(),
    }


def _float_tensor(value: float) -> Any:
    import onnx

    return onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [value])


ATTENTION = register_op(OpDef(
    name="attention",
    doc="multi-head scaled dot-product attention over [batch, seq, heads*head_dim] operands",
    operands=(
        Operand("query"),
        Operand("key", same_dtype_as="query"),
        Operand("value", same_dtype_as="query"),
        Operand("mask", dtypes="mask", optional=True, same_dtype_as="query"),
        Operand("int8_scale", optional=True),
        Operand("int8_zero_point", dtypes="int", optional=True),
    ),
    attrs={
        "num_heads": Attr(int, doc="number of heads"),
        "head_dim": Attr(int, doc="size of each head"),
        "scale": Attr(float, None, "score scale (default 1/sqrt(head_dim))"),
        "causal": Attr(bool, False, "mask future positions (query i sees keys <= i + "
                                    "k_len - q_len: aligned to the last key, as with a cache)"),
        "kind": Attr(str, "softmax", "softmax, or topk (hard attention)"),
        "topk": Attr(int, None, "probabilities kept per query row when kind=topk"),
        "renormalize": Attr(bool, False, "kind=topk: rescale the kept probabilities to sum to 1"),
        "topk_fraction": Attr(float, None, "kind=topk: keep ceil(fraction * key length) "
                                           "probabilities instead of topk"),
        "num_kv_heads": Attr(int, None, "key/value heads (grouped-query attention; default "
                                        "num_heads)"),
        "kv_heads": Attr((list, tuple), None, "the kv head each query head reads (default: "
                                              "groups of num_heads/num_kv_heads)"),
        "int8": Attr(str, None, "dynamic: Q·Kᵀ and P·V are int8 matmuls, Q, K, P, V quantized "
                                "per tensor at run time (uint8, as DynamicQuantizeLinear); "
                                "static: Q, K, V with the int8_scale/int8_zero_point operands"),
        "layer": Attr(int, None, "stable id of the transformer layer (its index at capture)",
                      kernel=False),
        "head_ids": Attr(str, None, "stable ids of the heads that remain, as ranges ('0-4,6-11'); "
                                    "absent: all of them", kernel=False),
    },
    infer=_infer,
    check=_check,
    kernel=attention,
    script=_SCRIPT,
    onnx=OnnxLowering(_onnx_rewrite, _onnx_translations),
    flops=_flops,
))


# -- rotary position embeddings -----------------------------------------------------------------
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, head_dim: int,
           interleaved: bool = False) -> torch.Tensor:
    """Rotary embeddings on every head of ``x`` [batch, seq, heads*head_dim]: the first
    ``rotary_dim`` (cos/sin's last dim) features of each head become ``x*cos + rotate_half(x)*sin``
    (``rotate_half(a, b) = (-b, a)``); the rest pass through. ``interleaved``: GPT-J's
    ``rotate_every_two``, pairs of neighbouring features (``(x0, x1) -> (-x1, x0)``), with
    tables that repeat each frequency twice in a row."""
    batch, seq = x.shape[0], x.shape[1]
    h = x.reshape(batch, seq, -1, head_dim)
    rot_dim = cos.shape[-1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    r, rest = h[..., :rot_dim], h[..., rot_dim:]
    half = rot_dim // 2
    if interleaved:
        turned = torch.stack((-r[..., 1::2], r[..., 0::2]), dim=-1).flatten(-2)
    else:
        turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
    out = r * c + turned * s
    if rot_dim < head_dim:
        out = torch.cat((out, rest), dim=-1)
    return out.reshape(batch, seq, x.shape[2])


_ROTARY_SCRIPT = '''
def k_rotary(x: Tensor, cos: Tensor, sin: Tensor, head_dim: int, interleaved: bool) -> Tensor:
    batch = x.size(0)
    seq = x.size(1)
    h = x.reshape(batch, seq, -1, head_dim)
    rot_dim = cos.size(-1)
    c = cos.unsqueeze(2)
    s = sin.unsqueeze(2)
    r = h[..., :rot_dim]
    half = rot_dim // 2
    if interleaved:
        turned = torch.stack((-r[..., 1::2], r[..., 0::2]), dim=-1).flatten(-2)
    else:
        turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
    out = r * c + turned * s
    if rot_dim < head_dim:
        out = torch.cat((out, h[..., rot_dim:]), dim=-1)
    return out.reshape(batch, seq, x.size(2))
'''


def _rotary_infer(node: Node) -> list[Type]:
    x = tensor_operand(node, 0)
    assert x is not None
    return [x]


def _rotary_check(node: Node) -> list[str]:
    x, cos, sin = (tensor_operand(node, i) for i in range(3))
    assert x is not None and cos is not None and sin is not None
    dim = node.attr("head_dim")
    problems = []
    width = x.shape[-1]
    if x.rank != 3 or dim < 2 or (isinstance(width, int) and width % dim):
        problems.append(f"rotary input {x} must be [batch, seq, heads*head_dim] with head_dim "
                        f"{dim} dividing its last dim")
    for name, t in (("cos", cos), ("sin", sin)):
        last = t.shape[-1]
        if t.rank != 3 or not isinstance(last, int) or last % 2 or last > dim:
            problems.append(f"rotary {name} {t} must be [batch|1, seq, rotary_dim] with an even "
                            f"rotary_dim <= head_dim {dim}")
    return problems


ROTARY = register_op(OpDef(
    name="rotary",
    doc="rotary position embeddings (rotate_half) on each head of [batch, seq, heads*head_dim]",
    operands=(Operand("x"), Operand("cos", same_dtype_as="x"), Operand("sin", same_dtype_as="x")),
    attrs={"head_dim": Attr(int, doc="size of each head"),
           "interleaved": Attr(bool, default=False,
                               doc="rotate neighbouring feature pairs (GPT-J), not halves")},
    infer=_rotary_infer,
    check=_rotary_check,
    kernel=rotary,
    script=_ROTARY_SCRIPT,
))
