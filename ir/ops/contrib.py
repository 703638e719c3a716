"""ONNX Runtime contrib ops (``com.microsoft``) for the ONNX lowerings of optc's ops.

onnx ships no schemas for ONNX Runtime's contrib ops; they are declared here (once, on first
use) so that onnxscript can build nodes of them in torch.onnx translations.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["msft", "onnx_op", "ONNX_OPSET"]

ONNX_OPSET = 18
"""The standard ONNX opset optc exports to."""


def _declare(name: str, inputs: list[tuple[str, bool]], attrs: dict[str, Any]) -> None:
    import onnx

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


@functools.cache
def msft() -> Any:
    """The ``com.microsoft`` opset (version 1) as an onnxscript opset, schemas declared."""
    import onnx
    import onnxscript

    A = onnx.defs.OpSchema.AttrType
    _declare(
        "Attention",
        [("input", False), ("weights", False), ("bias", True), ("mask_index", True),
         ("past", True), ("attention_bias", True)],
        {"num_heads": A.INT, "qkv_hidden_sizes": A.INTS, "scale": A.FLOAT, "unidirectional": A.INT},
    )
    _declare(
        "MultiHeadAttention",
        [("query", False), ("key", True), ("value", True), ("bias", True),
         ("key_padding_mask", True), ("attention_bias", True)],
        {"num_heads": A.INT, "scale": A.FLOAT, "unidirectional": A.INT},
    )
    _declare("Gelu", [("X", False)], {})
    _declare("FastGelu", [("X", False), ("bias", True)], {})
    return onnxscript.values.Opset("com.microsoft", 1)


def onnx_op() -> Any:
    """The standard ONNX opset the backend exports to, as an onnxscript opset."""
    from onnxscript import opset18

    return opset18
