"""``optc bench``: latency, peak memory, parameters and size of models side by side.

Targets:

- ``*.onnx``: an ONNX model, run in ONNX Runtime (all graph optimizations on);
- ``*.pt`` / ``*.ts``: a TorchScript file, run with ``torch.jit.load``;
- an optc artifact directory: loaded with ``optc.load`` (eager backend), or lowered on the fly
  to every backend in ``--backends``;
- a Hugging Face model directory or hub id, or ``embedded`` (the bundled all-MiniLM-L6-v2):
  the original model (``hf``), or captured and lowered to each backend in ``--backends``.

``--seq`` (default 128) must fit every model's position table: the default is shortened to
the shortest table among the targets, with a note on stderr; an explicit ``--seq`` beyond it is
refused (exit 2) with the longest allowed. ONNX and TorchScript files do not record their
positions: a sequence they cannot run fails with one line. A file target runs only with its own
backend, so ``--backends`` must include it.

All runners get the same inputs; latencies come from interleaved blocks in one process
(:mod:`optc.tools.measure.timing`) so ratios stay meaningful on a noisy machine. Peak memory is the
growth of a fresh child process's peak RSS while it loads the target and runs it.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optc.errors import InputError, PipelineSpecError
from optc.tools.common import quiet_libraries

__all__ = ["Runner", "make_runners", "run_bench", "format_bench", "fit_seq", "check_backends_option",
           "UsageError", "run_profile"]


class UsageError(PipelineSpecError):
    """A bench option that does not fit the targets (exit code 2, like other usage errors)."""

EMBEDDED = "embedded"

BENCH_BACKENDS = ("eager", "torchscript", "onnx", "hf")
"""What --backends may name: optc's backends, and hf for the original model."""

DEFAULT_SEQ = 128
"""Sequence length timed when --seq is not given (clamped to the models' position tables)."""


@dataclass
class Runner:
    """One thing to time: a callable on named inputs, with its static facts."""

    label: str
    backend: str
    input_names: list[str]
    call: Callable[[dict[str, torch.Tensor]], Any]
    parameters: int
    disk_bytes: int | None
    spec: tuple[str, str] = ("", "")
    """(target, backend) to rebuild this runner in a child process for memory measurement."""
    extra: dict[str, Any] = field(default_factory=dict)
    max_seq: int | None = None
    """The longest sequence the model's position table allows (None: not known)."""
    module: Any = None
    """The IR module it was lowered from (None for file targets and original models): the
    FLOPs of ``--profile``."""


def _disk_size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _onnx_runner(path: Path, threads: int) -> Runner:
    import onnx

    from optc.backends.onnx import OnnxModule

    try:
        runner = OnnxModule(path, threads=threads)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise InputError(f"cannot load ONNX model '{path}': {str(exc).splitlines()[0]}") from None
    model = onnx.load(str(path), load_external_data=False)
    params = sum(
        int(torch.tensor(list(t.dims)).prod().item()) if t.dims else 1
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    )
    return Runner(str(path), "onnx", runner.input_names, lambda x: runner(**x), params,
                  _disk_size(path), extra={"path": path})


def _torchscript_runner(path: Path) -> Runner:
    try:
        module = torch.jit.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError subclasses
        raise InputError(f"cannot load TorchScript file '{path}': {str(exc).splitlines()[0]}") from None
    names = [a.name for a in module.forward.schema.arguments[1:]]
    params = sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())
    return Runner(str(path), "torchscript", names, lambda x: module(**x), params, _disk_size(path))


