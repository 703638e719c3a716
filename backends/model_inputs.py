"""Representative inputs for running a module without user data, built from its graph inputs.

    feeds = token_inputs(module, batch=8, seq=128)   # None: no input indexes an embedding table
    low, high = seq_range(module)                    # what the non-batch dims allow
    fixed_length(module)                             # 128: captured for that length only

An integer graph input read as the indices of an ``embedding`` node whose table is a parameter
indexes that table; the one indexing the largest table (the vocabulary) is the token-id input:
its ids are drawn below the table's rows (from 5 up where the table is that large, skipping
the special tokens at the start of most vocabularies). Other integer inputs whose name holds
``mask`` are ones, other integer inputs (token types, which index a small table) zeros,
floating inputs standard normal. Axis 0 of a symbolic shape is the batch, every other symbolic axis the
sequence. A module with no token-id input is not run generically: :func:`token_inputs` returns
None and callers say why they skipped.

A model whose code turns the sequence length into a constant is captured for one length
(:mod:`optc.frontends.capture_shapes`): its token-id input has a symbolic batch and an int
sequence axis, which :func:`fixed_length` reads; :func:`seq_range` is then that length alone,
tasks pad every batch to it and :class:`InputCheck` refuses other lengths.

Used by :mod:`optc.backends.sparse_exec` to time a whole model and by
:mod:`optc.search.measure` to time specialized ones (the self-check's
:func:`optc.backends.selfcheck.example_inputs` adds padded rows and several shapes on top of
the same rules).

The same facts check what users pass: :class:`InputCheck` (built once per compiled module)
refuses tensors that do not fit a module's inputs, and :func:`check_vocabulary` a tokenizer
or teacher whose vocabulary does not fit its token embedding table, each with one
:class:`~optc.errors.ModelInputError` / :class:`~optc.errors.InputError` line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from optc.errors import InputError, ModelInputError
from optc.ir.core import Module, Parameter, Value

__all__ = ["InputCheck", "check_vocabulary", "embedding_limits", "fixed_length", "seq_range",
           "token_inputs", "token_vocabulary"]


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


def fixed_length(module: Module) -> int | None:
    """The one sequence length the module takes, when it was captured for one: the int size
    of axis 1 of its token-id input (the one indexing the largest embedding table) whose
    axis 0, the batch, is symbolic. None otherwise (a dynamic sequence, or a module captured
    with static shapes throughout, whose batch is fixed too)."""
    limits = embedding_limits(module)
    if not limits:
        return None
    ids = max(limits, key=lambda name: limits[name])
    value = next(v for v in module.graph.inputs if v.name == ids)
    shape = value.tensor_type.shape
    if len(shape) >= 2 and not isinstance(shape[0], int) and isinstance(shape[1], int):
        return shape[1]
    return None


def seq_range(module: Module) -> tuple[int, int | None]:
    """(min, max) sequence length the module's symbolic non-batch dims allow (max None:
    unbounded); ``(n, n)`` for a module captured for length ``n`` only (:func:`fixed_length`).
    The max of a captured Hugging Face model is its position table."""
    fixed = fixed_length(module)
    if fixed is not None:
        return fixed, fixed
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


def token_vocabulary(module: Module) -> int | None:
    """Rows of the token embedding table (the largest table a graph input indexes), or None
    when no graph input indexes one."""
    limits = embedding_limits(module)
    return max(limits.values()) if limits else None


def check_vocabulary(rows: int | None, size: int | None, why: str, what: str = "the tokenizer",
                     fix: str = "pass tokenizer=PATH with the model's own tokenizer", *,
                     whose: str = "the model's", exact: bool = False) -> None:
    """Refuse ``what`` (a tokenizer of ``size`` tokens, a teacher with a table of ``size``
    rows) for a model whose token embedding table has ``rows`` rows (None for either: not
    known, nothing checked): a larger vocabulary gives ids past the table; with ``exact``, any
    other size means another vocabulary. The message names both sizes and ``fix``."""
    if rows is None or size is None or size == rows or (size < rows and not exact):
        return
    tokenizer = what.endswith("tokenizer")
    past = ", so its ids would index past it" if tokenizer and size > rows else ""
    raise InputError(f"{why}: {what} has {size} {'tokens' if tokenizer else 'rows'} but "
                     f"{whose} embedding table has {rows} rows{past}: {fix}")


def _dims(shape: tuple[Any, ...]) -> str:
    return ", ".join(map(str, shape))


class InputCheck:
    """What each graph input of ``module`` accepts, computed once: its rank, integer or
    floating point, the range of its symbolic sizes (the sequence: the
    position table) and, for ids, the rows of the table they index. Calling it with named
    tensors raises a :class:`~optc.errors.ModelInputError` naming the first input that does
    not fit and what it must be; symbolic sizes must agree across inputs (a mask as long as
    its ids). Cost: one min/max over each id tensor."""

    def __init__(self, module: Module) -> None:
        limits = embedding_limits(module)
        self.types = {v.name: v.tensor_type for v in module.graph.inputs}
        """Graph input name -> its tensor type."""
        self.rows = {name: limits[name] for name in self.types if name in limits}
        """Id input name -> rows of the table it indexes (its ids must stay below)."""
        self.ranges = {d: (r.min, r.max) for d, r in module.dims.items()}
        """Symbolic dim -> (min, max) sizes it allows (max None: unbounded)."""
        self.fixed = fixed_length(module)
        """The one sequence length the module was captured for (None: not one)."""

    def __call__(self, inputs: Mapping[str, Any]) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for name, value in inputs.items():
            t = self.types.get(name)
            if t is None:
                raise ModelInputError(f"unknown input '{name}'; the model takes "
                                      f"{', '.join(self.types)}")
            if not isinstance(value, torch.Tensor):
                raise ModelInputError(f"input '{name}' must be a torch.Tensor, got "
                                      f"{type(value).__name__}")
            if value.dim() != len(t.shape):
                raise ModelInputError(
                    f"input '{name}' must be {len(t.shape)}-D ({_dims(t.shape)}), got "
                    f"{value.dim()}-D shape ({_dims(tuple(value.shape))})")
            if value.is_floating_point() != t.dtype.is_floating_point:
                want = "floating point" if t.dtype.is_floating_point else \
                    "integers" + (" (token ids: .long())" if name in self.rows else "")
                raise ModelInputError(f"input '{name}' must hold {want}, got "
                                      f"{str(value.dtype).replace('torch.', '')}")
            for axis, (dim, size) in enumerate(zip(t.shape, value.shape, strict=True)):
                self._size(name, axis, dim, int(size), seen)
            rows = self.rows.get(name)
            if rows is not None and value.numel() and value.device.type != "meta":  # no values
                low, high = (int(x) for x in torch.aminmax(value))
                if low < 0 or high >= rows:
                    raise ModelInputError(
                        f"input '{name}' holds id {low if low < 0 else high}, but the embedding "
                        f"table it indexes has {rows} rows: its ids must be in 0..{rows - 1}")

    def _size(self, name: str, axis: int, dim: Any, size: int,
              seen: dict[str, tuple[int, str]]) -> None:
        if isinstance(dim, int):  # captured with that size, which the graph may not need...
            if axis == 1 and dim == self.fixed and size != dim and \
                    not isinstance(self.types[name].shape[0], int):  # ...unless it is the length
                raise ModelInputError(f"input '{name}' has {size} tokens along axis 1, but the "
                                      f"model was captured for sequences of {dim} tokens only: "
                                      f"pad inputs to {dim} tokens")
            return
        first = seen.setdefault(dim, (size, name))
        if first[0] != size:
            raise ModelInputError(f"input '{name}' has {dim} {size} along axis {axis} but "
                                  f"'{first[1]}' has {dim} {first[0]}: inputs must agree on "
                                  f"{dim}")
        low, high = self.ranges.get(dim, (0, None))
        if high is not None and size > high:
            limit = "the model's position table" if axis > 0 else "the model"
            raise ModelInputError(f"input '{name}' has {dim} {size} along axis {axis}, but "
                                  f"{limit} allows at most {high}")
        if size < low:
            raise ModelInputError(f"input '{name}' has {dim} {size} along axis {axis}; the "
                                  f"model needs at least {low}")
