"""``optc ... -o OUT --compare``: the compiled model side by side with the model it came from.

After writing OUT, the input model (as captured, before any pass) is lowered to the same
backend in a temporary directory and both are measured with the same inputs:

- parameters and size on disk (the file or artifact directory as written);
- latency: batch 1, ``--seq`` tokens (default 128, clamped to the position table), 1 thread,
  interleaved blocks in one process (:func:`optc.tools.measure.bench.run_bench`), median;
- agreement of the outputs on a fixed set of English sentences tokenized with the model's own
  tokenizer (random token ids when none is recorded), padded to the longest: for outputs named
  ``*logits`` (classes, span positions) the share of equal argmaxes; for token states
  ``[batch, seq, hidden]`` the cosine similarity of the mask-averaged sentence embeddings (what a
  sentence encoder such as all-MiniLM-L6-v2 is used for); otherwise the cosine of each row.

No data is needed: this is the data-free check of a compression. Task metrics need task data
(``optc eval``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optc.errors import InputError
from optc.ir.core import Module

__all__ = ["SENTENCES", "Comparison", "compare_models", "format_comparison", "agreement"]

SENTENCES = (
    "A man is playing a guitar on the street.",
    "The new movie is awesome and I would watch it again.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password?",
    "The cat sat quietly on the warm windowsill, watching the birds outside.",
    "This restaurant serves the worst pizza I have ever had.",
    "Quantum computers use qubits, which can be in a superposition of states.",
    "She finished the marathon in under four hours despite the rain.",
    "Please send me the report by Friday.",
    "The committee postponed its decision until more evidence is available.",
    "I love hiking in the mountains during autumn.",
    "Turn left at the second traffic light and the museum is on your right.",
    "The patient was given antibiotics to treat the infection.",
    "Why is the sky blue?",
    "An old lighthouse stands at the end of the rocky peninsula.",
    "Refunds are processed within five business days of receiving the returned item.",
)
"""Fixed sentences for the agreement check: varied topics and lengths (3 to 17 words)."""

COMPARE_BACKENDS = ("eager", "torchscript", "onnx")


@dataclass
class Comparison:
    """Before/after figures of one compilation."""

    backend: str
    batch: int
    seq: int
    threads: int
    parameters: tuple[int, int]
    disk_bytes: tuple[int | None, int | None]
    latency_ms: tuple[float, float]
    agreement: dict[str, dict[str, float]]
    """Per output name: the measures of :func:`agreement`."""
    inputs: str
    """What the agreement was measured on."""

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "batch": self.batch, "seq": self.seq, "threads": self.threads,
            "parameters": {"before": self.parameters[0], "after": self.parameters[1]},
            "disk_bytes": {"before": self.disk_bytes[0], "after": self.disk_bytes[1]},
            "latency_ms": {"before": round(self.latency_ms[0], 3),
                           "after": round(self.latency_ms[1], 3),
                           "speedup": round(self.latency_ms[0] / self.latency_ms[1], 3)},
            "agreement": self.agreement, "inputs": self.inputs,
        }


def agreement(before: torch.Tensor, after: torch.Tensor,
              mask: torch.Tensor | None = None, logits: bool = False) -> dict[str, float]:
    """How closely ``after`` reproduces ``before`` (same shape, float).

    ``logits`` (scores over classes or positions, last axis): ``argmax``, the share of rows
    whose argmax is equal (0-1); ``[batch, seq, hidden]`` states: ``cosine_mean`` /
    ``cosine_min`` of the ``mask``-averaged rows (sentence embeddings); otherwise the cosine of
    each flattened row. Always ``max_abs`` (the largest difference).
    """
    if before.shape != after.shape:
        raise InputError(f"outputs differ in shape: {list(before.shape)} before, "
                         f"{list(after.shape)} after")
    a, b = before.detach().float(), after.detach().float()
    result = {"max_abs": float((a - b).abs().max()) if a.numel() else 0.0}
    if logits and a.dim() >= 2 and a.shape[-1] > 1:
        result["argmax"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
        return result
    if a.dim() == 3 and mask is not None and mask.shape == a.shape[:2]:
        weights = mask.to(a.dtype).unsqueeze(-1)
        a = (a * weights).sum(1) / weights.sum(1).clamp(min=1)
        b = (b * weights).sum(1) / weights.sum(1).clamp(min=1)
    cos = torch.nn.functional.cosine_similarity(a.reshape(a.shape[0], -1),
                                                b.reshape(b.shape[0], -1), dim=-1)
    result["cosine_mean"] = float(cos.mean())
    result["cosine_min"] = float(cos.min())
    return result


def _sentence_inputs(module: Module, names: list[str], seq: int) -> tuple[dict[str, torch.Tensor], str]:
    ref = (module.meta.get("source") or {}).get("tokenizer")
    if ref is not None:
        from optc.frontends.huggingface import load_tokenizer

        try:
            tok = load_tokenizer(ref)
        except InputError:
            tok = None
        if tok is not None:
            enc = tok(list(SENTENCES), padding=True, truncation=True, max_length=seq,
                      return_tensors="pt")
            inputs = {n: enc[n] for n in names if n in enc}
            if "token_type_ids" in names and "token_type_ids" not in inputs:
                inputs["token_type_ids"] = torch.zeros_like(enc["input_ids"])
            if set(inputs) == set(names):
                return inputs, f"{len(SENTENCES)} fixed sentences, the model's tokenizer"
    from optc.tools.measure.bench import make_inputs

    return make_inputs(names, len(SENTENCES), min(seq, 32), seed=1), \
        f"{len(SENTENCES)} rows of random token ids (no tokenizer recorded)"


def _as_dict(outputs: Any, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    if isinstance(outputs, dict):
        return {k: torch.as_tensor(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return {str(i): torch.as_tensor(v) for i, v in enumerate(outputs)}
    return {"0": torch.as_tensor(outputs)}


def compare_models(original: Module, compiled: Module, out: Path, backend: str, *,
                   seq: int | None = None, threads: int = 1, rounds: int = 7) -> Comparison:
    """Measure ``out`` (written from ``compiled`` with ``backend``) against ``original``;
    ``seq`` defaults to 128 tokens, shortened to the model's position table."""
    from optc.artifacts import save
    from optc.tools.measure.bench import (
        _disk_size,
        _module_runners,
        _target_runners,
        fit_seq,
        run_bench,
    )

    if backend not in COMPARE_BACKENDS:
        raise InputError(f"--compare measures {', '.join(COMPARE_BACKENDS)} outputs, not {backend}")
    previous = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="optc-compare-") as tmp:
            work = Path(tmp)
            before = _module_runners("before", original, [backend], threads, work, None)[0]
            if backend == "eager":
                before.disk_bytes = _disk_size(save(original, work / "before-artifact"))
            after = _target_runners(str(out), [backend], threads, work)[0]
            after.label = "after"
            after.max_seq = before.max_seq
            used_seq, _ = fit_seq([before, after], seq)
            rows = run_bench([before, after], batch=1, seq=used_seq, threads=threads,
                             rounds=rounds, block=3, warmup=2, memory=False)
            inputs, described = _sentence_inputs(original, before.input_names, used_seq)
            with torch.inference_mode():
                out_before = _as_dict(before.call(inputs))
                out_after = _as_dict(after.call({k: inputs[k] for k in after.input_names}))
    finally:
        torch.set_num_threads(previous)
    mask = inputs.get("attention_mask")
    measures = {name: agreement(value, out_after[name], mask, logits="logits" in name)
                for name, value in out_before.items()
                if name in out_after and value.is_floating_point()}
    return Comparison(backend, 1, used_seq, threads,
                      (original.num_parameters(), compiled.num_parameters()),
                      (before.disk_bytes, after.disk_bytes),
                      (rows[0]["median_ms"], rows[1]["median_ms"]), measures, described)


