"""Small hand-written raised modules in IR text, and helpers, for the Before -> Expected tests
of the structural and compression passes (test_structural_text_ir.py, test_compression_text_ir.py).

The modules are tiny (hidden 8) so that the expected texts stay readable and the tests fast:

- ``LAYER``: one post-LN BERT layer (2 heads of 4, FFN 16, biases, boolean padding mask).
- ``BERT2``: two such layers (``l0.*``, ``l1.*``) with stable layer ids.
- ``LLAMA``: one pre-norm Llama layer: RMS norms, grouped-query attention (4 query heads, 2 kv
  heads of 2) with rotary on q and k, causal, gated SiLU FFN 12, no biases, a final norm.
- ``HEAD_BIAS``: one attention with a per-head additive mask (3 heads of 2), as T5's
  relative-position bias.
"""

from __future__ import annotations

import textwrap

import torch

from optc.backends.eager import to_eager
from optc.ir import Module, collect_problems, parse_module, print_module
from optc.passes.base import Pass, PassResult

__all__ = ["LAYER", "BERT2", "LLAMA", "HEAD_BIAS", "random_weights", "run_pass", "assert_text",
           "edited", "eager_outputs"]


def _text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


LAYER = _text("""
    module @layer {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @q.weight : f32[8,8]
      param @q.bias : f32[8]
      param @k.weight : f32[8,8]
      param @k.bias : f32[8]
      param @v.weight : f32[8,8]
      param @v.bias : f32[8]
      param @o.weight : f32[8,8]
      param @o.bias : f32[8]
      param @ln1.weight : f32[8]
      param @ln1.bias : f32[8]
      param @up.weight : f32[16,8]
      param @up.bias : f32[16]
      param @down.weight : f32[8,16]
      param @down.bias : f32[8]
      param @ln2.weight : f32[8]
      param @ln2.bias : f32[8]
      graph(%x : f32[batch,seq,8], %mask : bool[batch,1,1,seq]) {
        %q : f32[batch,seq,8] = linear(%x, @q.weight, @q.bias)
        %k : f32[batch,seq,8] = linear(%x, @k.weight, @k.bias)
        %v : f32[batch,seq,8] = linear(%x, @v.weight, @v.bias)
        %a : f32[batch,seq,8] = attention(%q, %k, %v, %mask, num_heads=2, head_dim=4, layer=0)
        %o : f32[batch,seq,8] = linear(%a, @o.weight, @o.bias)
        %r : f32[batch,seq,8] = aten.add.Tensor(%o, %x)
        %h : f32[batch,seq,8] = layer_norm(%r, @ln1.weight, @ln1.bias, normalized_shape=[8], eps=1e-12)
        %u : f32[batch,seq,16] = linear(%h, @up.weight, @up.bias, layer=0)
        %g : f32[batch,seq,16] = gelu(%u)
        %d : f32[batch,seq,8] = linear(%g, @down.weight, @down.bias)
        %s : f32[batch,seq,8] = aten.add.Tensor(%d, %h)
        %y : f32[batch,seq,8] = layer_norm(%s, @ln2.weight, @ln2.bias, normalized_shape=[8], eps=1e-12)
        return (hidden=%y)
      }
    }
    """)

