"""Compile-time self-check: load what a backend wrote, run it, compare with the eager IR.

    write_checked(module, "onnx", "model.onnx")   # write, load back, run, compare, then install
    check_written(module, "onnx", path)           # only the check; raises BackendError

After a backend writes its output, optc loads it back the way a user would (``optc.load`` for
an artifact, ``torch.jit.load`` for TorchScript, an ONNX Runtime session for ONNX and for the
``onnx/model.onnx`` of an ``onnx-st`` directory), runs it on
:func:`example_inputs` and compares every output with the eager lowering of the IR it came
from. Inputs are derived from the IR's graph inputs (names, dtypes, symbolic dims):

- batch 2 at a short sequence (8), with one row whose attention mask is partly zero (padding);
- batch 1 at the shortest sequence (1);
- batch 2 at a long sequence, ``min(max positions, 128)``, again with a padded row.

A module captured for one sequence length (:func:`optc.backends.model_inputs.fixed_length`:
its code turns the length into a constant) is probed at that length only, in every case.

Token ids are drawn below the rows of the embedding table they index; masks are ones (the
padded row ends in zeros); other integer inputs (token types) are zeros.

Tolerance (:data:`TOLERANCES`): the max absolute difference of each output, divided by
``max(1, max |eager output|)`` so that large-valued outputs are judged relative to their scale,
must not exceed 1e-4 for eager and TorchScript (same kernels, reordered arithmetic) and 1e-3
for ONNX (ONNX Runtime's fused attention and GELU kernels round differently). A module with
int8 weights gets :data:`INT8_TOLERANCES` on ONNX: ORT's GELU differs from torch's by a few
ulps, which can move an activation across an int8 rounding step before the next quantized
matmul (measured up to 0.04 of the output's scale on MiniLM; integer arithmetic is otherwise
exact, and TorchScript stays bit-identical). The same holds for static int8 (calibrated
activation scales, QDQ in ONNX: measured 0.036 on MiniLM, TorchScript 3e-8). Deeper models
amplify such a step layer by layer until two correct int8 runtimes differ by as much as each
differs from the float model (all-mpnet-base-v2, 12 layers: 0.19-0.62 of the output's scale
per tensor, 0.08 with per-token scales; 7e-4 after one layer): an int8 output beyond the
tolerance still passes when it is no further from the unquantized module
(:func:`optc.ir.dequantize.dequantized`) than the eager int8 IR is (:data:`INT8_NOISE`,
relative L2), so a lowering fault is still caught. NaNs must appear in the same places.

:func:`write_checked` writes into a hidden staging path beside the target (see
:func:`optc.outputs.staged_output`): an output that fails to load, crashes or disagrees is
deleted and never replaces an existing one; :class:`~optc.errors.BackendError` (exit code 6)
names the backend, the input shape and the max difference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optc.artifacts import load_module
from optc.backends.eager import to_eager
from optc.backends.model_inputs import embedding_limits, seq_range
from optc.backends.writers import DIRECTORY_BACKENDS, write_unchecked
from optc.errors import BackendError
from optc.ir.core import Module
from optc.ir.dequantize import dequantized, is_quantized
from optc.outputs import staged_output

__all__ = ["TOLERANCES", "INT8_TOLERANCES", "tolerance_for", "LONG_SEQ", "SelfCheckReport", "example_inputs", "load_written",
           "check_written", "write_checked"]

TOLERANCES = {"eager": 1e-4, "torchscript": 1e-4, "onnx": 1e-3, "onnx-st": 1e-3, "hf": 1e-5}
INT8_TOLERANCES = {"onnx": 0.1, "onnx-st": 0.1}
"""Tolerances that replace :data:`TOLERANCES` for modules with quantized (int8) weights,
dynamic or static, and for modules whose attention matmuls are int8 (the tiny BERT of the
tests: ONNX within 1e-3, TorchScript 1e-5; MiniLM, ONNX: int8 attention matmuls alone 0.013,
with int8 linears 0.045, TorchScript bit-identical)."""


INT8_NOISE = 1.5
"""An int8 output beyond :data:`INT8_TOLERANCES` still passes when its distance to the float
module (:func:`optc.ir.dequantize.dequantized`, relative L2 over the output) is at most this
many times the eager int8 IR's own distance to it (plus 1e-3)."""


def tolerance_for(module: Module, backend: str) -> float:
    """The self-check tolerance of ``backend`` for ``module`` (int8-aware)."""
    if is_quantized(module) and backend in INT8_TOLERANCES:
        return INT8_TOLERANCES[backend]
    return TOLERANCES.get(backend, 1e-4)
