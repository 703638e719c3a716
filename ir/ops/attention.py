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

The eager and TorchScript kernels are in :mod:`optc.ir.ops.attention_kernels`, the ONNX
lowering in :mod:`optc.ir.ops.attention_onnx`; this module holds the op's definition (operands,
attributes, shape inference, checks, cost). ``rotary``, which only feeds attention, is
:mod:`optc.ir.ops.rotary`. Their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping

from optc.ir.core import Node
from optc.ir.ops.attention_kernels import ATTENTION_SCRIPT, attention, kv_index, topk_attention
from optc.ir.ops.attention_onnx import onnx_rewrite, onnx_translations
from optc.ir.ops.base import (
    Attr,
    OnnxLowering,
    OpDef,
    Operand,
    numel,
    register_op,
    sample_module,
    tensor_operand,
)
from optc.ir.ops.linear import check_unit_ids
from optc.ir.ops.quantized_attention import int8_attention_problems
from optc.ir.ops.rotary import ROTARY, rotary
from optc.ir.types import TensorType, Type

__all__ = ["ATTENTION", "ROTARY", "attention", "rotary", "topk_attention", "kv_index"]


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
    softcap = node.attr("softcap")
    if softcap is not None and not softcap > 0:
        problems.append(f"attention softcap must be a positive float, got {softcap!r}")
    if softcap is not None and node.attr("int8") is not None:
        problems.append("attention softcap has no int8 kernel: keep the attention in float "
                        "(quantize{roles=...} without attention)")
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
        "softcap": Attr(float, None, "cap the scaled scores as softcap*tanh(scores/softcap) "
                                     "before the mask (Gemma 2)"),
        "layer": Attr(int, None, "stable id of the transformer layer (its index at capture)",
                      kernel=False),
        "head_ids": Attr(str, None, "stable ids of the heads that remain, as ranges ('0-4,6-11'); "
                                    "absent: all of them", kernel=False),
    },
    infer=_infer,
    check=_check,
    kernel=attention,
    script=ATTENTION_SCRIPT,
    onnx=OnnxLowering(onnx_rewrite, onnx_translations),
    flops=_flops,
    traits=frozenset({"attention"}),
    samples=(
        *(sample_module("%q : f32[2,5,16], %k : f32[2,5,16], %v : f32[2,5,16], "
                        "%mask : bool[2,1,1,5]",
                        f"%y : f32[2,5,16] = attention(%q, %k, %v, %mask, num_heads=4, "
                        f"head_dim=4{attrs})")
          for attrs in ("", ", causal=true", ', kind="topk", topk=2',
                        ', kind="topk", topk_fraction=0.5, renormalize=true',
                        ', int8="dynamic"', ", softcap=0.5")),
        sample_module("%q : f32[2,5,16], %k : f32[2,5,8], %v : f32[2,5,8]",
                      "%y : f32[2,5,16] = attention(%q, %k, %v, none, num_heads=4, head_dim=4, "
                      "num_kv_heads=2, causal=true)"),
        sample_module("%q : f32[2,5,16], %k : f32[2,5,16], %v : f32[2,5,16], "
                      "%mask : f32[2,1,5,5]",
                      "%y : f32[2,5,16] = attention(%q, %k, %v, %mask, num_heads=4, head_dim=4, "
                      "scale=0.3)"),
        sample_module("%q : f32[2,5,16], %k : f32[2,5,16], %v : f32[2,5,16]",
                      '%y : f32[2,5,16] = attention(%q, %k, %v, none, @s, @z, num_heads=4, '
                      'head_dim=4, int8="static")',
                      "param @s : f32[3]\nparam @z : u8[3]"),
    ),
))
