"""Benchmark: training steps per second in 1 and several processes (data parallel, gloo on the
CPU, NCCL on GPUs), for ``finetune`` and ``gradual-prune`` (distillation + pruning hooks).

    python -m optc.tools.bench.train [--models tiny minilm] [--nproc 1 2] [--steps 12]
                                     [--batch-size 32] [--max-length 64] [--device cpu]

Models: ``tiny`` (random BERT, hidden 64, 2 layers, on a synthetic task) and ``minilm``
(all-MiniLM-L6-v2, the packaged weights, on SST-2 from $OPTC_DATA_DIR). Each configuration
runs in fresh processes started as ``optc finetune --nproc N`` starts them (torch threads: the
machine's cores divided among the processes), with the same global batch; the figure is the
median wall time of a step after the first two (rank 0's: it includes waiting for the other
ranks), as steps per second and examples per second. No evaluation is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _prepare(model: str, root: Path) -> tuple[Path, str, str]:
    """(saved artifact, task, data path) for ``model``."""
    import optc

    if model == "tiny":
        from optc.tools.checks.gpu import TASK, build_fixture

        fx = build_fixture(root)
        path = root / "tiny"
        optc.save(fx.module, path)
        return path, TASK, str(fx.data)
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    hf, source = load_model(None)  # the embedded all-MiniLM-L6-v2
    module = capture(hf, source=source)
    path = root / "minilm"
    optc.save(module, path)
    data = os.path.join(os.environ.get("OPTC_DATA_DIR", "data"), "glue", "SST-2")
    if not os.path.isdir(data):
        data = os.path.join(os.environ.get("OPTC_DATA_DIR", "data"), "sst2")
    return path, "sst2", data


def _worker(args: argparse.Namespace) -> int:
    """One rank: train, and on rank 0 write the step times to ``args.result``."""
    import torch

    from optc.artifacts import load_module
    from optc.frontends.huggingface import load_tokenizer
    from optc.passes.gradual_prune import GradualPrune
    from optc.train import distill, finetune
    from optc.train.device import resolve_device
    from optc.train.distributed import init_from_env, shutdown

    device = resolve_device(args.device)
    world = init_from_env(device)
    module = load_module(args.artifact)
    tokenizer = load_tokenizer(module.meta["source"]["tokenizer"])
    times: list[float] = []
    common = {"tokenizer": tokenizer, "max_steps": args.steps, "batch_size": args.batch_size,
              "max_length": args.max_length, "eval_split": None, "holdout": 0,
              "device": device, "progress": lambda info: times.append(info.step_seconds)}
    if args.method == "finetune":
        finetune(module, args.task, args.data, **common)
    else:
        teacher = module.clone()
        hooks = GradualPrune(task=args.task, sparsity=0.9).make_hooks(module)
        distill(module, teacher, args.task, args.data, hooks=hooks, hidden_mse=1.0, **common)
    if world.main:
        Path(args.result).write_text(json.dumps({"times": times,
                                                 "threads": torch.get_num_threads()}))
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.bench.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm"])
    p.add_argument("--methods", nargs="+", default=["finetune", "gradual-prune"],
                   choices=["finetune", "gradual-prune"])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the cores divided among them)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    from optc.tools.cli.launch import launch_local

    rows: list[dict[str, Any]] = []
    print(f"bench_train: {os.cpu_count()} cores, device {args.device}, global batch "
          f"{args.batch_size}, max length {args.max_length}, {args.steps} steps", flush=True)
    with tempfile.TemporaryDirectory(prefix="optc-bench-train-") as tmp:
        root = Path(tmp)
        for model in args.models:
            (root / model).mkdir()
            artifact, task, data = _prepare(model, root / model)
            for method in args.methods:
                for n in args.nproc:
                    result = root / f"{model}-{method}-{n}.json"
                    began = time.perf_counter()
                    code = launch_local(
                        ["--worker", "--artifact", str(artifact), "--task", task, "--data", data,
                         "--method", method, "--result", str(result), "--steps",
                         str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
                         str(args.max_length), "--device", args.device],
                        n, threads=args.threads, module="optc.tools.bench.train")
                    wall = time.perf_counter() - began
                    if code != 0 or not result.exists():
                        print(f"{model} {method} nproc {n}: failed (exit {code})", flush=True)
                        continue
                    info = json.loads(result.read_text())
                    steady = info["times"][2:] or info["times"]
                    step = statistics.median(steady)
                    rows.append({"model": model, "method": method, "nproc": n,
                                 "threads_per_proc": info["threads"], "step_s": step,
                                 "steps_per_s": 1 / step,
                                 "examples_per_s": args.batch_size / step, "wall_s": wall})
                    print(f"{model:<7} {method:<14} nproc {n}: {1 / step:6.2f} steps/s "
                          f"({args.batch_size / step:7.1f} examples/s, median step "
                          f"{step * 1000:.0f} ms, {info['threads']} thread(s) each; "
                          f"{wall:.0f} s with start-up)", flush=True)
    print(f"\n{'model':<7} {'method':<14} {'nproc':>5} {'steps/s':>8} {'examples/s':>11} "
          f"{'vs 1 proc':>9}")
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["method"] == r["method"]
                     and b["nproc"] == 1), None)
        ratio = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x" if base else "-"
        print(f"{r['model']:<7} {r['method']:<14} {r['nproc']:>5} {r['steps_per_s']:>8.2f} "
              f"{r['examples_per_s']:>11.1f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
