"""Sentence embeddings from token states: the pooling a sentence-transformers model declares.

A sentence-transformers directory lists its modules in ``modules.json`` (``Transformer``,
``Pooling``, optionally ``Normalize``); the ``Pooling`` module's ``config.json`` (usually
``1_Pooling/config.json``) says how token states become one vector: ``pooling_mode_mean_tokens``,
``pooling_mode_cls_token``, ``pooling_mode_max_tokens``, ``pooling_mode_mean_sqrt_len_tokens``
(several true: their vectors are concatenated in that library's order). :func:`read_pooling`
reads it into a :class:`Pooling`; a directory without it gets :data:`DEFAULT_POOLING` (mean).
The format itself (reading, writing it next to an hf export) is
:mod:`optc.backends.st_format`'s; :func:`declared_pooling` is the pooling of a module
(its recorded embedding task's, else its source directory's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from optc.backends import st_format
from optc.backends.st_format import POOLING_MODES, PoolingDeclaration
from optc.errors import InputError

__all__ = ["Pooling", "POOLING_MODES", "DEFAULT_POOLING", "read_pooling", "parse_pooling",
           "declared_pooling"]


@dataclass(frozen=True)
class Pooling:
    """How a model's token states (``last_hidden_state``, [batch, seq, hidden]) and attention
    mask become one embedding per text."""

    modes: tuple[str, ...] = ("mean",)
    """Poolings of :data:`POOLING_MODES` whose vectors are concatenated: ``mean`` (masked mean),
    ``cls`` (first token), ``max`` (masked max per feature), ``mean_sqrt_len`` (masked sum /
    sqrt(tokens))."""
    normalize: bool = False
    """Scale each embedding to unit length (a ``Normalize`` module). Cosine similarities, and so
    every optc embedding metric, are the same either way."""
    source: str = "default"
    """Where it was read: the Pooling config's path, ``default`` or ``option``."""

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in POOLING_MODES]
        if not self.modes or bad or len(set(self.modes)) != len(self.modes):
            raise InputError(f"pooling modes {list(self.modes)} are not distinct names of "
                             f"{', '.join(POOLING_MODES)}")

    def describe(self) -> str:
        """``mean``, ``cls+max``, ``mean, normalized``."""
        return "+".join(self.modes) + (", normalized" if self.normalize else "")

    @property
    def spec(self) -> str:
        """The option form :func:`parse_pooling` reads back (``mean+normalize``): what
        ``meta["task"]["pooling"]`` records for the embedding tasks."""
        return st_format.pooling_spec(self.modes, self.normalize)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, width] float32 embeddings of ``hidden`` [batch, seq, hidden] with ``mask``
        [batch, seq] (1: token, 0: padding)."""
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
            raise InputError(f"pooling needs token states [batch, seq, hidden] and a mask "
                             f"[batch, seq], got {tuple(hidden.shape)} and {tuple(mask.shape)}")
        hidden = hidden.float()
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        count = weights.sum(dim=1).clamp(min=1e-9)
        parts = []
        for mode in self.modes:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(weights == 0, -1e9).max(dim=1).values)
            elif mode == "mean":
                parts.append((hidden * weights).sum(dim=1) / count)
            else:
                parts.append((hidden * weights).sum(dim=1) / count.sqrt())
        pooled = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return F.normalize(pooled, p=2.0, dim=-1) if self.normalize else pooled


DEFAULT_POOLING = Pooling()
"""Mean pooling, for models whose directory declares none."""


def parse_pooling(value: str | Pooling | None) -> Pooling | None:
    """A task's ``pooling`` option: ``mean``, ``cls``, ``max``, ``mean_sqrt_len``, several
    joined by ``+`` (concatenated in sentence-transformers' order, :data:`POOLING_MODES`, as an
    export declares them), optionally ``+normalize``; None stays None."""
    if value is None or isinstance(value, Pooling):
        return value
    modes, normalize = st_format.parse_pooling_spec(str(value))
    return Pooling(modes, normalize, "option")


def _from(declaration: PoolingDeclaration | None) -> Pooling | None:
    if declaration is None:
        return None
    return Pooling(declaration.modes, declaration.normalize, declaration.source)


def read_pooling(directory: str | os.PathLike | None) -> Pooling | None:
    """The pooling a sentence-transformers model directory declares (``modules.json`` and its
    ``Pooling`` module's ``config.json``; a ``Normalize`` module sets ``normalize``), or None
    when ``directory`` is not a directory or has no ``modules.json`` (plain Hugging Face
    models). A broken or unsupported declaration is an :class:`InputError` naming the file."""
    return _from(st_format.read_declaration(directory))


def declared_pooling(meta: Mapping[str, Any]) -> Pooling | None:
    """The pooling of a module with this ``meta``: its recorded embedding task's
    (``meta["task"]["pooling"]``), else its source directory's declaration, else mean for a
    module whose task is an embedding task; None otherwise (see
    :func:`optc.backends.st_format.declared_pooling`)."""
    return _from(st_format.declared_pooling(meta))
