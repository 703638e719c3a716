"""``optc bench --profile``: where the time goes, per op kind, next to each kind's FLOPs.

    rows = profile(runner, inputs, calls=20)          # one OpKindRow per kind with time
    print(format_profile(runner, rows, batch, seq, threads, calls))

Each runtime's own profiler times the calls: ONNX Runtime's (``SessionOptions.enable_profiling``,
a second session on the same file; its per-node ``*_kernel_time`` events of the timed runs) for
ONNX files, ``torch.profiler`` (self CPU time of each ATen op) for eager, TorchScript and
Hugging Face models. Runtime ops are grouped into the IR's op kinds by :data:`RUNTIME_KINDS`
(``linear``, ``attention``, ``norm``, ``activation``, ``embedding``; everything else, the shape
and elementwise glue, is ``other``), and each kind's FLOPs and bytes moved come from the IR's
cost model (:func:`optc.ir.analysis.node_cost`) at the same batch and sequence, so that
"latency is proportional to FLOPs" can be checked per kind: a kind whose GFLOP/s falls far below
the others' is where a regression or a slow kernel sits.

ONNX Runtime's fused ``Attention`` (and ``QAttention``) computes the query, key and value
projections inside the op: for a runtime that ran one, those ``linear`` nodes' FLOPs are
counted under ``attention`` (the ``attention`` row says ``+qkv``). Norms, activations and
embeddings have no FLOPs in the cost model (they are memory-bound); their bytes moved are shown.
Profilers add overhead to every op call, so the profiled total is above the plain latency;
compare kinds with each other, not with the latency table. FLOPs need the IR: a bare ``.onnx``
or ``.pt`` target shows ``-`` (time an artifact with ``--backends onnx`` to get them).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optc.ir.analysis import analyze, node_cost
from optc.ir.core import Module

__all__ = ["OpKindRow", "KINDS", "RUNTIME_KINDS", "IR_KINDS", "runtime_kind", "ir_costs",
           "profile", "format_profile"]

KINDS = ("linear", "attention", "norm", "activation", "embedding", "other")
"""The op kinds of the profile table, in its order."""

IR_KINDS = {"linear": "linear", "attention": "attention", "disentangled_bias": "attention",
            "rotary": "attention", "layer_norm": "norm", "rms_norm": "norm", "gelu": "activation",
            "relu": "activation", "silu": "activation", "tanh": "activation",
            "embedding": "embedding"}
"""IR op -> kind (ATen glue and anything not listed: ``other``)."""

RUNTIME_KINDS = {
    # ONNX Runtime (standard and com.microsoft ops, before and after its fusions)
    "MatMul": "linear", "Gemm": "linear", "FusedGemm": "linear", "FusedMatMul": "linear",
    "MatMulInteger": "linear", "MatMulIntegerToFloat": "linear", "DynamicQuantizeMatMul": "linear",
    "DynamicQuantizeLinear": "linear", "QGemm": "linear", "QLinearMatMul": "linear",
    "MatMulNBits": "linear",
    "Attention": "attention", "QAttention": "attention", "MultiHeadAttention": "attention",
    "Softmax": "attention", "RotaryEmbedding": "attention",
    "LayerNormalization": "norm", "SkipLayerNormalization": "norm",
    "SimplifiedLayerNormalization": "norm", "SkipSimplifiedLayerNormalization": "norm",
    "Gelu": "activation", "BiasGelu": "activation", "FastGelu": "activation",
    "QuickGelu": "activation", "Relu": "activation", "Tanh": "activation", "Erf": "activation",
    "Sigmoid": "activation",
    "EmbedLayerNormalization": "embedding", "QEmbedLayerNormalization": "embedding",
    "Gather": "embedding",  # the table lookups; a graph's index glue Gathers take microseconds
    # ATen (torch.profiler keys, self time: the leaf kernels)
    "aten::addmm": "linear", "aten::mm": "linear", "aten::linear": "linear",
    "aten::matmul": "linear", "aten::_int_mm": "linear", "quantized::linear_dynamic": "linear",
    "aten::_addmm_activation": "linear", "aten::_mkldnn_matmul": "linear",
    "aten::bmm": "attention", "aten::baddbmm": "attention", "aten::softmax": "attention",
    "aten::_softmax": "attention", "aten::_safe_softmax": "attention",
    "aten::layer_norm": "norm", "aten::native_layer_norm": "norm", "aten::rms_norm": "norm",
    "aten::_fused_rms_norm": "norm",
    "aten::gelu": "activation", "aten::relu": "activation", "aten::silu": "activation",
    "aten::tanh": "activation",
    "aten::embedding": "embedding", "aten::index_select": "embedding",
}
"""Runtime op (ONNX op type, torch.profiler key) -> kind; ``other`` when not listed."""

_QKV_FUSED = ("Attention", "QAttention")
"""ONNX Runtime ops that compute the q/k/v projections inside the attention op."""


def runtime_kind(op: str) -> str:
    """The kind of a runtime op (:data:`RUNTIME_KINDS`; SDPA kernels are ``attention``)."""
    if "scaled_dot_product" in op or "flash_attention" in op:
        return "attention"
    return RUNTIME_KINDS.get(op, "other")


@dataclass
class OpKindRow:
    """One kind's share of a profiled call."""

    kind: str
    """One of :data:`KINDS`."""
    seconds: float
    """Time per call in this kind's runtime ops (sum over the ops, divided by the calls)."""
    ops: dict[str, int] = field(default_factory=dict)
    """Runtime op -> kernel calls per model call."""
    flops: int | None = None
    """FLOPs per call of this kind's IR nodes (None: no IR known)."""
    bytes: int | None = None
    """Bytes moved per call by this kind's IR nodes (None: no IR known)."""


