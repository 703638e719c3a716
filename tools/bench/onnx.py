"""Benchmark: optc's fp32 ONNX model against the fused route, the strongest ONNX Runtime path a
user gets without optc (:mod:`optc.tools.bench.fused_route`: TorchScript exporter with eager
attention, then ORT's transformer optimizer fusing EmbedLayerNormalization, Attention,
SkipLayerNormalization and BiasGelu).

    python -m optc.tools.bench.onnx [--model DIR] [--batch 1 8] [--seq 128] [--threads 1 2]
                                    [--sentences 256] [--settle 0.2]

Prints the CPU's features, the fused route's fusions, both files' sizes (whole file, and the
weights alone: optc also records the tokenizer's files in the model), their agreement with the
fp32 Hugging Face model in torch (cosine of mean-pooled embeddings, or of logits, on SST-2 dev
sentences), and latency: medians of interleaved blocks in ONNX Runtime with all graph
optimizations, with the ratio optc / fused (the issue's goal: <= 0.95).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from optc.tools.bench.fused_route import (
    agreement,
    build_fused,
    format_latency,
    hf_reference,
    latency_rows,
    onnx_bytes,
)

__all__ = ["compare_files", "format_comparison", "token_batches", "main"]


def token_batches(model_name: str | None, count: int, batch: int = 32,
                  max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` SST-2 dev sentences, tokenized by the model's tokenizer, in batches
    (agreement is measured on them)."""
    from optc.frontends.huggingface import load_tokenizer

    tok = load_tokenizer(model_name)
    data = Path(os.environ.get("OPTC_DATA_DIR", Path(__file__).resolve().parents[3] / "shared"
                               / "data"))
    lines = (data / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:count + 1]
    texts = [line.split("\t")[0] for line in lines]
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        enc.setdefault("token_type_ids", torch.zeros_like(enc["input_ids"]))
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def compare_files(files: dict[str, Path], model: torch.nn.Module,
                  batches: list[dict[str, torch.Tensor]], *, threads: list[int],
                  sizes: list[int], seq: int, rounds: int, block: int,
                  settle: float) -> dict[str, Any]:
    """Sizes, agreement with ``model`` (fp32, torch) and interleaved latency of ONNX files."""
    from optc.backends.onnx import OnnxModule

    ref = hf_reference(model)
    result: dict[str, Any] = {"bytes": {n: onnx_bytes(p) for n, p in files.items()},
                              "agreement": {}}
    for name, path in files.items():
        runner = OnnxModule(path, threads=max(threads))
        result["agreement"][name] = agreement(
            lambda r=runner, **f: r(**{k: v for k, v in f.items() if k in r.input_names}),
            ref, batches)
    result["rows"] = latency_rows(files, threads, sizes, seq, rounds, block, settle,
                                  vocab=int(model.config.vocab_size))
    return result


def format_comparison(result: dict[str, Any], ratios: dict[str, tuple[str, str]],
                      examples: int) -> list[str]:
    """The size, agreement and latency tables of :func:`compare_files` as lines."""
    names = list(result["bytes"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'file':<{width}}  {'file MB':>8}  {'weights MB':>10}  {'cosine mean':>11}  "
             f"{'cosine min':>10}"]
    for n in names:
        b, (mean, low) = result["bytes"][n], result["agreement"][n]
        lines.append(f"{n:<{width}}  {b['file'] / 1e6:>8.2f}  {b['weights'] / 1e6:>10.2f}  "
                     f"{mean:>11.5f}  {low:>10.5f}")
    lines.append(f"(agreement: cosine with the fp32 model in torch, {examples} sentences)")
    lines.append("")
    lines += format_latency(result["rows"], ratios)
    return lines


def main(argv: list[str] | None = None) -> int:
    from optc.backends.cpu_features import describe
    from optc.tools.measure.timing import benchmark_parser

    p = benchmark_parser("python -m optc.tools.bench.onnx", __doc__)
    p.add_argument("--sentences", type=int, default=256, help="SST-2 dev sentences for agreement")
    p.add_argument("--settle", type=float, default=0.2,
                   help="seconds to pause before each timed block at 2+ threads")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.backends.onnx import export_onnx

    print(f"cpu: {describe()}")
    model, source = optc.load_model(args.model)
    batches = token_batches(args.model, args.sentences)
    with tempfile.TemporaryDirectory(prefix="optc-bench-onnx-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        module = optc.capture(model, source=source)
        files = {"optc fp32": export_onnx(module, work / "optc.onnx")}
        optc_s = time.perf_counter() - start
        start = time.perf_counter()
        fused = build_fused(model, work)
        files["fused route"] = fused.path
        fused_s = time.perf_counter() - start
        print(f"model: {source['model']}  optc captured+exported in {optc_s:.1f} s; fused route "
              f"exported+optimized in {fused_s:.1f} s, fusions: "
              + ", ".join(f"{k}={v}" for k, v in fused.fused.items()))
        print()
        result = compare_files(files, model, batches, threads=args.threads, sizes=args.batch,
                               seq=args.seq, rounds=args.rounds, block=args.block,
                               settle=args.settle)
        for line in format_comparison(result, {"optc/fused": ("optc fp32", "fused route")},
                                      sum(len(b["input_ids"]) for b in batches)):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
