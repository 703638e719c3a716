"""Benchmark: capture time, and eager-backend latency against the Hugging Face model.

    python -m optc.tools.bench.eager [--model DIR] [--batch 1 8] [--seq 128] [--threads 1 2]

Prints a table of median latencies (interleaved blocks, see optc.tools.measure.timing) for the
original Hugging Face model and optc's eager backend on the same inputs, and their ratio (optc / HF;
the target is <= 1.05). Defaults to the embedded all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os
import time

import torch

from optc.tools.measure.timing import benchmark_parser, measure_interleaved


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser("python -m optc.tools.bench.eager", __doc__).parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.frontends.huggingface import load_model

    model, source = load_model(args.model)
    start = time.perf_counter()
    module = optc.capture(model, source=source)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = optc.to_eager(module)
    lower_s = time.perf_counter() - start
    print(f"model: {source['model']}  capture: {capture_s:.2f} s  eager lowering: {lower_s:.3f} s")
    print()
    header = f"{'threads':>7}  {'batch':>5}  {'seq':>4}  {'HF ms':>8}  {'optc ms':>8}  {'ratio':>6}"
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            ids = torch.randint(1000, model.config.vocab_size, (batch, args.seq), generator=gen)
            mask = torch.ones_like(ids)
            with torch.inference_mode():
                ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
                out = compiled(input_ids=ids, attention_mask=mask)["last_hidden_state"]
                diff = (ref - out).abs().max().item()
                times = measure_interleaved(
                    {
                        "hf": lambda ids=ids, mask=mask: model(input_ids=ids, attention_mask=mask),
                        "optc": lambda ids=ids, mask=mask: compiled(input_ids=ids, attention_mask=mask),
                    },
                    rounds=args.rounds,
                    block=args.block,
                )
            hf, oc = times["hf"].median * 1e3, times["optc"].median * 1e3
            print(f"{threads:>7}  {batch:>5}  {args.seq:>4}  {hf:>8.2f}  {oc:>8.2f}  {oc / hf:>6.3f}"
                  f"   (max |diff| {diff:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
