"""int8 ``embedding``: the kernels of an ``embedding`` whose table is ``i8`` with a ``scale``.

A quantized embedding is the ``embedding`` op (so input checks, the structure analysis and
inspection see it as one) with an ``i8[rows, dim]`` table holding ``round(T / scale)`` per row
(symmetric, zero point 0, values in -127..127) and an ``f32[rows]`` ``scale`` operand:

    embedding(%ids, @word.int8, @word.scale)     # y = scale[ids, None] * table[ids]

The rows are gathered first and dequantized after (one multiply per gathered element), so a
batch touches only its own rows: every backend (eager, TorchScript, ONNX: ``Gather`` on the int8
initializer, ``Cast``, ``Gather`` of the scales and ``Mul``) computes the same floats, and the
table takes a quarter of its fp32 bytes. Dequantizing the table before the gather (ONNX
``DequantizeLinear(axis=0)`` then ``Gather``) is the other lowering; ONNX Runtime runs it as a
full-table dequantization per call (it does not constant-fold ``DequantizeLinear``): 22.7 ms
against 0.13 ms on MiniLM's word table for 128 ids (one thread), so it is not used.

Rows are 8-bit (no GEMM reads them, so the 7-bit limit of int8 linears does not apply).
"""

from __future__ import annotations

import torch

from optc.ir.types import TensorType

__all__ = ["quantize_table", "int8_embedding", "int8_embedding_problems", "INT8_EMBEDDING_SCRIPT",
           "TABLE_BITS"]

TABLE_BITS = 8
"""Bits of a quantized embedding row (-127..127)."""


def quantize_table(table: torch.Tensor, bits: int = TABLE_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric: ``(q: i8[rows, dim], scale: f32[rows])`` with
    ``table ≈ scale[:, None] * q`` and ``|q| <= 2**(bits-1) - 1``; all-zero rows get scale 1
    (a linear's weight rows are quantized the same way)."""
    from optc.ir.ops.quantized_linear import quantize_weight

    return quantize_weight(table, bits)


def int8_embedding(ids: torch.Tensor, table: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the int8 ``table``, dequantized by their ``scale`` after the gather."""
    rows = torch.nn.functional.embedding(ids, table).to(scale.dtype)
    return rows * torch.nn.functional.embedding(ids, scale.unsqueeze(1))


INT8_EMBEDDING_SCRIPT = '''
def k_int8_embedding(ids: Tensor, table: Tensor, scale: Tensor) -> Tensor:
    rows = torch.nn.functional.embedding(ids, table).to(scale.dtype)
    return rows * torch.nn.functional.embedding(ids, scale.unsqueeze(1))
'''
"""TorchScript kernel, called by ``k_embedding`` when the table has a scale."""


def int8_embedding_problems(table: TensorType, scale: TensorType | None) -> list[str]:
    """Problems with an embedding's table and scale operand types (each says how to fix it)."""
    if scale is None:
        if table.dtype == torch.int8:
            return [f"embedding table {table} is i8 but has no f32[{table.shape[0]}] scale "
                    "operand to dequantize it (quantize{embeddings=true} adds one per row)"]
        return []
    if table.dtype != torch.int8:
        return [f"embedding scale {scale} dequantizes an int8 table; this table is {table}: "
                "drop the scale or quantize the table"]
    if scale.dtype != torch.float32 or scale.shape != (table.shape[0],):
        return [f"embedding scale must be f32[{table.shape[0]}] (one per row of {table}), got "
                f"{scale}"]
    return []
