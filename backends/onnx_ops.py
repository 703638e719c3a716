"""Custom torch ops that carry optc's fused attention through torch.onnx export.

The ONNX backend replaces each ``attention`` node by one of these ops; ``TRANSLATIONS`` turns
them into ONNX Runtime's fused contrib ops (``com.microsoft.Attention`` with packed QKV weights,
``com.microsoft.MultiHeadAttention`` for separately computed q/k/v). Their eager
implementations are exact, so tracing and shape inference see real semantics.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnxscript
import torch

from optc.backends.kernels import attention

__all__ = ["self_attention", "multi_head_attention", "TRANSLATIONS"]

def _contrib_schema(name: str, inputs: list[tuple[str, bool]], attrs: dict[str, Any]) -> Any:
    """Declare an ONNX Runtime contrib op to onnx (which ships no schemas for them) so that
    onnxscript can build nodes of it. Inputs are (name, optional); all share type T."""
    if onnx.defs.has(name, "com.microsoft"):
        return
    P = onnx.defs.OpSchema.FormalParameter
    Opt = onnx.defs.OpSchema.FormalParameterOption
    schema = onnx.defs.OpSchema(
        name, "com.microsoft", 1,
        inputs=[P(n, "T", "", param_option=Opt.Optional if opt else Opt.Single) for n, opt in inputs],
        outputs=[P("output", "T", "")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(int32)"], "")],
        attributes=[onnx.defs.OpSchema.Attribute(a, t, "") for a, t in attrs.items()],
    )
    onnx.defs.register_schema(schema)


_A = onnx.defs.OpSchema.AttrType
_contrib_schema(
    "Attention",
    [("input", False), ("weights", False), ("bias", True), ("mask_index", True), ("past", True),
     ("attention_bias", True)],
    {"num_heads": _A.INT, "qkv_hidden_sizes": _A.INTS, "scale": _A.FLOAT, "unidirectional": _A.INT},
)
_contrib_schema(
    "MultiHeadAttention",
    [("query", False), ("key", True), ("value", True), ("bias", True), ("key_padding_mask", True),
     ("attention_bias", True)],
    {"num_heads": _A.INT, "scale": _A.FLOAT, "unidirectional": _A.INT},
)
_contrib_schema("Gelu", [("X", False)], {})
_contrib_schema("FastGelu", [("X", False), ("bias", True)], {})
_MSFT = onnxscript.values.Opset("com.microsoft", 1)
_ATTENTION = _MSFT.Attention
_MULTI_HEAD_ATTENTION = _MSFT.MultiHeadAttention


@torch.library.custom_op("optc_onnx::self_attention", mutates_args=())
def self_attention(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    attention_bias: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """Attention with packed projections: weight is [in, 3*heads*head_dim] (q | k | v)."""
    qkv = torch.matmul(x, weight) + bias
    q, k, v = qkv.split(num_heads * head_dim, dim=-1)
    return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                     scale=scale, causal=causal)


@self_attention.register_fake
def _(x, weight, bias, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
    return x.new_empty((*x.shape[:-1], num_heads * head_dim))


@torch.library.custom_op("optc_onnx::multi_head_attention", mutates_args=())
def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_bias: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """Attention over already projected [batch, seq, heads*head_dim] q, k, v."""
    return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                     scale=scale, causal=causal)


@multi_head_attention.register_fake
def _(q, k, v, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
    return q.new_empty((*q.shape[:-1], num_heads * head_dim))


def _self_attention_onnx(x, weight, bias, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001
                         scale: float, causal: bool):
    width = num_heads * head_dim
    return _ATTENTION(
        x, weight, bias, None, None, attention_bias,
        num_heads=num_heads,
        qkv_hidden_sizes=[width, width, width],
        scale=scale,
        unidirectional=int(causal),
    )


def _multi_head_attention_onnx(q, k, v, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001
                               scale: float, causal: bool):
    return _MULTI_HEAD_ATTENTION(
        q, k, v, None, None, attention_bias,
        num_heads=num_heads,
        scale=scale,
        unidirectional=int(causal),
    )


def _gelu_onnx(x, approximate: str = "none"):  # noqa: ANN001
    # ORT fuses its own Gelu/FastGelu with a preceding bias add (BiasGelu); it does not
    # recognize the erf expression torch.onnx emits for aten.gelu.
    return _MSFT.FastGelu(x) if approximate == "tanh" else _MSFT.Gelu(x)


TRANSLATIONS = {
    torch.ops.aten.gelu.default: _gelu_onnx,
    torch.ops.optc_onnx.self_attention.default: _self_attention_onnx,
    torch.ops.optc_onnx.multi_head_attention.default: _multi_head_attention_onnx,
}
"""torch.onnx ``custom_translation_table`` entries for the ops above."""