def _module_runners(label: str, module: Any, backends: list[str], threads: int,
                    workdir: Path, disk: int | None) -> list[Runner]:
    from optc.backends import write_backend
    from optc.backends.eager import to_eager

    runners = []
    max_seq = module_max_seq(module)
    for backend in backends:
        if backend == "eager":
            compiled = to_eager(module)
            names = [v.name for v in module.graph.inputs]
            runners.append(Runner(label, "eager", names, lambda x, c=compiled: c(**x),
                                  module.num_parameters(), disk))
        elif backend in ("onnx", "torchscript"):
            suffix = ".onnx" if backend == "onnx" else ".pt"
            path = write_backend(module, backend, workdir / f"{len(os.listdir(workdir))}{suffix}")
            r = _onnx_runner(path, threads) if backend == "onnx" else _torchscript_runner(path)
            r.label, r.disk_bytes = label, _disk_size(path)
            runners.append(r)
        else:
            raise InputError(f"backend '{backend}' does not apply to {label}; use eager, torchscript or onnx")
    for r in runners:
        r.max_seq, r.module = max_seq, module
    return runners


def module_max_seq(module: Any) -> int | None:
    """The longest sequence an IR module takes: the smallest bound of its non-batch dims."""
    bounds = []
    for value in module.graph.inputs:
        for axis, d in enumerate(value.tensor_type.shape):
            rng = None if axis == 0 or isinstance(d, int) else module.dims.get(d)
            if rng is not None and rng.max is not None:
                bounds.append(int(rng.max))
    return min(bounds) if bounds else None


def _target_runners(target: str, backends: list[str] | None, threads: int, workdir: Path) -> list[Runner]:
    from optc.artifacts import is_artifact, load_module

    path = Path(target)
    fixed = file_backend(target)
    if fixed == "onnx":
        if not path.is_file():
            raise InputError(f"ONNX model '{target}' does not exist")
        return [_onnx_runner(path, threads)]
    if fixed == "torchscript":
        if not path.is_file():
            raise InputError(f"TorchScript file '{target}' does not exist")
        return [_torchscript_runner(path)]
    if is_artifact(path):
        wanted = [b for b in (backends or ["eager"]) if b != "hf"]  # hf: the original models only
        if not wanted:
            raise InputError(f"'{target}' is an optc artifact: give it eager, torchscript or onnx "
                             "in --backends (hf times original Hugging Face models)")
        return _module_runners(target, load_module(path), wanted, threads, workdir, _disk_size(path))
    from optc.frontends.huggingface import load_model

    model, source = load_model(None if target == EMBEDDED else target)
    disk = _disk_size(path) if path.exists() else None
    if target == EMBEDDED:
        from optc.frontends.huggingface import default_model_path

        disk = _disk_size(default_model_path())
    wanted = backends or ["hf"]
    runners = []
    if "hf" in wanted:
        import inspect

        from optc.frontends.capture import max_sequence_length

        accepted = inspect.signature(model.forward).parameters
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted
                 and (n != "token_type_ids" or getattr(model.config, "type_vocab_size", 0))]
        params = sum(p.numel() for p in model.parameters())
        runners.append(Runner(target, "hf", names, lambda x: model(**x), params, disk,
                              max_seq=max_sequence_length(model.config)))
    rest = [b for b in wanted if b != "hf"]
    if rest:
        from optc.frontends.capture import capture

        runners += _module_runners(target, capture(model, source=source), rest, threads, workdir, disk)
    return runners


def file_backend(target: str) -> str | None:
    """The only backend a file target runs with (onnx, torchscript), or None for models."""
    suffix = Path(target).suffix
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".ts", ".jit"):
        return "torchscript"
    return None


def check_backends_option(targets: list[str], backends: list[str] | None) -> None:
    """Refuse --backends that name no backend or leave a file target nothing to run with."""
    if backends is None:
        return
    unknown = [b for b in backends if b not in BENCH_BACKENDS]
    if unknown or not backends:
        raise UsageError(f"unknown backend '{unknown[0] if unknown else ''}' in --backends; "
                         f"choose from {', '.join(BENCH_BACKENDS)}")
    for target in targets:
        fixed = file_backend(target)
        if fixed is not None and fixed not in backends:
            raise UsageError(f"'{target}' is a{'n' if fixed == 'onnx' else ''} {fixed} file: it "
                             f"can only be timed with {fixed}; add {fixed} to --backends (or "
                             "leave --backends out)")


