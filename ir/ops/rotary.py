"""``rotary``: rotary position embeddings applied per head to a ``[batch, seq,
heads*head_dim]`` projection, with the ``rotate_half`` convention (Llama, Mistral, Gemma,
Phi-3) or, ``interleaved``, GPT-J's ``rotate_every_two``, from ``cos``/``sin`` tables of shape
``[batch|1, seq, rotary_dim]``. It only exists to feed ``attention``
(:mod:`optc.ir.ops.attention`) and is head-count agnostic, so head pruning only slices the
projection before it."""

from __future__ import annotations

import torch

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, sample_module, tensor_operand
from optc.ir.types import Type

__all__ = ["ROTARY", "rotary"]


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
    traits=frozenset({"position", "head-local"}),
    samples=tuple(sample_module(
        f"%x : f32[2,5,16], %cos : f32[1,5,{rot}], %sin : f32[1,5,{rot}]",
        f"%y : f32[2,5,16] = rotary(%x, %cos, %sin, head_dim=8, interleaved={inter})")
        for rot, inter in ((8, "false"), (8, "true"), (4, "false"))),
))
