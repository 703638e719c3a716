"""``attention{causal=true}`` with more keys than queries (decoding with a cache) aligns the
causal mask to the last key: query i sees keys <= i + k_len - q_len, on every backend, for
soft and hard (top-k) attention, with and without a padding mask. (SDPA's is_causal and ORT's
unidirectional flag align top-left instead.)"""

from __future__ import annotations

import math

import pytest
import torch

from optc.backends.differential import run_backend
from optc.ir import parse_module
from optc.ir.ops.attention import attention


def reference(q, k, v, heads: int, kv: int, mask=None) -> torch.Tensor:  # noqa: ANN001
    b, q_len, k_len, dim = q.shape[0], q.shape[1], k.shape[1], 8
    qh = q.view(b, q_len, heads, dim).transpose(1, 2)
    kh = k.view(b, k_len, kv, dim).transpose(1, 2).repeat_interleave(heads // kv, 1)
    vh = v.view(b, k_len, kv, dim).transpose(1, 2).repeat_interleave(heads // kv, 1)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    if mask is not None:
        allowed = allowed & mask
    scores = (qh @ kh.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ vh).transpose(1, 2).reshape(b, q_len, heads * dim)


def inputs(kv: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"q": torch.randn(2, 3, 16, generator=gen), "k": torch.randn(2, 5, 8 * kv, generator=gen),
            "v": torch.randn(2, 5, 8 * kv, generator=gen)}


def test_kernel_aligns_to_the_last_key() -> None:
    x = inputs()
    got = attention(x["q"], x["k"], x["v"], num_heads=2, head_dim=8, causal=True)
    assert (got - reference(x["q"], x["k"], x["v"], 2, 2)).abs().max() < 1e-6
    # the last query sees every key; the first sees k_len - q_len + 1 of them
    assert not torch.allclose(got, attention(x["q"], x["k"][:, :3], x["v"][:, :3], num_heads=2,
                                             head_dim=8, causal=True))


@pytest.mark.parametrize("kind", ["softmax", "topk"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_every_backend(backend: str, kind: str, with_mask: bool) -> None:
    extra = ', kind="topk", topk=5' if kind == "topk" else ""  # topk = all keys: exact softmax
    mask_in = ", %m : bool[batch,1,1,ks]" if with_mask else ""
    mask_arg = ", %m" if with_mask else ""
    module = parse_module(f"""module @m {{
      dim batch = [1, 8]
      dim qs = [1, 16]
      dim ks = [1, 32]
      graph(%q : f32[batch,qs,16], %k : f32[batch,ks,16], %v : f32[batch,ks,16]{mask_in}) {{
        %a : f32[batch,qs,16] = attention(%q, %k, %v{mask_arg}, num_heads=2, head_dim=8, causal=true{extra})
        return (out=%a)
      }}
    }}""")
    x = inputs()
    mask = None
    if with_mask:
        mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
        mask[1, ..., :2] = False
        x["m"] = mask
    got = run_backend(module, backend, x)["out"]
    assert (got - reference(x["q"], x["k"], x["v"], 2, 2, mask)).abs().max() < 1e-5


def test_grouped_query_attention(backend: str) -> None:
    """ONNX traces the eager kernel here: it must not specialize q_len == k_len."""
    module = parse_module("""module @m {
      dim batch = [1, 8]
      dim qs = [1, 16]
      dim ks = [1, 32]
      graph(%q : f32[batch,qs,16], %k : f32[batch,ks,8], %v : f32[batch,ks,8]) {
        %a : f32[batch,qs,16] = attention(%q, %k, %v, num_heads=2, head_dim=8, causal=true, num_kv_heads=1)
        return (out=%a)
      }
    }""")
    x = inputs(kv=1)
    expected = reference(x["q"], x["k"], x["v"], 2, 1)
    assert (run_backend(module, backend, x)["out"] - expected).abs().max() < 1e-5
