"""What a sparse-kernel plan records (:mod:`optc.backends.sparse_exec` makes it): the kernels
that can be asked for, how ``auto`` measures (:class:`AutoOptions`), the choice for each sparse
weight (:class:`LayerChoice`), the whole-model timings (:class:`ModelCheck`) and the plan itself
(:class:`SparsePlan`, with its table and JSON form)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optc.errors import InputError
from optc.ir.attributes import Sparsity

__all__ = ["KERNELS", "MAX_AUTO_DENSITY", "AutoOptions", "LayerChoice", "ModelCheck",
           "SparsePlan", "Runner", "default_cache_dir", "pattern_name"]

KERNELS = ("auto", "dense", "csr", "bsr", "semi-structured")
"""The accepted ``sparse_kernel`` values."""

MAX_AUTO_DENSITY = 0.4
"""``auto`` does not measure weights (or BSR block grids) denser than this: torch's CPU sparse
kernels lose to dense there (measured crossover: CSR near 85% sparsity, BSR near 80%)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/optc`` or ``~/.cache/optc``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "optc"


@dataclass(frozen=True)
class AutoOptions:
    """How ``auto`` measures."""

    tokens: tuple[int, ...] = (128, 1024)
    """Rows of the activation (batch x sequence) to measure at. A kernel that wins at all of
    them runs every input; one that wins only at the smaller ones runs inputs up to the largest
    count it won at, and dense runs larger ones."""
    margin: float = 0.10
    """A sparse kernel is chosen only when it takes at most ``1 - margin`` of dense's time."""
    candidates: tuple[str, ...] = ("csr", "bsr")
    """Sparse kernels to try."""
    rounds: int = 5
    """Interleaved rounds per measurement."""
    block: int = 3
    """Calls per variant in each round."""
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    """Directory of the on-disk cache; None keeps measurements in memory only."""
    whole_model: bool = True
    """After the per-layer choices, time the whole module with them against all-dense at each
    token count and keep sparse kernels only where the whole model is ``margin`` faster (needs
    a runner and a token-id input; see :mod:`optc.backends.sparse_exec`). False: per-layer
    choices only."""
    seq: int = 128
    """Sequence length of the whole-model check (capped by the module's position table):
    ``tokens`` rows run as batch ``rows / seq``."""

    def __post_init__(self) -> None:
        bad = [c for c in self.candidates if c not in ("csr", "bsr")]
        if bad or not self.candidates:
            raise InputError(f"auto candidates must be csr and/or bsr, got {list(self.candidates)}")
        if not 0.0 <= self.margin < 1.0:
            raise InputError(f"auto margin must be in [0, 1), got {self.margin}")
        if not self.tokens or min(self.tokens) < 1:
            raise InputError(f"auto tokens must be positive row counts, got {list(self.tokens)}")
        if self.seq < 1:
            raise InputError(f"auto seq must be a positive sequence length, got {self.seq}")


@dataclass(frozen=True)
class LayerChoice:
    """The kernel chosen for one sparse weight."""

    param: str
    """The weight parameter's name."""
    shape: tuple[int, int]
    """[out, in]."""
    pattern: str
    """Its declared pattern: ``unstructured``, ``2:4``, ``block 4x4``."""
    density: float
    """Measured fraction of nonzeros."""
    kernel: str
    """``dense``, ``csr``, ``bsr``, ``semi-structured`` or ``int8``."""
    block: tuple[int, int] | None = None
    """BSR block shape (``bsr`` only)."""
    max_tokens: int | None = None
    """``auto`` only: the sparse kernel runs inputs of at most this many rows (batch x
    sequence), the dense one larger inputs (where it measured faster); None: every input."""
    reason: str = ""
    """Why this kernel (for ``auto``: the measured ratios)."""
    timings: dict[str, float] = field(default_factory=dict)
    """``auto`` measurements: median milliseconds, keys ``dense@128``, ``csr@1024``..."""


