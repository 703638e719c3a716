"""Benchmark: do structural removals pay off in proportion to the FLOPs they remove?

    python -m optc.tools.bench.structural [--batch 1 8] [--seq 128] [--threads 1]

On the embedded all-MiniLM-L6-v2 it builds (a) half of the heads and half of the FFN neurons
removed in every layer and (b) 3 of 6 layers dropped, and prints for the eager backend and
ONNX Runtime the measured latency ratio to the unpruned model next to the FLOPs ratio
(targets: (a) latency ratio <= 1.2 x FLOPs ratio, (b) latency ratio <= 0.55). It also times the
pass pipeline itself (analysis + pruning + eager lowering) on MiniLM and on a BERT-base-sized
random model (targets: 10 s and 30 s).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

HALF = "prune-heads{amount=0.5,per_layer=true},prune-neurons{amount=0.5,per_layer=true},dce"
DROP3 = "drop-layers{strategy=top,count=3},dce"


def _pipeline_seconds(module, spec: str) -> float:
    import optc

    start = time.perf_counter()
    optc.run_pipeline(module, spec)
    optc.to_eager(module)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from optc.tools.measure.timing import benchmark_parser

    p = benchmark_parser("python -m optc.tools.bench.structural", __doc__, threads=[1])
    p.add_argument("--skip-bert-base", action="store_true", help="skip the BERT-base pipeline timing")
    args = p.parse_args(argv)
    threads = args.threads[0]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.backends.onnx import OnnxModule, export_onnx
    from optc.ir.analysis import module_flops
    from optc.tools.measure.timing import measure_interleaved

    torch.set_num_threads(threads)
    model, source = optc.load_model(args.model)
    base = optc.capture(model, source=source)
    variants = {"base": base}
    pipeline_s = {}
    for name, spec in (("half heads+ffn", HALF), ("drop 3 of 6", DROP3)):
        module = base.clone()
        pipeline_s[name] = _pipeline_seconds(module, spec)
        variants[name] = module
    flops = {n: module_flops(m, args.seq) for n, m in variants.items()}
    print("MiniLM pass pipelines (analysis + pruning + eager lowering): "
          + ", ".join(f"{n}: {s:.2f} s" for n, s in pipeline_s.items()))
    if not args.skip_bert_base:
        from transformers import BertConfig, BertModel

        big = BertModel(BertConfig()).eval()  # BERT-base shape, random weights
        start = time.perf_counter()
        big_module = optc.capture(big)
        capture_s = time.perf_counter() - start
        seconds = _pipeline_seconds(big_module, HALF)
        print(f"BERT-base (random) capture {capture_s:.1f} s; pipeline (half heads+ffn): {seconds:.2f} s")
    print()
    header = (f"{'backend':<8} {'batch':>5}  {'variant':<15} {'median ms':>10} {'latency':>8} "
              f"{'FLOPs':>7} {'lat/FLOPs':>9}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="optc-bench-struct-") as tmp:
        runners = {
            "eager": {n: optc.to_eager(m) for n, m in variants.items()},
            "onnx": {n: OnnxModule(export_onnx(m, Path(tmp) / f"{i}.onnx"), threads=threads)
                     for i, (n, m) in enumerate(variants.items())},
        }
        for backend, fns in runners.items():
            for batch in args.batch:
                ids = torch.randint(1000, 2000, (batch, args.seq))
                feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                         "token_type_ids": torch.zeros_like(ids)}
                with torch.inference_mode():
                    times = measure_interleaved(
                        {n: (lambda f=f, x=feeds: f(**x)) for n, f in fns.items()},
                        rounds=args.rounds, block=args.block)
                for n in variants:
                    lat = times[n].median / times["base"].median
                    fl = flops[n] / flops["base"]
                    print(f"{backend:<8} {batch:>5}  {n:<15} {times[n].median * 1e3:>10.2f} "
                          f"{lat:>8.3f} {fl:>7.3f} {lat / fl:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
