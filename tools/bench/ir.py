"""IR operation times on the embedded MiniLM: capture, clone, verify, print, parse.

    python -m optc.tools.bench.ir [--repeat N]

A search that tries hundreds of candidate models clones and verifies once per candidate;
this prints the median of ``--repeat`` runs of each (milliseconds), on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

__all__ = ["main"]


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)

    import torch

    import optc
    from optc.frontends.huggingface import load_model
    from optc.ir import collect_problems, parse_module, print_module

    torch.set_num_threads(1)
    model, source = load_model(None)
    start = time.perf_counter()
    module = optc.capture(model, source=source)
    capture_ms = (time.perf_counter() - start) * 1000
    text = print_module(module, locations=True)
    weights = {n: p.data for n, p in module.params.items()}
    rows = [
        ("capture (once)", capture_ms),
        ("clone", _median_ms(module.clone, args.repeat)),
        ("verify", _median_ms(lambda: collect_problems(module), args.repeat)),
        ("print", _median_ms(lambda: print_module(module, locations=True), args.repeat)),
        ("parse", _median_ms(lambda: parse_module(text, weights), args.repeat)),
        ("print + parse (the old clone)",
         _median_ms(lambda: parse_module(print_module(module, locations=True), weights), args.repeat)),
    ]
    print(f"MiniLM: {len(module.graph)} nodes, {len(module.params)} parameters, "
          f"median of {args.repeat}, 1 thread")
    width = max(len(r[0]) for r in rows)
    print(f"{'operation'.ljust(width)}  ms")
    for name, ms in rows:
        print(f"{name.ljust(width)}  {ms:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
