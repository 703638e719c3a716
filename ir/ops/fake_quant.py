"""``fake_quant``: quantize and dequantize in float, with straight-through gradients (QAT).

Quantization-aware training inserts it into the training copy of a module (never into the IR
that is compiled): ``quantize{mode=qat}`` puts one on each target linear's weight and one on
its input. Two schemes, the same arithmetic as the int8 kernels of
:mod:`optc.ir.ops.quantized_linear`:

- ``symmetric`` (weights): per channel along ``axis`` (or per tensor), ``scale = max|x| / qmax``
  with ``qmax = 2**(bits-1) - 1``; ``q = clamp(round(x / scale), -qmax, qmax)``; no scale or
  zero point operands (computed from ``x``, as :func:`quantize_weight` does at the end).
- ``affine`` (activations): per tensor with the given ``scale`` and ``zero_point`` operands,
  ``q = clamp(round(x / scale) + zero_point, 0, 2**bits - 1)``, as ONNX ``QuantizeLinear``.

Forward: ``scale * (q - zero_point)``. Backward: the straight-through estimator, the identity
where ``x`` is inside the representable range and zero where it was clipped (affine).
"""

from __future__ import annotations

import torch

from optc.ir.core import Node
from optc.ir.ops.base import Attr, OpDef, Operand, register_op, sample_module, tensor_operand
from optc.ir.ops.norm import same_as_input

__all__ = ["FAKE_QUANT", "fake_quant"]


def fake_quant(x: torch.Tensor, scale: torch.Tensor | None = None,
               zero_point: torch.Tensor | None = None, *, scheme: str = "symmetric",
               bits: int = 8, axis: int | None = None) -> torch.Tensor:
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        xd = x.detach()
        if axis is None:
            amax = xd.abs().amax()
        else:
            dims = [d for d in range(x.dim()) if d != axis % x.dim()]
            amax = xd.abs().amax(dim=dims, keepdim=True)
        s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        deq = torch.clamp(torch.round(xd / s), -qmax, qmax) * s
        return x + (deq - xd)
    assert scale is not None and zero_point is not None
    top = float(2 ** bits - 1)
    zp = zero_point.to(x.dtype)
    xd = x.detach()
    q = torch.round(xd / scale) + zp
    inside = (q >= 0) & (q <= top)
    deq = (q.clamp(min=0.0).clamp(max=top) - zp) * scale  # one bound each: ONNX-exportable
    return torch.where(inside, x + (deq - xd), deq)


def _check(node: Node) -> list[str]:
    scheme, bits = node.attr("scheme", "symmetric"), node.attr("bits", 8)
    scale, zp = tensor_operand(node, 1), tensor_operand(node, 2)
    problems = []
    if scheme not in ("symmetric", "affine"):
        problems.append(f"fake_quant scheme must be symmetric or affine, got {scheme!r}")
    if not 2 <= bits <= 16:
        problems.append(f"fake_quant bits must be in 2..16, got {bits}")
    if scheme == "affine" and (scale is None or zp is None or scale.shape != () or zp.shape != ()):
        problems.append("fake_quant scheme=affine needs scalar scale and zero_point operands "
                        f"(got {scale or 'none'}, {zp or 'none'})")
    if scheme == "symmetric" and (scale is not None or zp is not None):
        problems.append("fake_quant scheme=symmetric computes its scale from x: drop the scale "
                        "and zero_point operands")
    return problems


_SCRIPT = '''
def k_fake_quant(x: Tensor, scale: Optional[Tensor], zero_point: Optional[Tensor], scheme: str,
                 bits: int, axis: Optional[int]) -> Tensor:
    xd = x.detach()
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        if axis is None:
            amax = xd.abs().amax()
        else:
            a = axis % x.dim()
            dims: List[int] = []
            for d in range(x.dim()):
                if d != a:
                    dims.append(d)
            amax = xd.abs().amax(dim=dims, keepdim=True)
        s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        deq = torch.clamp(torch.round(xd / s), -qmax, qmax) * s
        return x + (deq - xd)
    assert scale is not None and zero_point is not None
    top = float(2 ** bits - 1)
    zp = zero_point.to(x.dtype)
    q = torch.round(xd / scale) + zp
    inside = (q >= 0) & (q <= top)
    deq = (torch.clamp(q, 0.0, top) - zp) * scale
    return torch.where(inside, x + (deq - xd), deq)
'''

FAKE_QUANT = register_op(OpDef(
    name="fake_quant",
    doc="quantize-dequantize in float with straight-through gradients (QAT)",
    operands=(Operand("x"), Operand("scale", optional=True),
              Operand("zero_point", dtypes="any", optional=True)),
    attrs={"scheme": Attr(str, "symmetric", "symmetric (weights, scale from x) or affine "
                                            "(activations, scale and zero_point operands)"),
           "bits": Attr(int, 8, "bits of the integer grid"),
           "axis": Attr(int, None, "channel axis of per-channel symmetric scales; none: per "
                                   "tensor")},
    infer=same_as_input,
    check=_check,
    kernel=fake_quant,
    script=_SCRIPT,
    traits=frozenset({"quantization"}),
    samples=(sample_module("%x : f32[6,8]", '%y : f32[6,8] = fake_quant(%x, scheme="symmetric", '
                                            'bits=8, axis=0)'),
             sample_module("%x : f32[2,3,8]",
                           '%y : f32[2,3,8] = fake_quant(%x, @s, @z, scheme="affine", bits=8)',
                           "param @s : f32[]\nparam @z : u8[]")),
))
