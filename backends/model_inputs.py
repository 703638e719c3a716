"""Representative inputs for running a module without user data, built from its graph inputs.

    feeds = token_inputs(module, batch=8, seq=128)   # None: no input indexes an embedding table
    low, high = seq_range(module)                    # what the non-batch dims allow

An integer graph input read as the indices of an ``embedding`` node whose table is a parameter
indexes that table; the one indexing the largest table (the vocabulary) is the token-id input:
its ids are drawn below the table's rows (from 5 up where the table is that large, skipping
the special tokens at the start of most vocabularies). Other integer inputs whose name holds
``mask`` are ones, other integer inputs (token types, which index a small table) zeros,
floating inputs standard normal. Axis 0 of a symbolic shape is the batch, every other symbolic axis the
sequence. A module with no token-id input is not run generically: :func:`token_inputs` returns
None and callers say why they skipped.

Used by :mod:`optc.backends.sparse_exec` to time a whole model and by
:mod:`optc.search.measure` to time specialized ones (the self-check's
:func:`optc.backends.selfcheck.example_inputs` adds padded rows and several shapes on top of
the same rules).
"""

from __future__ import annotations

import torch

from optc.ir.core import Module, Parameter, Value

__all__ = ["embedding_limits", "seq_range", "token_inputs"]


def embedding_limits(module: Module) -> dict[str, int]:
    """Graph input name -> rows of the embedding table it indexes (its ids must stay below)."""
    limits: dict[str, int] = {}
    for node in module.graph:
        if node.op != "embedding" or len(node.args) < 2:
            continue
        ids, table = node.args[0], node.args[1]
        if isinstance(ids, Value) and isinstance(table, Parameter) and ids.producer is None \
                and not ids.tensor_type.dtype.is_floating_point:
            limits[ids.name] = min(limits.get(ids.name, 1 << 62), int(table.data.shape[0]))
    return limits


def seq_range(module: Module) -> tuple[int, int | None]:
    """(min, max) sequence length the module's symbolic non-batch dims allow (max None:
    unbounded). The max of a captured Hugging Face model is its position table."""
    low, high = 1, None
    for value in module.graph.inputs:
        for axis, d in enumerate(value.tensor_type.shape):
            if axis == 0 or isinstance(d, int):
                continue
            rng = module.dims.get(d)
            if rng is not None:
                low = max(low, rng.min)
                if rng.max is not None:
                    high = rng.max if high is None else min(high, rng.max)
    return low, high


def token_inputs(module: Module, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """One input set of ``batch`` x ``seq`` tokens for every graph input of ``module`` (see the
    module docstring); None when no graph input is a token-id input."""
    limits = embedding_limits(module)
    if not limits:
        return None
    ids = max(limits, key=lambda name: limits[name])
    gen = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    for value in module.graph.inputs:
        t = value.tensor_type
        shape = [d if isinstance(d, int) else (batch if axis == 0 else seq)
                 for axis, d in enumerate(t.shape)]
        if t.dtype.is_floating_point:
            feeds[value.name] = torch.randn(shape, generator=gen).to(t.dtype)
        elif value.name == ids:
            limit = limits[ids]
            feeds[value.name] = torch.randint(min(5, limit - 1), limit, shape, generator=gen,
                                              dtype=t.dtype)
        elif "mask" in value.name:
            feeds[value.name] = torch.ones(shape, dtype=t.dtype)
        else:
            feeds[value.name] = torch.zeros(shape, dtype=t.dtype)
    return feeds
