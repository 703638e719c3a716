"""What the Hugging Face backend refuses: IR the generated classes cannot express.

:mod:`optc.backends.hf` collects the weights and sizes; every one-line refusal
(:class:`~optc.errors.BackendError`, ``hf backend: ...``) about a family, head, weight type,
attention or block shape, or a node the generated classes would silently drop, is decided here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optc.backends.hf_families import FAMILIES, HEADS, Family, family_heads
from optc.errors import BackendError
from optc.ir.attributes import Quantization
from optc.ir.core import Module, Node, Parameter, Value

__all__ = ["refuse", "family_of", "head_of", "check_weights", "check_attention", "block_norm",
           "headless_residue", "check_expressed"]


def refuse(message: str) -> BackendError:
    return BackendError(f"hf backend: {message}")


def family_of(module: Module) -> Family:
    """The :class:`Family` of the module's source architecture; refuses others."""
    model_type = str((module.meta.get("source") or {}).get("model_type") or "")
    family = FAMILIES.get(model_type.removeprefix("optc-"))
    if family is None:
        what = f"'{model_type}' models" if model_type else "models of unknown architecture"
        raise refuse(f"{what} are not supported yet (supported: {', '.join(FAMILIES)}); "
                      "export with --backend eager, torchscript or onnx")
    return family


def head_of(module: Module, family: Family) -> str:
    cls = str((module.meta.get("source") or {}).get("class") or "")
    outputs = set(module.graph.outputs)
    for suffix in family_heads(family):
        needs = HEADS[suffix][1]
        if cls.endswith(suffix) and set(needs) <= outputs:
            return suffix
    raise refuse(f"the {cls or 'model'} head (outputs {', '.join(sorted(outputs))}) is not "
                  f"supported for {family.model_type}; supported: "
                  f"{', '.join('*' + s for s in family_heads(family))}")


def check_weights(module: Module) -> None:
    for param in module.params.values():
        quant = [a for a in param.attrs.values() if isinstance(a, Quantization)]
        if quant or param.data.dtype in (torch.int8, torch.uint8):
            what = "quantized" if quant else str(param.data.dtype).removeprefix("torch.")
            raise refuse(f"parameter @{param.name} is {what}; the generated modeling file has "
                          "no int8 representation: export quantized models with --backend onnx "
                          "or torchscript")


def check_attention(att: Any, where: str, pre_ln: bool) -> None:
    """Refuse an attention block the generated classes cannot compute as it is."""
    node = att.node
    why = att.prunable or block_norm(att, pre_ln)
    if why:
        raise refuse(f"{where}: the attention block is not a BERT-style block ({why})")
    if node.attr("int8") is not None:
        raise refuse(f"{where}: int8 attention matmuls (quantize targets=matmuls) have "
                     "no transformers equivalent; export with --backend onnx or "
                     "torchscript")
    if node.attr("causal"):
        raise refuse(f"{where}: causal attention has no place in a bidirectional encoder")
    scale = node.attr("scale")
    if scale is not None and not math.isclose(scale, att.head_dim ** -0.5, rel_tol=1e-6):
        raise refuse(f"{where}: attention scale {scale:g} is not 1/sqrt(head_dim)")
    if node.attr("kind") == "topk" and node.attr("topk_fraction") is not None:
        raise refuse(f"{where}: hard attention with fraction={node.attr('topk_fraction')} "
                     "(ceil(fraction x keys) kept per row) has no field in the Hugging "
                     "Face config, which holds a fixed k: use hard-attention{k=N}, or "
                     "--backend onnx, torchscript or eager")


def headless_residue(ffn: Any, pre_ln: bool) -> tuple[Parameter, Node | None] | None:
    """What an attention block leaves when all its heads are pruned, right before ``ffn``:
    ``norm(bias + x)`` (post-LN) or ``bias + x`` (pre-LN); None when there is none."""
    value = ffn.stream_in
    norm = value.producer if isinstance(value, Value) and not pre_ln else None
    if not pre_ln:
        if norm is None or norm.op != "layer_norm":
            return None
        value = norm.args[0]
    add = value.producer if isinstance(value, Value) else None
    if add is None or add.op != "aten.add.Tensor":
        return None
    params = [a for a in add.args[:2] if isinstance(a, Parameter)]
    if len(params) != 1 or params[0].data.dim() != 1 or len(add.args) > 2 and add.args[2] != 1:
        return None
    return params[0], norm


def block_norm(block: Any, pre_ln: bool) -> str | None:
    """Why ``block`` is not ``norm(x + f(x))`` (post-LN) or ``x + f(norm(x))`` (pre-LN)."""
    if block.residual is None:
        return "its result is not added back to the residual stream"
    if len(block.norms) != 1:
        return f"no layer norm {'before it' if pre_ln else 'right after its residual add'}"
    norm_input = block.norms[0].args[0]
    if pre_ln and norm_input is not block.stream_in:
        return "its layer norm does not read the residual stream"
    if not pre_ln and norm_input is not block.residual.outputs[0]:
        return "no layer norm right after its residual add (pre-LN?)"
    return None


_TABLE_OPS = ("embedding", "layer_norm", "linear")
"""High-level ops the generated classes compute outside the layers when they read the
embeddings', pooler's or task head's parameters."""
_HEAD_ACTIVATIONS = ("tanh", "gelu", "relu")
"""Activations the generated pooler and classification heads apply after a head linear."""


def check_expressed(module: Module, layer_nodes: set[Node], head_params: set[str],
                     cls: str) -> None:
    """Refuse a live high-level node the generated classes do not compute (a plugin op, a norm
    or activation inserted on the residual stream, ...): writing would silently drop it."""
    live: set[Node] = set()
    stack = [v.producer for v in module.graph.outputs.values() if isinstance(v, Value)]
    while stack:
        node = stack.pop()
        if node is None or node in live:
            continue
        live.add(node)
        stack += [v.producer for v in node.inputs]

    def head_linear(value: Any) -> bool:
        producer = value.producer if isinstance(value, Value) else None
        return producer is not None and producer.op == "linear" and producer in expressed

    expressed = set(layer_nodes)
    for node in module.graph:  # in order: a head activation follows its head linear
        if node.op.startswith("aten.") or node in expressed or node not in live:
            continue
        reads_head = any(isinstance(v, Parameter) and (v.name in head_params or (  # or a part
            v.name.rpartition(".part")[0] in head_params)) for v in node.inputs)
        if (node.op in _TABLE_OPS and reads_head) or (
                node.op in _HEAD_ACTIVATIONS and head_linear(node.arg(0))):
            expressed.add(node)
            continue
        raise refuse(f"{node!r} (op '{node.op}') has no equivalent in the generated {cls} "
                      "classes (embeddings, attention and FFN layers, pooler and task head "
                      "only), so the directory would compute without it: remove it, or write "
                      "--backend onnx, torchscript or eager")