def ir_costs(module: Module, batch: int, seq: int, qkv_in_attention: bool = False,
             ) -> dict[str, tuple[int, int]]:
    """Kind -> (FLOPs, bytes moved) of one forward pass of ``module`` at ``batch`` x ``seq``
    (the IR's cost model). ``qkv_in_attention``: the attention blocks' q/k/v ``linear`` nodes
    count as ``attention`` (ONNX Runtime's fused Attention computes them)."""
    dims = {"batch": batch, "seq": seq}
    inside: set[int] = set()
    if qkv_in_attention:
        for layer in analyze(module).layers:
            for block in (layer.attention, layer.cross_attention):
                if block is not None:
                    inside |= {id(n) for n in (block.query, block.key, block.value) if n is not None}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for node in module.graph:
        kind = "attention" if id(node) in inside else IR_KINDS.get(node.op, "other")
        cost = node_cost(node, dims)
        totals[kind][0] += cost["flops"]
        totals[kind][1] += cost["bytes"] if kind != "other" else 0
    return {k: (v[0], v[1]) for k, v in totals.items()}


def _onnx_op_times(path: Path, threads: int, inputs: dict[str, torch.Tensor], calls: int,
                   warmup: int) -> dict[str, tuple[float, int]]:
    """ONNX op type -> (microseconds, kernel calls) summed over the ``calls`` timed runs."""
    import onnxruntime as ort

    from optc.backends.onnx import session_options

    with tempfile.TemporaryDirectory(prefix="optc-profile-") as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        feeds = {k: v.numpy() for k, v in inputs.items() if k in names}
        for _ in range(warmup + calls):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed = runs[-calls:]
    start = timed[0][0] if timed else 0
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") \
                or e["ts"] < start:
            continue
        op = str(e.get("args", {}).get("op_name", "?"))
        totals[op][0] += float(e["dur"])
        totals[op][1] += 1
    return {op: (t, int(n)) for op, (t, n) in totals.items()}


def _torch_op_times(call: Any, inputs: dict[str, torch.Tensor], calls: int,
                    warmup: int) -> dict[str, tuple[float, int]]:
    """ATen op -> (self CPU microseconds, calls) summed over ``calls`` profiled calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode():
        for _ in range(warmup):
            call(inputs)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                call(inputs)
    return {e.key: (float(e.self_cpu_time_total), int(e.count)) for e in prof.key_averages()
            if e.self_cpu_time_total > 0}


def profile(runner: Any, inputs: dict[str, torch.Tensor], threads: int, calls: int = 20,
            warmup: int = 3, module: Module | None = None, batch: int = 1,
            seq: int = 128) -> list[OpKindRow]:
    """Rows of :data:`KINDS` with nonzero time for ``runner`` (a
    :class:`optc.tools.measure.bench.Runner`) on ``inputs``: ONNX runners through ONNX Runtime's
    profiler on ``runner.extra["path"]``, the others through torch.profiler. ``module`` (the IR the
    runner was lowered from) adds the FLOPs and bytes of each kind at ``batch`` x ``seq``."""
    if runner.backend == "onnx":
        times = _onnx_op_times(Path(runner.extra["path"]), threads, inputs, calls, warmup)
    else:
        times = _torch_op_times(runner.call, inputs, calls, warmup)
    rows = {k: OpKindRow(k, 0.0) for k in KINDS}
    for op, (micros, count) in times.items():
        row = rows[runtime_kind(op)]
        row.seconds += micros * 1e-6 / calls
        row.ops[op] = row.ops.get(op, 0) + round(count / calls)
    if module is not None:
        fused = any(op in _QKV_FUSED for op in rows["attention"].ops)
        costs = ir_costs(module, batch, seq, qkv_in_attention=fused)
        for kind, row in rows.items():
            row.flops, row.bytes = costs.get(kind, (0, 0))
    return [row for row in rows.values() if row.seconds > 0]


def format_profile(label: str, backend: str, rows: list[OpKindRow], batch: int, seq: int,
                   threads: int, calls: int) -> str:
    """A table: per kind, ms per call, share of the time, GFLOP, share of the FLOPs, GFLOP/s,
    MB moved and the runtime ops (with kernel calls per model call)."""
    total = sum(r.seconds for r in rows) or 1.0
    flops = sum(r.flops or 0 for r in rows)
    fused = any(op in _QKV_FUSED for r in rows for op in r.ops)
    head = ("kind", "ms/call", "time %", "GFLOP", "FLOP %", "GFLOP/s", "MB moved", "runtime ops")
    table = [head]
    for r in rows:
        known = r.flops is not None
        name = r.kind + ("+qkv" if r.kind == "attention" and fused and known else "")
        table.append((
            name, f"{r.seconds * 1e3:.3f}", f"{100 * r.seconds / total:.1f}",
            f"{r.flops / 1e9:.3f}" if known else "-",
            f"{100 * r.flops / flops:.1f}" if known and flops else "-",
            f"{r.flops / r.seconds / 1e9:.1f}" if known and r.flops else "-",
            f"{r.bytes / 2**20:.1f}" if known and r.bytes else "-",
            ", ".join(f"{op} x{n}" for op, n in sorted(r.ops.items(), key=lambda x: -x[1])[:6])
            + (", ..." if len(r.ops) > 6 else ""),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    title = (f"profile: {label} ({backend}), batch {batch}, seq {seq}, {threads} thread(s), "
             f"{calls} profiled calls: {total * 1e3:.2f} ms/call in kernels")
    lines = [title]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in
                                             enumerate(row[1:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