def _ratio(before: float | None, after: float | None) -> str:
    if not before or not after:
        return "-"
    return f"{after / before:.2f}x"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _describe(measures: dict[str, float]) -> str:
    if "argmax" in measures:
        return f"argmax agrees on {measures['argmax']:.1%}, max |diff| {measures['max_abs']:.3g}"
    return (f"cosine mean {measures['cosine_mean']:.4f}, min {measures['cosine_min']:.4f}, "
            f"max |diff| {measures['max_abs']:.3g}")


def format_comparison(c: Comparison) -> str:
    """The before/after table printed by ``--compare``."""
    (p0, p1), (d0, d1), (t0, t1) = c.parameters, c.disk_bytes, c.latency_ms
    rows = [("", "before", "after", "after/before"),
            ("parameters", f"{p0:,}", f"{p1:,}", _ratio(p0, p1)),
            ("size on disk", _mb(d0), _mb(d1), _ratio(d0, d1)),
            (f"latency ({c.backend}, batch {c.batch}, seq {c.seq}, {c.threads} thread"
             f"{'s' if c.threads != 1 else ''})", f"{t0:.2f} ms", f"{t1:.2f} ms",
             f"{_ratio(t0, t1)} ({t0 / t1:.2f}x faster)")]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0])] + [x.rjust(widths[i + 1]) for i, x in enumerate(r[1:])])
             for r in rows]
    lines.append(f"agreement with the input model ({c.inputs}):")
    for name, measures in c.agreement.items():
        lines.append(f"  {name}: {_describe(measures)}")
    return "\n".join(lines) + "\n"
