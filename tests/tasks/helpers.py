"""Helpers for the optc.tasks tests: fake models and file writing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def lookup_model(table: dict[tuple[int, ...], torch.Tensor], output: str | Sequence[str],
                 pad_value: float = 0.0) -> Callable:
    """A fake model_fn: each row's unpadded input ids are looked up in ``table`` and the
    stored tensor (logits, or stacked start/end logits) is returned, padded to the batch
    width with ``pad_value``."""
    names = (output,) if isinstance(output, str) else tuple(output)

    def model_fn(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor):
        rows = [table[tuple(ids[mask.bool()].tolist())]
                for ids, mask in zip(input_ids, attention_mask, strict=True)]
        if len(names) == 1:
            return {names[0]: torch.stack(rows)}
        width = input_ids.shape[1]
        out = torch.full((len(rows), len(names), width), pad_value)
        for r, value in enumerate(rows):
            out[r, :, :value.shape[-1]] = value
        return {name: out[:, k] for k, name in enumerate(names)}

    return model_fn


def write(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