def fit_seq(runners: list[Runner], seq: int | None) -> tuple[int, str | None]:
    """The sequence length to time and a note when the default had to be shortened.

    The default (``None``: :data:`DEFAULT_SEQ`) is clamped to the shortest position table among
    the runners, with a note; an explicit ``seq`` beyond a model's positions is refused with the
    longest one allowed.
    """
    limits = [(r.max_seq, r) for r in runners if r.max_seq is not None]
    longest = min((m for m, _ in limits), default=None)
    if seq is None:
        if longest is not None and longest < DEFAULT_SEQ:
            owner = next(r for m, r in limits if m == longest)
            return longest, (f"timing at --seq {longest}: {owner.label} has only {longest} "
                             f"positions (default {DEFAULT_SEQ})")
        return DEFAULT_SEQ, None
    if longest is not None and seq > longest:
        owner = next(r for m, r in limits if m == longest)
        raise UsageError(f"--seq {seq} is longer than {owner.label} allows ({longest} positions): "
                         f"pass --seq {longest} or less")
    return seq, None


def make_runners(targets: list[str], backends: list[str] | None, threads: int,
                 workdir: Path) -> list[Runner]:
    """Runners for every target (several per target when several backends are asked for)."""
    check_backends_option(targets, backends)
    runners = []
    for target in targets:
        for r in _target_runners(target, backends, threads, workdir):
            r.spec = (target, r.backend)
            runners.append(r)
    return runners


