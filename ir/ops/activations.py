"""Elementwise activations raised from ATen: ``gelu`` (exact or tanh), ``relu``, ``silu``,
``tanh``.

ONNX lowering of ``gelu``: ONNX Runtime's own ``Gelu``/``FastGelu`` (f32), which it fuses with
a preceding bias add (BiasGelu); it does not recognize the erf expression torch.onnx emits.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from optc.ir.core import Module, Node
from optc.ir.ops.base import Attr, OnnxLowering, OpDef, Operand, register_op, sample_module
from optc.ir.ops.norm import same_as_input

__all__ = ["ACTIVATIONS", "GELU", "RELU", "SILU", "TANH"]

ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
"""Elementwise activations raised from ATen."""


def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


def silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@functools.cache
def _gelu_custom_op() -> Any:
    @torch.library.custom_op("optc_onnx::gelu", mutates_args=())
    def gelu_op(x: torch.Tensor, approximate: str) -> torch.Tensor:
        return F.gelu(x, approximate=approximate)

    @gelu_op.register_fake
    def _(x, approximate):  # noqa: ANN001
        return torch.empty_like(x)

    return gelu_op


def _gelu_rewrite(module: Module, node: Node, cache: dict[str, Any]) -> None:
    if node.args[0].tensor_type.dtype != torch.float32:
        return  # standard ONNX from the eager kernel
    _gelu_custom_op()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.gelu.default", (node.args[0], node.attr("approximate", "none")),
                                   {}, [out.type], names=out.name, after=node)
    module.graph.replace_all_uses(out, new.outputs[0])
    module.graph.remove(node)


def _gelu_translations() -> dict[Any, Any]:
    from optc.ir.ops.contrib import msft

    _gelu_custom_op()

    def gelu_onnx(x, approximate: str = "none"):  # noqa: ANN001, ANN202
        return msft().FastGelu(x) if approximate == "tanh" else msft().Gelu(x)

    return {torch.ops.optc_onnx.gelu.default: gelu_onnx}


_SCRIPTS = {
    "gelu": '''
def k_gelu(x: Tensor, approximate: str) -> Tensor:
    return torch.nn.functional.gelu(x, approximate=approximate)
''',
    "relu": '''
def k_relu(x: Tensor) -> Tensor:
    return torch.relu(x)
''',
    "silu": '''
def k_silu(x: Tensor) -> Tensor:
    return torch.nn.functional.silu(x)
''',
    "tanh": '''
def k_tanh(x: Tensor) -> Tensor:
    return torch.tanh(x)
''',
}

def _sample(op: str) -> str:
    return sample_module("%x : f32[2,3,8]", f"%y : f32[2,3,8] = {op}(%x)")


GELU = register_op(OpDef(
    "gelu", "GELU activation", (Operand("x"),),
    {"approximate": Attr(str, "none", "'none' (erf) or 'tanh'")},
    infer=same_as_input, kernel=gelu, script=_SCRIPTS["gelu"],
    traits=frozenset({"activation", "ffn-activation"}),
    onnx=OnnxLowering(_gelu_rewrite, _gelu_translations),
    samples=tuple(sample_module("%x : f32[2,3,8]",
                                f'%y : f32[2,3,8] = gelu(%x, approximate="{a}")')
                  for a in ("none", "tanh")),
))
RELU = register_op(OpDef("relu", "ReLU activation", (Operand("x"),), infer=same_as_input,
                         kernel=relu, script=_SCRIPTS["relu"],
                         traits=frozenset({"activation", "ffn-activation"}),
                         samples=(_sample("relu"),)))
SILU = register_op(OpDef("silu", "SiLU (swish) activation", (Operand("x"),), infer=same_as_input,
                         kernel=silu, script=_SCRIPTS["silu"],
                         traits=frozenset({"activation", "ffn-activation"}),
                         samples=(_sample("silu"),)))
TANH = register_op(OpDef("tanh", "tanh activation", (Operand("x"),), infer=same_as_input,
                         kernel=tanh, script=_SCRIPTS["tanh"],
                         traits=frozenset({"activation"}),
                         samples=(_sample("tanh"),)))
