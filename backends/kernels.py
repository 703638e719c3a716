"""Reference implementations of optc's high-level ops, used by the eager backend.

Each kernel computes exactly what the ATen pattern it was raised from computed (same ATen calls
in the same order), so raising never changes numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["KERNELS", "linear", "attention", "layer_norm", "embedding", "gelu", "relu", "silu", "tanh"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    num_heads: int,
    head_dim: int,
    scale: float | None = None,
    causal: bool = False,
    kind: str = "softmax",
    topk: int | None = None,
) -> torch.Tensor:
    """Multi-head attention on [batch, seq, heads*head_dim] operands.

    ``mask`` broadcasts to [batch, heads, q_seq, k_seq]: boolean (True = attend) or additive.
    ``kind="topk"`` keeps, for each query, only the ``topk`` highest scores (hard attention).
    """
    batch, q_len = query.shape[0], query.shape[1]
    k_len = key.shape[1]
    q = query.view(batch, q_len, num_heads, head_dim).transpose(1, 2)
    k = key.view(batch, k_len, num_heads, head_dim).transpose(1, 2)
    v = value.view(batch, k_len, num_heads, head_dim).transpose(1, 2)
    if kind == "softmax":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    else:
        out = _topk_attention(q, k, v, mask, causal, scale, int(topk or 1))
    return out.transpose(1, 2).reshape(batch, q_len, num_heads * v.shape[-1])


def _topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
    topk: int,
) -> torch.Tensor:
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    neg = torch.finfo(scores.dtype).min
    if causal:
        q_len, k_len = scores.shape[-2], scores.shape[-1]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, neg)
    if mask is not None:
        scores = scores.masked_fill(~mask, neg) if mask.dtype == torch.bool else scores + mask
    k_eff = min(topk, scores.shape[-1])
    threshold = scores.topk(k_eff, dim=-1).values[..., -1:]
    scores = scores.masked_fill(scores < threshold, neg)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    normalized_shape: list[int],
    eps: float = 1e-5,
) -> torch.Tensor:
    return F.layer_norm(x, list(normalized_shape), weight, bias, eps)


def embedding(ids: torch.Tensor, table: torch.Tensor, *, padding_idx: int | None = None) -> torch.Tensor:
    return F.embedding(ids, table)


def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


KERNELS = {
    "linear": linear,
    "attention": attention,
    "layer_norm": layer_norm,
    "embedding": embedding,
    "gelu": gelu,
    "relu": relu,
    "silu": silu,
    "tanh": tanh,
}
"""Kernel of each high-level op, by op name."""