def make_inputs(names: list[str], batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token inputs every target accepts: ids below 100 (valid in any vocabulary), full masks."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    for name in names:
        if name == "input_ids":
            inputs[name] = torch.randint(5, 100, (batch, seq), generator=gen)
        elif "mask" in name:
            inputs[name] = torch.ones(batch, seq, dtype=torch.long)
        else:
            inputs[name] = torch.zeros(batch, seq, dtype=torch.long)
    return inputs


def _status(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Restart peak-RSS tracking from the current RSS; returns the current RSS in bytes.

    Writing 5 to /proc/self/clear_refs resets VmHWM (Linux >= 4.0), so transient allocations
    made while importing libraries do not count. ru_maxrss is no use here: a spawned child
    inherits its parent's peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    current = _status("VmRSS")
    return current if current is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _high_water_mark() -> int:
    """Peak resident memory of this process in bytes since the last :func:`_reset_peak`."""
    peak = _status("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_child(target: str, backend: str, batch: int, seq: int, threads: int,
                queue: Any) -> None:  # pragma: no cover - runs in a child process
    try:
        torch.set_num_threads(threads)
        import onnxruntime  # noqa: F401 - imported before the baseline like in the parent

        quiet_libraries()
        base = _reset_peak()
        with tempfile.TemporaryDirectory(prefix="optc-bench-") as tmp:
            backends = None if backend in ("onnx", "torchscript") and Path(target).suffix else [backend]
            runner = [r for r in _target_runners(target, backends, threads, Path(tmp))
                      if r.backend == backend][0]
            inputs = make_inputs(runner.input_names, batch, seq)
            with torch.inference_mode():
                for _ in range(3):
                    runner.call(inputs)
        queue.put(_high_water_mark() - base)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a missing figure
        queue.put(f"error: {exc}")


def peak_memory(spec: tuple[str, str], batch: int, seq: int, threads: int) -> int | None:
    """Peak RSS growth in bytes of a child process that loads and runs one target."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(*spec, batch, seq, threads, queue))
    # The child ignores Ctrl-C (it inherits SIG_IGN), so an interrupt reaches only this process,
    # which then stops the child: no traceback from it, no orphan left running.
    previous = signal.getsignal(signal.SIGINT) if _main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    try:
        proc.join(timeout=600)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    result = queue.get() if not queue.empty() else None
    return result if isinstance(result, int) else None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_bench(runners: list[Runner], batch: int, seq: int, threads: int, rounds: int = 10,
              block: int = 5, warmup: int = 3, memory: bool = True) -> list[dict[str, Any]]:
    """Measure every runner on the same inputs; one dict of figures per runner."""
    from optc.tools.measure.timing import measure_interleaved

    torch.set_num_threads(threads)
    variants = {}
    for i, r in enumerate(runners):
        inputs = make_inputs(r.input_names, batch, seq)
        try:
            with torch.inference_mode():
                r.call(inputs)  # one trial call: a failure is one line, not a traceback
        except Exception as exc:  # noqa: BLE001 - every runtime raises its own types
            lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()] or [type(exc).__name__]
            detail = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
            hint = "" if r.max_seq is not None else "; is --seq within the model's positions?"
            raise InputError(f"{r.label} ({r.backend}) fails at batch {batch}, seq {seq}: "
                             f"{detail}{hint}") from None
        variants[str(i)] = lambda r=r, inputs=inputs: r.call(inputs)
    with torch.inference_mode():
        # with 2+ threads a pause before each block lets the previous runtime's spinning workers
        # stop (tools/measure/timing.py): otherwise they take the core the next variant needs
        timings = measure_interleaved(variants, rounds=rounds, block=block, warmup=warmup,
                                      settle=0.2 if threads > 1 else 0.0)
    rows = []
    first = timings["0"].median
    for i, r in enumerate(runners):
        t = timings[str(i)]
        rows.append({
            "target": r.label,
            "backend": r.backend,
            "batch": batch,
            "seq": seq,
            "threads": threads,
            "median_ms": t.median * 1e3,
            "p10_ms": t.p10 * 1e3,
            "p90_ms": t.p90 * 1e3,
            "ratio": t.median / first,
            "calls": t.calls,
            "parameters": r.parameters,
            "disk_bytes": r.disk_bytes,
            "peak_memory_bytes": peak_memory(r.spec, batch, seq, threads) if memory else None,
        })
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def format_bench(rows: list[dict[str, Any]]) -> str:
    """A table with one line per runner; ratios are to the first row."""
    head = ("target", "backend", "batch", "seq", "thr", "median ms", "p10", "p90", "ratio",
            "params", "disk MB", "peak MB")
    table = [head]
    for r in rows:
        table.append((
            r["target"], r["backend"], str(r["batch"]), str(r["seq"]), str(r["threads"]),
            f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['ratio']:.3f}",
            f"{r['parameters']:,}", _mb(r["disk_bytes"]), _mb(r["peak_memory_bytes"]),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(widths[i + 2]) for i, c in enumerate(row[2:])]
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def run_profile(runners: list[Runner], batch: int, seq: int, threads: int,
                calls: int = 20) -> tuple[str, list[dict[str, Any]]]:
    """``--profile``: per-op-kind time of every runner next to each kind's FLOPs
    (:mod:`optc.tools.measure.profile`); the tables as text, and one JSON-ready dict per runner."""
    from optc.tools.measure.profile import format_profile, profile

    torch.set_num_threads(threads)
    texts, rows = [], []
    for r in runners:
        inputs = make_inputs(r.input_names, batch, seq)
        kinds = profile(r, inputs, threads, calls=calls, module=r.module, batch=batch, seq=seq)
        texts.append(format_profile(r.label, r.backend, kinds, batch, seq, threads, calls))
        rows.append({"target": r.label, "backend": r.backend, "batch": batch, "seq": seq,
                     "threads": threads, "calls": calls,
                     "kinds": [{"kind": k.kind, "ms_per_call": k.seconds * 1e3, "flops": k.flops,
                                "bytes": k.bytes, "ops": k.ops} for k in kinds]})
    return "\n".join(texts), rows