@dataclass(frozen=True)
class ModelCheck:
    """One whole-model timing of ``auto``: the module with some weights on sparse kernels
    against the all-dense module, at one input shape."""

    rows: int
    """Token count (batch x sequence) of the input."""
    batch: int
    seq: int
    sparse_weights: int
    """Weights the timed module ran on a sparse kernel at this input."""
    dense_ms: float
    """Median milliseconds per forward, all dense."""
    sparse_ms: float
    """Median milliseconds per forward with those weights sparse."""
    won: bool
    """Whether sparse took at most ``1 - margin`` of dense's time (the weights were kept)."""

    @property
    def ratio(self) -> float:
        return self.sparse_ms / self.dense_ms if self.dense_ms > 0 else float("inf")


@dataclass(frozen=True)
class SparsePlan:
    """Per-weight kernel choices for one module and one requested kernel."""

    requested: str
    """The ``sparse_kernel`` asked for."""
    threads: int
    """torch threads when the plan was made (``auto`` measured at this count)."""
    layers: tuple[LayerChoice, ...] = ()
    """One entry per sparse (or int8 sparse) linear weight, in graph order."""
    model_checks: tuple[ModelCheck, ...] = ()
    """``auto`` only: the whole-model timings that confirmed or cut the per-layer choices, in
    the order they ran."""
    model_note: str = ""
    """``auto`` only: what the whole-model check decided, or why it did not run."""

    def choice(self, param: str) -> LayerChoice | None:
        """The choice for weight ``param`` (None: not sparse, runs dense)."""
        return next((c for c in self.layers if c.param == param), None)

    def counts(self) -> dict[str, int]:
        """How many weights each kernel runs."""
        out: dict[str, int] = {}
        for c in self.layers:
            out[c.kernel] = out.get(c.kernel, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "threads": self.threads,
                "layers": [{**asdict(c), "shape": list(c.shape),
                            "block": list(c.block) if c.block else None} for c in self.layers],
                "model_checks": [asdict(m) for m in self.model_checks],
                "model_note": self.model_note}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> SparsePlan:
        layers = tuple(LayerChoice(**{**c, "shape": tuple(c["shape"]),
                                      "block": tuple(c["block"]) if c.get("block") else None})
                       for c in doc.get("layers", []))
        checks = tuple(ModelCheck(**m) for m in doc.get("model_checks", []))
        return SparsePlan(doc["requested"], int(doc["threads"]), layers, checks,
                          str(doc.get("model_note", "")))

    def table(self) -> str:
        """One row per sparse weight: shape, pattern, density, kernel and why."""
        head = f"sparse kernels ({self.requested}, {self.threads} thread(s)): "
        if not self.layers:
            return head + "no sparse weights\n"
        counts = ", ".join(f"{k} {n}" for k, n in sorted(self.counts().items()))
        rows = [("weight", "shape", "pattern", "density", "kernel", "why")]
        for c in self.layers:
            kernel = c.kernel + (f" {c.block[0]}x{c.block[1]}" if c.block else "") + (
                f" <={c.max_tokens} rows" if c.max_tokens is not None else "")
            rows.append((c.param, f"{c.shape[0]}x{c.shape[1]}", c.pattern, f"{c.density:.3f}",
                         kernel, c.reason))
        text = head + counts + "\n" + _columns(rows)
        if self.model_checks:
            checks = [("whole model", "batch x seq", "sparse weights", "dense ms", "sparse ms",
                       "ratio", "")]
            checks += [(f"{m.rows} rows", f"{m.batch}x{m.seq}", str(m.sparse_weights),
                        f"{m.dense_ms:.2f}", f"{m.sparse_ms:.2f}", f"{m.ratio:.2f}x",
                        "kept" if m.won else "not kept") for m in self.model_checks]
            text += _columns(checks)
        return text + (f"whole model: {self.model_note}\n" if self.model_note else "")


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() + "\n"
                   for r in rows)


# -- the whole-model check ----------------------------------------------------------------------
Runner = Callable[["SparsePlan | None"], Callable[..., Any]]
"""Builds the module lowered with a plan (None: all dense) as a callable that takes the graph
inputs by name (:func:`optc.backends.eager.to_eager` passes ``EagerModule(module, plan)``)."""


def pattern_name(attr: Sparsity) -> str:
    """A ``sparsity`` attribute's pattern as the plan shows it: ``unstructured``, ``2:4``,
    ``block 4x4``."""
    if attr.pattern == "n:m":
        return f"{attr.n}:{attr.m}"
    if attr.pattern == "block":
        return f"block {attr.block[0]}x{attr.block[1]}"
    return attr.pattern
