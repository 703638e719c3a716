"""Sparse kernels for linear weights and the compressed parts they read.

The kernels: :func:`sparse_linear` (eager) and ``k_sparse_linear`` (:data:`SPARSE_SCRIPT`,
TorchScript) compute the ``linear`` op with the weight given by its compressed parts (``crow``,
``col``, ``values``: values 1-D for CSR, ``[blocks, R, C]`` for BSR) and rebuild the sparse tensor
on each call (microseconds), because ``torch.jit.save`` writes plain tensors but not BSR ones.
They compute ``(W_sparse @ x2.T).T`` with the bias folded into ``addmm``: the layout in which
torch's CPU sparse kernels are fastest.

Storage: :func:`sparse_parts` gives a weight's CSR or BSR parts (BSR blocks from
:func:`bsr_block`); :func:`semi_structured_weight` a 2:4 weight as torch's semi-structured
tensor (CUDA). Which weight runs which kernel is :mod:`optc.backends.sparse_exec`'s choice.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from optc.errors import BackendError
from optc.ir.attributes import Sparsity

__all__ = ["DEFAULT_BSR_BLOCK", "sparse_linear", "semi_structured_linear", "SPARSE_SCRIPT",
           "bsr_block", "block_density", "sparse_parts", "semi_structured_weight"]

DEFAULT_BSR_BLOCK = 4
"""Largest square BSR block tried for weights whose sparsity has no square block."""


# -- kernels ----------------------------------------------------------------------------------
def sparse_linear(x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
                  bias: torch.Tensor | None, out_features: int, weight: torch.Tensor | None = None,
                  max_tokens: int = -1) -> torch.Tensor:
    """The ``linear`` op with a CSR (``values`` 1-D) or BSR (``values`` [blocks, R, C]) weight
    of shape ``[out_features, x.shape[-1]]`` given by its compressed parts. With ``max_tokens``
    >= 0, inputs of more rows (batch x sequence) than that run dense with ``weight``."""
    x2 = x.reshape(-1, x.shape[-1])
    if weight is not None and 0 <= max_tokens < x2.shape[0]:
        return F.linear(x, weight, bias)
    size = [out_features, x.shape[-1]]
    if values.dim() == 1:
        w = torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
    else:
        w = torch.sparse_bsr_tensor(crow, col, values, size, check_invariants=False)
    y = torch.mm(w, x2.t()) if bias is None else torch.addmm(bias.unsqueeze(1), w, x2.t())
    return y.t().reshape(x.shape[:-1] + (out_features,))


def semi_structured_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The ``linear`` op with a semi-structured (2:4) ``weight``; torch's kernel views ``x`` as
    2-D, so it must be contiguous."""
    return F.linear(x.contiguous(), weight, bias)


SPARSE_SCRIPT = '''
def k_sparse_linear(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Optional[Tensor],
                    out_features: int, weight: Optional[Tensor], max_tokens: int) -> Tensor:
    x2 = x.reshape(-1, x.size(-1))
    if weight is not None and max_tokens >= 0 and x2.size(0) > max_tokens:
        return torch.nn.functional.linear(x, weight, bias)
    size = [out_features, x.size(-1)]
    if values.dim() == 1:
        w = torch.sparse_csr_tensor(crow, col, values, size)
    else:
        w = torch.sparse_bsr_tensor(crow, col, values, size)
    if bias is None:
        y = torch.mm(w, x2.t())
    else:
        y = torch.addmm(bias.unsqueeze(1), w, x2.t())
    shape = x.size()[:-1]
    shape.append(out_features)
    return y.t().reshape(shape)
'''
"""TorchScript source of ``k_sparse_linear`` (the computation of :func:`sparse_linear`)."""



# -- storage ---------------------------------------------------------------------------------------
def bsr_block(weight: torch.Tensor, attr: Sparsity) -> tuple[int, int]:
    """The square BSR block for ``weight`` (see the module docstring)."""
    rows, cols = weight.shape
    if attr.pattern == "block" and attr.block[0] == attr.block[1] and not rows % attr.block[0] \
            and not cols % attr.block[0]:
        return attr.block[0], attr.block[0]
    side = DEFAULT_BSR_BLOCK
    if attr.pattern == "block":
        side = max(side, *attr.block)
    while side > 1 and (rows % side or cols % side):
        side -= 1
    return side, side


def block_density(weight: torch.Tensor, block: tuple[int, int]) -> float:
    r, c = block
    tiles = (weight != 0).reshape(weight.shape[0] // r, r, weight.shape[1] // c, c)
    return float(tiles.any(3).any(1).float().mean())


def sparse_parts(weight: torch.Tensor, kernel: str, block: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow, col, values)`` of ``weight`` as CSR or BSR (the operands of ``sparse_linear``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse (CSR|BSR) tensor support is in beta", UserWarning)
        dense = weight.detach().contiguous()
        s = dense.to_sparse_csr() if kernel == "csr" else dense.to_sparse_bsr(block)
        return s.crow_indices().contiguous(), s.col_indices().contiguous(), s.values().contiguous()


def semi_structured_weight(weight: torch.Tensor, device: torch.device | str = "cuda",
                           name: str = "weight") -> torch.Tensor:
    """``weight`` (2:4) as a semi-structured sparse tensor on ``device`` (CUDA); ``name``
    labels it in the error when torch refuses."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    w = weight.detach().to(device).contiguous()
    # cuSPARSELt (torch's default) takes fp16/bf16/int8; fp32 goes to CUTLASS
    classes = [SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS]
    if w.dtype == torch.float32:
        classes.reverse()
    problems = []
    for cls in classes:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning)
                return cls.from_dense(w)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            problems.append(f"{cls.BACKEND}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
    raise BackendError(f"torch cannot store @{name} ({str(w.dtype)[6:]}{list(w.shape)}) as a 2:4 "
                       f"semi-structured tensor on {w.device} ({'; '.join(problems)}); use "
                       "sparse_kernel=dense or a dtype/shape the kernels take")