"""Max difference to the eager IR per backend, relative to ``max(1, max |output|)``."""

LONG_SEQ = 128
"""The long sequence checked, capped by the model's position table."""


@dataclass
class SelfCheckReport:
    """What the self-check ran and the worst relative difference per output."""

    backend: str
    shapes: list[tuple[int, int]] = field(default_factory=list)
    """(batch, seq) of each input set that was run."""
    diffs: dict[str, float] = field(default_factory=dict)
    """Worst difference per output over all input sets, relative to the output's scale."""

    def worst(self) -> float:
        return max(self.diffs.values(), default=0.0)


# -- inputs -------------------------------------------------------------------------------------
def _seq_range(module: Module) -> tuple[int, int]:
    """(min, max) sequence length the module's non-batch dims allow (max capped at LONG_SEQ)."""
    low, high = seq_range(module)
    high = LONG_SEQ if high is None else min(high, LONG_SEQ)
    return low, max(low, high)


def example_inputs(module: Module, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Input sets for ``module``: (batch 2, seq 8, padded), (1, shortest), (2, long, padded),
    (batch 3, seq 8, the middle row all padding: a row with nothing to attend to)."""
    low, high = _seq_range(module)
    short = min(max(8, low), high)
    cases = [(2, short, "half"), (1, low, None), (2, high, "half"), (3, short, "empty")]
    limits = embedding_limits(module)
    gen = torch.Generator().manual_seed(seed)
    result = []
    seen = set()
    for batch, seq, pad in cases:
        if (batch, seq) in seen:
            continue
        seen.add((batch, seq))
        inputs = {}
        for value in module.graph.inputs:
            t = value.tensor_type
            shape = [d if isinstance(d, int) else (batch if axis == 0 else seq)
                     for axis, d in enumerate(t.shape)]
            inputs[value.name] = _fill(value.name, t.dtype, shape, limits.get(value.name), pad, gen)
        result.append(inputs)
    return result


def _fill(name: str, dtype: torch.dtype, shape: list[int], limit: int | None, pad: str | None,
          gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if "mask" in name:
        mask = torch.ones(shape, dtype=torch.bool if dtype == torch.bool else dtype)
        if pad == "half" and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            mask[-1, max(1, shape[1] // 2):] = 0  # last row: second half is padding
        elif pad == "empty" and len(shape) == 2 and shape[0] > 2:
            mask[1] = 0  # middle row: all padding
        return mask
    if limit is not None and dtype != torch.bool:
        low = min(5, limit - 1)  # skip the special tokens at the start of most vocabularies
        return torch.randint(low, limit, shape, generator=gen, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


# -- loading and running ------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1]
    return lines[0]


def load_written(module: Module, backend: str,
                 path: str | os.PathLike) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Load what ``backend`` wrote at ``path`` as a callable on named inputs."""
    names = [v.name for v in module.graph.inputs]
    if backend == "eager":
        compiled = to_eager(load_module(path))
        return lambda x: compiled(**x)
    if backend == "torchscript":
        scripted = torch.jit.load(str(path))
        return lambda x: dict(scripted(*[x[n] for n in names]))
    if backend == "onnx":
        from optc.backends.onnx import OnnxModule

        session = OnnxModule(path)
        return lambda x: session(**{n: x[n] for n in session.input_names})
    if backend == "onnx-st":  # its ONNX file, fed by name as sentence-transformers feeds it
        from optc.backends.onnx import OnnxModule
        from optc.backends.st_onnx import ONNX_FILE

        session = OnnxModule(Path(path) / ONNX_FILE)
        return lambda x: session(**{n: x[n] for n in session.input_names})
    if backend == "hf":
        from optc.backends.hf import load_exported

        model = load_exported(path)
        return lambda x: {k: v for k, v in model(**x).items() if v is not None}
    raise BackendError(f"no self-check for backend '{backend}'; choose eager, torchscript, onnx, "
                       "onnx-st or hf")


def _difference(want: torch.Tensor, got: torch.Tensor) -> float:
    """Max |got - want| relative to max(1, max |want|); inf on shape or NaN-pattern mismatch."""
    if tuple(got.shape) != tuple(want.shape):
        return float("inf")
    if want.numel() == 0:
        return 0.0
    want, got = want.detach().double(), got.detach().double()
    nan_w, nan_g = torch.isnan(want), torch.isnan(got)
    if not torch.equal(nan_w, nan_g):
        return float("inf")
    diff = (got - want).abs().masked_fill(nan_w, 0.0)
    scale = max(1.0, want.masked_fill(nan_w, 0.0).abs().max().item())
    return diff.max().item() / scale


def check_written(module: Module, backend: str, path: str | os.PathLike,
                  inputs: Iterable[dict[str, torch.Tensor]] | None = None,
                  tolerance: float | None = None, label: str | os.PathLike | None = None,
                  ) -> SelfCheckReport:
    """Load ``path`` (written by ``backend`` from ``module``), run it on ``inputs`` (default:
    :func:`example_inputs`) and compare with the eager IR; raises :class:`BackendError`.

    ``label`` is the name errors give the output (default: ``path``)."""
    tol = tolerance_for(module, backend) if tolerance is None else tolerance
    what = f"{backend} self-check of '{label if label is not None else path}'"
    try:
        run = load_written(module, backend, path)
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types
        raise BackendError(f"{what} failed: the output does not load: {_first_line(exc)}") from None
    reference = to_eager(module)
    floating = _FloatReference(module) if tolerance is None and is_quantized(module) and \
        backend in INT8_TOLERANCES else None
    report = SelfCheckReport(backend)
    for feed in example_inputs(module) if inputs is None else inputs:
        first = next(iter(feed.values()))
        shape = (int(first.shape[0]), int(first.shape[1]) if first.dim() > 1 else 1)
        report.shapes.append(shape)
        where = f"batch {shape[0]}, seq {shape[1]}"
        with torch.inference_mode():
            want = reference(**feed)
            try:
                got = run(feed)
            except Exception as exc:  # noqa: BLE001 - a crash of the written output
                raise BackendError(f"{what} failed: the output crashes at {where}: "
                                   f"{_first_line(exc)}") from None
        for name, expected in want.items():
            if name not in got:
                raise BackendError(f"{what} failed: the output has no '{name}' (it has "
                                   f"{', '.join(got) or 'none'})")
            diff = _difference(expected, got[name])
            report.diffs[name] = max(report.diffs.get(name, 0.0), diff)
            if not diff <= tol:
                shown = "a different shape or NaNs" if diff == float("inf") else f"{diff:.3g}"
                noise = "" if floating is None or diff == float("inf") else \
                    floating.judge(feed, name, expected, got[name])
                if noise is None:
                    continue  # int8 rounding noise, not a lowering fault
                raise BackendError(
                    f"{what} failed: output '{name}' differs from the eager IR by {shown} "
                    f"(max, relative to its scale; tolerance {tol:g}) at {where}{noise}"
                )
    return report


class _FloatReference:
    """The float module an int8 module stands for, run lazily on the self-check's inputs."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self.run: Callable[..., dict[str, torch.Tensor]] | None = None

    def judge(self, feed: dict[str, torch.Tensor], name: str, eager: torch.Tensor,
              got: Any) -> str | None:
        """None when ``got`` is no further from the float module than the eager int8 IR is
        (:data:`INT8_NOISE`); else the clause the error message adds."""
        if self.run is None:
            self.run = to_eager(dequantized(self.module))
        with torch.inference_mode():
            want = self.run(**feed)[name].float()
        got = torch.as_tensor(got).float()
        scale = float(want.norm()) or 1.0
        mine, theirs = float((eager.float() - want).norm()) / scale, float((got - want).norm()) / scale
        if theirs <= INT8_NOISE * mine + 1e-3:
            return None
        return (f"; it is {theirs:.3g} from the unquantized model where the eager int8 IR is "
                f"{mine:.3g} (relative L2; allowed {INT8_NOISE:g}x)")


def write_checked(module: Module, backend: str, path: str | os.PathLike, *, force: bool = False,
                  check: bool = True, inputs: Iterable[str | os.PathLike] = ()) -> SelfCheckReport | None:
    """Write ``module`` with ``backend`` to ``path`` and self-check it before it is installed.

    The output is staged beside ``path``; if the check fails it is deleted (an existing
    ``path`` stays as it was) and :class:`BackendError` is raised. ``inputs`` are paths the
    output must never replace (see :func:`optc.outputs.check_output`).
    """
    kind = "artifact" if backend in DIRECTORY_BACKENDS else "file"
    with staged_output(Path(path), force, kind=kind, inputs=inputs) as staged:
        write_unchecked(module, backend, staged)
        if not check:
            return None
        report = check_written(module, backend, staged, label=path)
    return report