BERT2 = _text("""
    module @bert {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @l0.q.weight : f32[8,8]
      param @l0.q.bias : f32[8]
      param @l0.k.weight : f32[8,8]
      param @l0.k.bias : f32[8]
      param @l0.v.weight : f32[8,8]
      param @l0.v.bias : f32[8]
      param @l0.o.weight : f32[8,8]
      param @l0.o.bias : f32[8]
      param @l0.ln1.weight : f32[8]
      param @l0.ln1.bias : f32[8]
      param @l0.up.weight : f32[16,8]
      param @l0.up.bias : f32[16]
      param @l0.down.weight : f32[8,16]
      param @l0.down.bias : f32[8]
      param @l0.ln2.weight : f32[8]
      param @l0.ln2.bias : f32[8]
      param @l1.q.weight : f32[8,8]
      param @l1.q.bias : f32[8]
      param @l1.k.weight : f32[8,8]
      param @l1.k.bias : f32[8]
      param @l1.v.weight : f32[8,8]
      param @l1.v.bias : f32[8]
      param @l1.o.weight : f32[8,8]
      param @l1.o.bias : f32[8]
      param @l1.ln1.weight : f32[8]
      param @l1.ln1.bias : f32[8]
      param @l1.up.weight : f32[16,8]
      param @l1.up.bias : f32[16]
      param @l1.down.weight : f32[8,16]
      param @l1.down.bias : f32[8]
      param @l1.ln2.weight : f32[8]
      param @l1.ln2.bias : f32[8]
      graph(%x : f32[batch,seq,8], %mask : bool[batch,1,1,seq]) {
        %q0 : f32[batch,seq,8] = linear(%x, @l0.q.weight, @l0.q.bias)
        %k0 : f32[batch,seq,8] = linear(%x, @l0.k.weight, @l0.k.bias)
        %v0 : f32[batch,seq,8] = linear(%x, @l0.v.weight, @l0.v.bias)
        %a0 : f32[batch,seq,8] = attention(%q0, %k0, %v0, %mask, num_heads=2, head_dim=4, layer=0)
        %o0 : f32[batch,seq,8] = linear(%a0, @l0.o.weight, @l0.o.bias)
        %r0 : f32[batch,seq,8] = aten.add.Tensor(%o0, %x)
        %h0 : f32[batch,seq,8] = layer_norm(%r0, @l0.ln1.weight, @l0.ln1.bias, normalized_shape=[8], eps=1e-12)
        %u0 : f32[batch,seq,16] = linear(%h0, @l0.up.weight, @l0.up.bias, layer=0)
        %g0 : f32[batch,seq,16] = gelu(%u0)
        %d0 : f32[batch,seq,8] = linear(%g0, @l0.down.weight, @l0.down.bias)
        %s0 : f32[batch,seq,8] = aten.add.Tensor(%d0, %h0)
        %y0 : f32[batch,seq,8] = layer_norm(%s0, @l0.ln2.weight, @l0.ln2.bias, normalized_shape=[8], eps=1e-12)
        %q1 : f32[batch,seq,8] = linear(%y0, @l1.q.weight, @l1.q.bias)
        %k1 : f32[batch,seq,8] = linear(%y0, @l1.k.weight, @l1.k.bias)
        %v1 : f32[batch,seq,8] = linear(%y0, @l1.v.weight, @l1.v.bias)
        %a1 : f32[batch,seq,8] = attention(%q1, %k1, %v1, %mask, num_heads=2, head_dim=4, layer=1)
        %o1 : f32[batch,seq,8] = linear(%a1, @l1.o.weight, @l1.o.bias)
        %r1 : f32[batch,seq,8] = aten.add.Tensor(%o1, %y0)
        %h1 : f32[batch,seq,8] = layer_norm(%r1, @l1.ln1.weight, @l1.ln1.bias, normalized_shape=[8], eps=1e-12)
        %u1 : f32[batch,seq,16] = linear(%h1, @l1.up.weight, @l1.up.bias, layer=1)
        %g1 : f32[batch,seq,16] = gelu(%u1)
        %d1 : f32[batch,seq,8] = linear(%g1, @l1.down.weight, @l1.down.bias)
        %s1 : f32[batch,seq,8] = aten.add.Tensor(%d1, %h1)
        %y1 : f32[batch,seq,8] = layer_norm(%s1, @l1.ln2.weight, @l1.ln2.bias, normalized_shape=[8], eps=1e-12)
        return (hidden=%y1)
      }
    }
    """)

