"""Learned L0 pruning of heads and FFN neurons (work in progress)."""

from __future__ import annotations

__all__: list[str] = []
