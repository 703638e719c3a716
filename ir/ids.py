"""Stable unit ids: which original heads or neurons remain, written as compact ranges.

Structural passes remove heads and neurons by position; the ``head_ids`` / ``unit_ids``
attributes record the original index of every unit that remains (``"0-4,6-11"``), so that
reports and pipeline options can name units as they were in the captured model.
"""

from __future__ import annotations

from collections.abc import Iterable

from optc.errors import IRError

__all__ = ["format_ids", "parse_ids", "ids_or_range"]


def format_ids(ids: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"`` (ids must be increasing)."""
    parts: list[str] = []
    items = list(ids)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def parse_ids(text: str) -> list[int]:
    """Inverse of :func:`format_ids`; :class:`IRError` on malformed or non-increasing ids."""
    ids: list[int] = []
    if not text:
        return ids
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(lo), int(lo))
        except ValueError:
            raise IRError(f"bad unit id range {part!r} in {text!r}: write ranges like '0-4,6'") from None
        if b < a or (ids and a <= ids[-1]) or a < 0:
            raise IRError(f"unit ids {text!r} must be increasing and non-negative")
        ids.extend(range(a, b + 1))
    return ids


def ids_or_range(text: str | None, count: int) -> list[int]:
    """The ids an attribute records, or ``0..count-1`` when it is absent."""
    return list(range(count)) if text is None else parse_ids(text)
