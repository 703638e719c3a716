"""``optc bench TARGET... [--batch N..] [--threads N..]``: latency, peak memory, parameters and
size on disk of targets side by side (:mod:`optc.tools.measure.bench` measures), with ``--profile``
where the time goes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from optc.errors import OptcError
from optc.tools.common import EPILOG
from optc.tools.common import Parser as _Parser

__all__ = ["cmd_bench"]


def cmd_bench(argv: list[str]) -> int:
    from optc.tools.measure.bench import (
        check_backends_option,
        fit_seq,
        format_bench,
        make_runners,
        run_bench,
        run_profile,
    )
    from optc.tools.progress import Progress

    p = _Parser(
        prog="optc bench",
        description="Latency (median, p10, p90), peak memory, parameters and size on disk of "
                    "one or more targets side by side, with ratios to the first.",
        epilog="TARGET: an .onnx file, a TorchScript .pt file, an optc artifact directory, a "
               "Hugging Face model directory or id, or 'embedded' (the bundled MiniLM)\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help="for artifacts and models: comma-separated backends to lower to and time "
                        "(eager, torchscript, onnx; 'hf' = the original model). Default: eager "
                        "for artifacts, hf for models")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--seq", type=int, default=None,
                   help="sequence length (default 128, shortened with a note to the shortest "
                        "position table among the targets; a longer explicit --seq is refused)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts (default 1)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--block", type=int, default=5, help="calls per block (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per target (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--profile", action="store_true",
                   help="also print where the time goes: per op kind (linear, attention, norm, "
                        "...) the time from ONNX Runtime's or torch's profiler next to its FLOPs "
                        "and bytes from the IR's cost model (see optc.tools.measure.profile)")
    p.add_argument("--profile-calls", type=int, default=20, metavar="N",
                   help="--profile: profiled calls per target (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = p.parse_args(argv)
    for flag in ("seq", "rounds", "block", "profile_calls"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    if min(args.batch) < 1 or min(args.threads) < 1:
        p.error("--batch and --threads must be at least 1")
    backends = [b.strip() for b in args.backends.split(",")] if args.backends is not None else None
    try:
        check_backends_option(args.targets, backends)
    except OptcError as exc:
        p.error(str(exc))
    progress = Progress(enabled=not args.quiet)
    import tempfile

    rows: list[dict[str, Any]] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as tmp:
        for threads in args.threads:
            with progress.step(f"loading {len(args.targets)} target(s)"):
                runners = make_runners(args.targets, backends, threads, Path(tmp))
            seq, note = fit_seq(runners, args.seq)
            if note and not args.quiet:
                sys.stderr.write(f"optc: note: {note}\n")
            for batch in args.batch:
                with progress.step(f"timing batch {batch}, {threads} thread(s)"):
                    timed = run_bench(runners, batch, seq, threads, args.rounds, args.block,
                                      args.warmup, memory=not args.no_memory)
                if args.profile:
                    with progress.step(f"profiling batch {batch}, {threads} thread(s)"):
                        text, kinds = run_profile(runners, batch, seq, threads,
                                                  args.profile_calls)
                    profiles.append(text)
                    for row, found in zip(timed, kinds, strict=True):
                        row["profile"] = found["kinds"]
                rows += timed
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from optc.backends.cpu_features import describe

        print(f"cpu: {describe()}")  # kernels (VNNI, BF16) and so timings depend on it
        print(format_bench(rows), end="")
        for text in profiles:
            print()
            print(text, end="")
    return 0
