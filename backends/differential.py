"""Differential testing: run one IR module on every backend and check that they agree.

    report = check_backends(module, inputs)        # raises BackendMismatch on disagreement
    outputs = run_backend(module, "onnx", inputs)  # one backend, eager calling convention

The reference is the eager backend; each other backend must match it within its tolerance
(:data:`TOLERANCES`, max absolute difference per output). By default ``check_backends`` also
runs the ``hf`` backend (a Hugging Face directory loaded with its generated classes) when the
module is one that backend writes (see :func:`optc.backends.hf.hf_refusal`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from optc.backends.model_inputs import InputCheck
from optc.errors import InputError, OptcError
from optc.ir.core import Module

__all__ = ["BACKEND_NAMES", "OPTIONAL_BACKENDS", "TOLERANCES", "default_backends", "BackendMismatch", "DifferentialReport", "check_inputs",
           "run_backend", "check_backends"]

BACKEND_NAMES = ("eager", "torchscript", "onnx")
"""The backends that run every module."""

OPTIONAL_BACKENDS = ("hf",)
"""Backends that write only some modules (``hf``: BERT-like families and GPT-2); the harness
runs them when they take the module."""

TOLERANCES = {"eager": 0.0, "torchscript": 1e-5, "onnx": 1e-4, "hf": 1e-4}
"""Max absolute difference to the eager backend allowed per backend (fp32)."""


class BackendMismatch(OptcError):
    """Backends disagree beyond tolerance; the message lists each offending output."""


@dataclass
class DifferentialReport:
    """Max absolute difference to eager, per backend and output."""

    diffs: dict[str, dict[str, float]] = field(default_factory=dict)

    def worst(self, backend: str) -> float:
        return max(self.diffs.get(backend, {}).values(), default=0.0)


def check_inputs(module: Module, inputs: Mapping[str, torch.Tensor]) -> None:
    """Refuse inputs the module cannot take: not a dict of tensors, unknown names, a dtype
    or rank other than the graph input's (int32 ids, a bool mask where int64 is expected), and
    what :class:`~optc.backends.model_inputs.InputCheck` refuses (a sequence past the position
    table, ids past the vocabulary, inputs of disagreeing sizes)."""
    if not isinstance(module, Module):
        raise InputError(f"expected an optc IR module (from optc.capture or optc.load_module), "
                         f"got {type(module).__name__}")
    if not isinstance(inputs, Mapping):
        raise InputError(f"inputs must be a dict of input name -> tensor, got "
                         f"{type(inputs).__name__}")
    graph_inputs = {v.name: v for v in module.graph.inputs}
    for name, value in inputs.items():
        if name not in graph_inputs:
            raise InputError(f"the module has no input '{name}'; its inputs are "
                             f"{', '.join(graph_inputs)}")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"input '{name}' must be a torch.Tensor, got {type(value).__name__}")
        t = graph_inputs[name].tensor_type
        if value.dtype != t.dtype:
            fix = {torch.int64: ".long()", torch.float32: ".float()", torch.bool: ".bool()"}.get(
                t.dtype, f".to({t.dtype})")
            raise InputError(f"input '{name}' is {str(value.dtype).replace('torch.', '')} but the "
                             f"module takes {str(t.dtype).replace('torch.', '')}: pass "
                             f"{name}{fix}")
        if value.dim() != len(t.shape):
            raise InputError(f"input '{name}' has {value.dim()} dimensions but the module takes "
                             f"{len(t.shape)} ({', '.join(map(str, t.shape))})")
    InputCheck(module)(inputs)


def run_backend(module: Module, backend: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lower ``module`` with ``backend`` and run it on named ``inputs`` (checked with
    :func:`check_inputs`)."""
    check_inputs(module, inputs)
    if backend == "eager":
        from optc.backends.eager import to_eager

        with torch.inference_mode():
            return to_eager(module)(**inputs)
    with tempfile.TemporaryDirectory(prefix="optc-diff-") as tmp:
        if backend == "torchscript":
            from optc.backends.torchscript import export_torchscript

            path = export_torchscript(module, Path(tmp) / "model.pt")
            scripted = torch.jit.load(str(path))
            names = [v.name for v in module.graph.inputs]
            with torch.inference_mode():
                return dict(scripted(*[_input(module, inputs, n) for n in names]))
        if backend == "onnx":
            from optc.backends.onnx import OnnxModule, export_onnx

            path = export_onnx(module, Path(tmp) / "model.onnx")
            runner = OnnxModule(path)
            return runner(**{n: _input(module, inputs, n) for n in runner.input_names})
        if backend == "hf":
            from optc.backends.hf import export_hf, load_exported

            model = load_exported(export_hf(module, Path(tmp) / "hf"))
            names = [v.name for v in module.graph.inputs]
            with torch.inference_mode():
                out = model(**{n: _input(module, inputs, n) for n in names})
            return {k: v for k, v in out.items() if v is not None}
    raise OptcError(f"unknown backend '{backend}'; choose one of "
                    f"{', '.join(BACKEND_NAMES + OPTIONAL_BACKENDS)}")


def _input(module: Module, inputs: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A named input, or its recorded default (e.g. an all-ones attention mask)."""
    if name in inputs:
        return inputs[name]
    default = module.meta.get("input_defaults", {}).get(name)
    if default is None:
        raise OptcError(f"missing input '{name}'")
    like = next(iter(inputs.values()))
    return torch.ones_like(like) if default == "ones" else torch.zeros_like(like)


def default_backends(module: Module) -> tuple[str, ...]:
    """:data:`BACKEND_NAMES`, plus ``hf`` when that backend writes ``module``."""
    from optc.backends.hf import hf_refusal

    return BACKEND_NAMES + (("hf",) if hf_refusal(module) is None else ())


def check_backends(
    module: Module,
    inputs: dict[str, torch.Tensor],
    backends: tuple[str, ...] | None = None,
    tolerances: dict[str, float] | None = None,
) -> DifferentialReport:
    """Run every backend (default: :func:`default_backends`) on ``inputs`` and compare each
    output with eager's."""
    check_inputs(module, inputs)
    if backends is None:
        backends = default_backends(module)
    known = BACKEND_NAMES + OPTIONAL_BACKENDS
    unknown = [b for b in backends if b not in known]
    if unknown:
        raise OptcError(f"unknown backend '{unknown[0]}'; choose one of {', '.join(known)}")
    tol = {**TOLERANCES, **(tolerances or {})}
    reference = run_backend(module, "eager", inputs)
    report = DifferentialReport()
    problems = []
    for backend in backends:
        if backend == "eager":
            continue
        outputs = run_backend(module, backend, inputs)
        diffs = {}
        for name, ref in reference.items():
            if name not in outputs:
                problems.append(f"{backend} has no output '{name}'")
                continue
            got = outputs[name]
            if got.shape != ref.shape:
                problems.append(f"{backend} output '{name}' has shape {tuple(got.shape)}, eager {tuple(ref.shape)}")
                continue
            diff = (got.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
            diffs[name] = diff
            if not diff <= tol[backend]:
                problems.append(f"{backend} output '{name}' differs from eager by {diff:.3g} (> {tol[backend]:g})")
        report.diffs[backend] = diffs
    if problems:
        raise BackendMismatch("backends disagree: " + "; ".join(problems))
    return report
