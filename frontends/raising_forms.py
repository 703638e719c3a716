"""Forms of attention that research code writes, brought to the form raising.py matches.

- :func:`einsums_as_matmuls`: a two-operand ``einsum`` that is a batched matrix product
  (``"bhqd,bhkd->bhqk"``: shared leading batch letters, one contracted letter) becomes
  ``matmul(x, y)`` or ``matmul(x, transpose(y, -2, -1))``; the attention rule then sees
  ``matmul(q, k^T)`` and ``matmul(p, v)``. Same products (einsum runs them as ``bmm``).
- :func:`fill_term`: ``masked_fill(scores, m, c)`` on the attention scores is the additive
  term ``where(m, c, 0)`` when that is exact: ``c = -inf`` (``s + -inf = -inf``), or a finite
  ``c`` so large that ``c + s`` rounds to ``c`` for every score ``|s| < 2^16`` (e.g.
  ``torch.finfo(dtype).min``), so even a row whose keys are all masked stays uniform as in the
  model. A smaller fill such as ``-1e9`` is refused with the reason: there the model's
  ``masked_fill`` and an additive term differ on fully masked rows. With ``-inf``, a row whose
  keys are all masked is NaN in the model (softmax of ``-inf`` everywhere) but 0 in the
  ``attention`` op (as SDPA): :func:`nan_where_no_key` adds NaN to such rows of the bias, so
  the raised model is NaN exactly where the model is.

Matched on the graph alone (equations and constants), never on names.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["einsums_as_matmuls", "fill_term", "build_fill_term", "nan_where_no_key", "FILLS"]

FILLS = ("aten.masked_fill.Scalar",)
"""Ops that overwrite masked scores with a constant (a candidate additive term)."""

_SWALLOWED = 2.0 ** 16
"""A finite fill must swallow every score below this magnitude (``c + s`` rounds to ``c``)."""


def _matmul_form(equation: str, rank: int) -> bool | None:
    """For ``x, y`` of rank ``rank``: False when ``equation`` is ``matmul(x, y)``, True when it
    is ``matmul(x, y^T)`` (last two dims of y swapped), None when it is neither."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    inputs, out = eq.split("->")
    terms = inputs.split(",")
    if len(terms) != 2 or not all(len(t) == rank for t in (*terms, out)) or rank < 2:
        return None
    a, b = terms
    batch = a[:-2]
    if b[:-2] != batch or out[:-2] != batch or len(set(a + out)) != rank + 1:
        return None
    i, k, j = a[-2], a[-1], out[-1]
    if out[-2] != i or k == j:
        return None
    if b[-2:] == k + j:
        return False
    if b[-2:] == j + k:
        return True
    return None


def einsums_as_matmuls(module: Module) -> int:
    """Rewrite batched-matrix-product einsums as matmuls (see the module docstring); returns
    how many were rewritten."""
    count = 0
    for node in module.graph:
        if node.op != "aten.einsum.default" or len(node.outputs) != 1:
            continue
        equation, operands = node.arg(0), node.arg(1)
        if not isinstance(equation, str) or not isinstance(operands, (list, tuple)) or len(operands) != 2:
            continue
        x, y = operands
        if not all(isinstance(v, Value) and isinstance(v.type, TensorType) for v in (x, y)):
            continue
        rank = x.tensor_type.rank
        if y.tensor_type.rank != rank or x.tensor_type.dtype != y.tensor_type.dtype:
            continue
        swap = _matmul_form(equation, rank)
        if swap is None:
            continue
        if swap:
            yt = y.tensor_type
            shape = yt.shape[:-2] + (yt.shape[-1], yt.shape[-2])
            y = module.graph.create_node("aten.transpose.int", (y, -2, -1), {},
                                         [TensorType(yt.dtype, shape)], names="transpose",
                                         before=node).outputs[0]
            y.producer.loc = node.loc
        product = module.graph.create_node("aten.matmul.default", (x, y), {}, [node.outputs[0].type],
                                           names="matmul", before=node)
        product.loc = node.loc
        module.graph.replace_all_uses(node.outputs[0], product.outputs[0])
        module.graph.remove(node)
        count += 1
    return count


def fill_term(node: Node) -> tuple[Value, float] | str:
    """``(mask, c)`` when ``masked_fill(scores, mask, c)`` is exactly ``scores + where(mask, c,
    0)`` (see the module docstring), else the reason."""
    mask, c = node.arg(1), node.arg(2)
    if not (isinstance(mask, Value) and isinstance(mask.type, TensorType)) or \
            mask.tensor_type.dtype != torch.bool:
        return "the masked_fill mask is not a bool tensor"
    if not isinstance(c, (int, float)) or isinstance(c, bool):
        return "the masked_fill value is not a constant"
    dtype = node.outputs[0].tensor_type.dtype
    if not dtype.is_floating_point:
        return "the masked scores are not floating point"
    fill = torch.tensor(float(c), dtype=dtype)
    if math.isnan(float(c)) or float(fill) >= 0 or not (
            bool(fill + _SWALLOWED == fill) and bool(fill - _SWALLOWED == fill)):
        return (f"masked_fill with {c!r} is not an additive term exactly (the model's rows with "
                "every key masked would differ): fill with float('-inf') or "
                f"torch.finfo({dtype}).min")
    return mask, float(fill)


def build_fill_term(module: Module, mask: Value, c: float, dtype: Any, before: Node,
                    built: list[Node]) -> Value:
    """``where(mask, c, 0)`` of ``dtype`` (new nodes before ``before``, appended to ``built``)."""
    shape = mask.tensor_type.shape
    where = module.graph.create_node("aten.where.Scalar", (mask, c, 0.0), {},
                                     [TensorType(torch.get_default_dtype(), shape)],
                                     names="attention_bias", before=before)
    built.append(where)
    if dtype == torch.get_default_dtype():
        return where.outputs[0]
    cast = module.graph.create_node("aten.to.dtype", (where.outputs[0], dtype), {},
                                    [TensorType(dtype, shape)], names="attention_bias", before=before)
    built.append(cast)
    return cast.outputs[0]


def nan_where_no_key(module: Module, bias: Value, before: Node, built: list[Node]) -> Value:
    """``bias + where(all(bias == -inf, -1), nan, 0)``: NaN on the rows where every key is
    -inf (the model's softmax is NaN there), ``bias`` elsewhere. New nodes before ``before``,
    appended to ``built``."""
    t = bias.tensor_type
    row = t.shape[:-1] + (1,)
    steps = [("aten.eq.Scalar", (bias, -math.inf), TensorType(torch.bool, t.shape)),
             ("aten.all.dim", (None, -1, True), TensorType(torch.bool, row)),
             ("aten.where.Scalar", (None, math.nan, 0.0), TensorType(torch.get_default_dtype(), row))]
    if t.dtype != torch.get_default_dtype():
        steps.append(("aten.to.dtype", (None, t.dtype), TensorType(t.dtype, row)))
    steps.append(("aten.add.Tensor", (bias, None), t))
    value: Value | None = None
    for op, args, type_ in steps:
        args = tuple(value if a is None else a for a in args)
        built.append(module.graph.create_node(op, args, {}, [type_], names="attention_bias",
                                              before=before))
        value = built[-1].outputs[0]
    return value
