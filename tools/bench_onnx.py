"""Benchmark: optc's ONNX model against the best ONNX Runtime path a user gets without optc.

    python -m optc.tools.bench_onnx [--model DIR] [--batch 1 8] [--seq 128] [--threads 1 2]

The baselines export the Hugging Face model with ``torch.onnx.export`` (the dynamo exporter,
and the TorchScript-based one with opset 17) and run ``onnxruntime.transformers.optimizer``
(model_type bert, with the model's head count and hidden size) over each. Every model runs in
ONNX Runtime with all graph optimizations; latencies are medians of interleaved blocks. The
ratio is optc's median over the faster baseline's (the target is <= 1.05).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch


class _Outputs(torch.nn.Module):
    """The model with named tensor inputs and a tuple of its output tensors."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return tuple(out[n] for n in self.names)


def export_baselines(model: torch.nn.Module, workdir: Path) -> dict[str, Path]:
    """The Hugging Face model exported both ways and run through ORT's transformer optimizer."""
    from onnxruntime.transformers import optimizer

    names = ["last_hidden_state", "pooler_output"]
    wrapper = _Outputs(model, names).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    inputs = ["input_ids", "attention_mask", "token_type_ids"]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    paths = {}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(workdir / "dynamo.onnx"), input_names=inputs,
                          output_names=names, dynamic_shapes=({0: batch, 1: seq},) * 3,
                          dynamo=True, external_data=False)
        torch.onnx.export(wrapper, args, str(workdir / "legacy.onnx"), input_names=inputs,
                          output_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in inputs})
        for kind in ("dynamo", "legacy"):
            opt = optimizer.optimize_model(str(workdir / f"{kind}.onnx"), model_type="bert",
                                           num_heads=model.config.num_attention_heads,
                                           hidden_size=model.config.hidden_size)
            path = workdir / f"hf-{kind}-ortopt.onnx"
            opt.save_model_to_file(str(path))
            paths[f"hf+{kind}+ort-optimizer"] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    from optc.tools.timing import benchmark_parser

    args = benchmark_parser("python -m optc.tools.bench_onnx", __doc__).parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.backends.onnx import OnnxModule, export_onnx
    from optc.tools.timing import measure_interleaved

    model, source = optc.load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="optc-bench-onnx-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        paths = export_baselines(model, work)
        baseline_s = time.perf_counter() - start
        start = time.perf_counter()
        module = optc.capture(model, source=source)
        paths["optc"] = export_onnx(module, work / "optc.onnx")
        optc_s = time.perf_counter() - start
        print(f"model: {source['model']}  baselines exported+optimized in {baseline_s:.1f} s, "
              f"optc captured+exported in {optc_s:.1f} s")
        print()
        header = (f"{'threads':>7}  {'batch':>5}  {'seq':>4}  " +
                  "  ".join(f"{name:>28}" for name in paths) + f"  {'optc/best':>9}")
        print(header)
        print("-" * len(header))
        for threads in args.threads:
            runners = {name: OnnxModule(path, threads=threads) for name, path in paths.items()}
            for batch in args.batch:
                ids = torch.randint(1000, 2000, (batch, args.seq))
                feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                         "token_type_ids": torch.zeros_like(ids)}
                ref = runners["optc"](**feeds)["last_hidden_state"]
                for name, r in runners.items():
                    diff = (r(**feeds)["last_hidden_state"] - ref).abs().max().item()
                    if diff > 1e-4:
                        raise SystemExit(f"{name} disagrees with optc by {diff:.2e}")
                times = measure_interleaved({n: (lambda r=r, f=feeds: r(**f)) for n, r in runners.items()},
                                            rounds=args.rounds, block=args.block,
                                            settle=0.2 if threads > 1 else 0.0)
                best = min(t.median for n, t in times.items() if n != "optc")
                cells = "  ".join(f"{times[n].median * 1e3:>25.2f} ms" for n in paths)
                print(f"{threads:>7}  {batch:>5}  {args.seq:>4}  {cells}  "
                      f"{times['optc'].median / best:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