LLAMA = _text("""
    module @llama {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @attn_norm.weight : f32[8]
      param @q.weight : f32[8,8]
      param @k.weight : f32[4,8]
      param @v.weight : f32[4,8]
      param @o.weight : f32[8,8]
      param @ffn_norm.weight : f32[8]
      param @gate.weight : f32[12,8]
      param @up.weight : f32[12,8]
      param @down.weight : f32[8,12]
      param @norm.weight : f32[8]
      graph(%x : f32[batch,seq,8], %cos : f32[1,seq,2], %sin : f32[1,seq,2]) {
        %n : f32[batch,seq,8] = rms_norm(%x, @attn_norm.weight, eps=1e-06)
        %q : f32[batch,seq,8] = linear(%n, @q.weight)
        %k : f32[batch,seq,4] = linear(%n, @k.weight)
        %v : f32[batch,seq,4] = linear(%n, @v.weight)
        %qr : f32[batch,seq,8] = rotary(%q, %cos, %sin, head_dim=2)
        %kr : f32[batch,seq,4] = rotary(%k, %cos, %sin, head_dim=2)
        %a : f32[batch,seq,8] = attention(%qr, %kr, %v, none, num_heads=4, head_dim=2, causal=true, num_kv_heads=2, layer=0)
        %o : f32[batch,seq,8] = linear(%a, @o.weight)
        %r : f32[batch,seq,8] = aten.add.Tensor(%x, %o)
        %m : f32[batch,seq,8] = rms_norm(%r, @ffn_norm.weight, eps=1e-06)
        %gt : f32[batch,seq,12] = linear(%m, @gate.weight, layer=0)
        %act : f32[batch,seq,12] = silu(%gt)
        %up : f32[batch,seq,12] = linear(%m, @up.weight)
        %p : f32[batch,seq,12] = aten.mul.Tensor(%act, %up)
        %d : f32[batch,seq,8] = linear(%p, @down.weight)
        %s : f32[batch,seq,8] = aten.add.Tensor(%r, %d)
        %y : f32[batch,seq,8] = rms_norm(%s, @norm.weight, eps=1e-06)
        return (hidden=%y)
      }
    }
    """)

HEAD_BIAS = _text("""
    module @biased {
      dim batch = [1, inf]
      dim seq = [1, 32]
      param @q.weight : f32[6,8]
      param @k.weight : f32[6,8]
      param @v.weight : f32[6,8]
      param @o.weight : f32[8,6]
      graph(%x : f32[batch,seq,8], %bias : f32[batch,3,seq,seq]) {
        %q : f32[batch,seq,6] = linear(%x, @q.weight)
        %k : f32[batch,seq,6] = linear(%x, @k.weight)
        %v : f32[batch,seq,6] = linear(%x, @v.weight)
        %a : f32[batch,seq,6] = attention(%q, %k, %v, %bias, num_heads=3, head_dim=2, layer=0)
        %o : f32[batch,seq,8] = linear(%a, @o.weight)
        %r : f32[batch,seq,8] = aten.add.Tensor(%o, %x)
        return (hidden=%r)
      }
    }
    """)


def random_weights(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random float tensor for every parameter ``text`` declares, of its declared shape."""
    gen = torch.Generator().manual_seed(seed)
    declared = parse_module(text)  # meta tensors: only the shapes are read
    return {name: torch.randn(tuple(p.data.shape), generator=gen) * 0.5
            for name, p in declared.params.items()}


def run_pass(text: str, p: Pass, weights: dict[str, torch.Tensor] | None = None,
             ) -> tuple[Module, PassResult]:
    """Parse ``text`` (with ``weights``, random ones by default), check the pass's
    preconditions, run it and verify the result, as the pass manager does."""
    module = parse_module(text, weights=random_weights(text) if weights is None else weights)
    assert collect_problems(module) == []
    assert p.requires(module) is None
    result = p.run(module)
    assert collect_problems(module) == []
    return module, result


def assert_text(module: Module, expected: str) -> None:
    """The printed module is exactly ``expected`` (value names included: the passes keep the
    names of the values they edit, and name the ones they create deterministically)."""
    assert print_module(module) == _text(expected)


def edited(text: str, changes: dict[str, str | None]) -> str:
    """``text`` with each line ``old`` (stripped; it must occur exactly once) replaced by
    ``changes[old]``, or removed when that is None: expected texts as explicit line edits."""
    lines: list[str | None] = list(text.split("\n"))
    for old, new in changes.items():
        hits = [i for i, line in enumerate(lines) if line is not None and line.strip() == old]
        assert len(hits) == 1, f"{old!r} is not exactly one line of the text"
        line = lines[hits[0]]
        lines[hits[0]] = None if new is None else line[: len(line) - len(line.lstrip())] + new
    return "\n".join(line for line in lines if line is not None)


def eager_outputs(module: Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run the eager lowering of ``module`` on ``inputs``."""
    with torch.no_grad():
        return to_eager(module)(**inputs)
