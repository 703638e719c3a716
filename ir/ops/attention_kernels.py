"""The eager and TorchScript kernels of the ``attention`` op (:mod:`optc.ir.ops.attention`):
multi-head scaled dot-product attention, soft (softmax) or hard (top-k), grouped-query
included; the int8 variants are in :mod:`optc.ir.ops.quantized_attention`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from optc.ir.ops.quantized_attention import INT8_ATTENTION_SCRIPT, int8_attention

__all__ = ["attention", "kv_index", "topk_attention", "ATTENTION_SCRIPT"]


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
    softcap: float | None = None,
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

    ``softcap``: the scaled scores are capped as ``softcap * tanh(scores / softcap)`` before
    the mask is added (Gemma 2's attention logit soft-capping).
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
    hard = kind == "topk" and keep < k_len
    if not hard and softcap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    else:
        out = topk_attention(q, k, v, mask, causal, scale, keep if hard else None, renormalize,
                             softcap)
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * v.shape[-1])


def kv_index(num_heads: int, num_kv_heads: int | None, kv_heads: list[int] | None) -> list[int]:
    """The kv head each query head reads."""
    if kv_heads is not None:
        return [int(i) for i in kv_heads]
    kv = num_heads if num_kv_heads is None else num_kv_heads
    group = max(1, num_heads // max(1, kv))
    return [h // group for h in range(num_heads)]


def topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   causal: bool, scale: float | None, topk: int | None,
                   renormalize: bool = False, softcap: float | None = None) -> torch.Tensor:
    """Attention on [batch, heads, seq, head_dim] tensors with the scores written out: hard
    attention (``topk`` < key length; None: every key) and soft-capped scores."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    neg = torch.finfo(scores.dtype).min
    if causal:
        q_len, k_len = scores.shape[-2], scores.shape[-1]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = scores.masked_fill(~allowed, neg)
    if mask is not None:
        scores = scores.masked_fill(~mask, neg) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    if topk is not None:
        threshold = scores.topk(topk, dim=-1).values[..., -1:]
        probs = probs.masked_fill(scores < threshold, 0.0)
        if renormalize:
            probs = probs / probs.sum(dim=-1, keepdim=True)
    out = torch.matmul(probs, v)
    if mask is not None and mask.dtype == torch.bool:  # a row with no key gives zeros (as SDPA)
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


ATTENTION_SCRIPT = INT8_ATTENTION_SCRIPT + '''
def k_attention(query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor],
                int8_scale: Optional[Tensor], int8_zero_point: Optional[Tensor],
                num_heads: int, head_dim: int, scale: Optional[float], causal: bool,
                kind: str, topk: Optional[int], renormalize: bool,
                topk_fraction: Optional[float], num_kv_heads: Optional[int],
                kv_heads: Optional[List[int]], int8: Optional[str],
                softcap: Optional[float]) -> Tensor:
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
    hard = kind == "topk" and keep < k_len
    if not hard and softcap is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    else:
        s = scale if scale is not None else 1.0 / math.sqrt(float(head_dim))
        scores = torch.matmul(q, k.transpose(-1, -2)) * s
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
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
        if hard:
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
"""TorchScript source of the kernel (``k_attention``), the int8 one's included."""
