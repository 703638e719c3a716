"""Sentence embeddings from token states: the pooling a sentence-transformers model declares.

A sentence-transformers directory lists its modules in ``modules.json`` (``Transformer``,
``Pooling``, optionally ``Normalize``); the ``Pooling`` module's ``config.json`` (usually
``1_Pooling/config.json``) says how token states become one vector: ``pooling_mode_mean_tokens``,
``pooling_mode_cls_token``, ``pooling_mode_max_tokens``, ``pooling_mode_mean_sqrt_len_tokens``
(several true: their vectors are concatenated in that library's order). :func:`read_pooling`
reads it into a :class:`Pooling`; a directory without it gets :data:`DEFAULT_POOLING` (mean).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from optc.errors import InputError

__all__ = ["Pooling", "POOLING_MODES", "DEFAULT_POOLING", "read_pooling", "parse_pooling"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")
"""Token poolings, in the order sentence-transformers concatenates them."""

_CONFIG_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                "mean": "pooling_mode_mean_tokens",
                "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
_UNSUPPORTED_KEYS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


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
    joined by ``+`` (concatenated), optionally ``+normalize``; None stays None."""
    if value is None or isinstance(value, Pooling):
        return value
    names = [p.strip() for p in str(value).split("+")]
    normalize = "normalize" in names
    modes = tuple(n for n in names if n != "normalize")
    if not modes or any(m not in POOLING_MODES for m in modes) or len(set(modes)) != len(modes):
        raise InputError(f"pooling={value!r}: use one of {', '.join(POOLING_MODES)} (several "
                         "joined by '+', and '+normalize' to scale to unit length)")
    return Pooling(modes, normalize, "option")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read '{path}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def read_pooling(directory: str | os.PathLike | None) -> Pooling | None:
    """The pooling a sentence-transformers model directory declares (``modules.json`` and its
    ``Pooling`` module's ``config.json``; a ``Normalize`` module sets ``normalize``), or None
    when ``directory`` is not a directory or has no ``modules.json`` (plain Hugging Face
    models). A broken or unsupported declaration is an :class:`InputError` naming the file."""
    if directory is None or not Path(directory).is_dir():
        return None
    root = Path(directory)
    listing = root / "modules.json"
    if not listing.is_file():
        return None
    modules = _json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputError(f"'{listing}' must be a list of module objects (type, path)")
    types = [str(m.get("type", "")) for m in modules]
    normalize = _ST_NORMALIZE in types
    pooler = next((m for m in modules if m.get("type") == _ST_POOLING), None)
    if pooler is None:
        return Pooling(normalize=normalize, source=str(listing))
    config_file = root / str(pooler.get("path") or "") / "config.json"
    if not config_file.is_file():
        raise InputError(f"'{listing}' lists a Pooling module but '{config_file}' does not "
                         "exist: restore it, or pass the task option pooling=mean|cls|max")
    config = _json(config_file)
    if not isinstance(config, dict):
        raise InputError(f"'{config_file}' must be a JSON object of pooling_mode_* flags")
    unsupported = [k for k in _UNSUPPORTED_KEYS if config.get(k)]
    if unsupported:
        raise InputError(f"'{config_file}': {', '.join(unsupported)} is not supported (optc "
                         f"pools with {', '.join(POOLING_MODES)}): pass the task option pooling=...")
    modes = tuple(mode for mode in POOLING_MODES if config.get(_CONFIG_KEYS[mode]) is True)
    if not modes:
        raise InputError(f"'{config_file}' turns no pooling mode on (pooling_mode_mean_tokens, "
                         "pooling_mode_cls_token, ...): fix it, or pass pooling=mean|cls|max")
    return Pooling(modes, normalize, str(config_file))
