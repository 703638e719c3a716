"""Benchmark: ``sparse_kernel=auto`` against dense on the real MiniLM, at several sparsities,
unstructured and block, with the crossover points.

    python -m optc.tools.bench.sparse [--model DIR] [--batch 1 8] [--seq 128] [--threads 1 2]
                                      [--sparsity 0.5 0.8 0.9 0.95] [--patterns unstructured block]
                                      [--tile 4] [--rounds 8] [--block 5] [--cache] [--quick]
                                      [--no-whole-model]
    python -m optc.tools.bench.sparse --per-shape ...   # the kernels alone on MiniLM's shapes

For each pattern and sparsity the model (default: the embedded all-MiniLM-L6-v2) is sparsified
with optc's ``sparsify`` (``per_tensor``; ``block`` with ``--tile`` x ``--tile`` tiles, which
torch's BSR kernel takes as they are) and lowered twice per thread count: eager dense and eager
``auto`` (planned at that thread count, measuring at the benchmarked token counts,
batch x seq, per layer and then for the whole model at sequence ``--seq``). Both run
whole-model forwards on random token ids, interleaved in blocks; the table gives medians, the
ratio auto/dense (below 1: auto is faster) and how many weights each kernel runs (and how many
of those switch to dense above a row count, where sparse stopped winning); the line under a
plan's rows is its whole-model check's decision. ``--no-whole-model`` plans with the
per-layer choices only (``AutoOptions(whole_model=False)``), as ``auto`` did before the check. The crossover of a (pattern, threads, batch) is the lowest sparsity from which auto
is at least 5% faster than dense at every higher sparsity measured. The last line checks the
promise that auto is never more than 5% slower than dense.

``--per-shape`` keeps the kernel-level table: CSR and BSR (``W_sparse @ x.T``) against the dense
linear on MiniLM's three projection shapes. ``--quick`` is a smoke run (batch 1, sequence 32,
1 thread, 90% unstructured, 2 rounds). Measurements are fresh each run unless ``--cache`` lets
auto reuse ``~/.cache/optc``.
"""

from __future__ import annotations

import torch

from optc.passes.sparsify import Sparsify

SHAPES = {"attention 384x384": (384, 384), "ffn up 1536x384": (1536, 384),
          "ffn down 384x1536": (384, 1536)}

FASTER = 0.95
"""auto/dense at or below this counts as a win for the crossover."""
SLOWER = 1.05
"""auto/dense above this breaks the promise."""


def pruned(shape: tuple[int, int], sparsity: float, pattern: str, block: int) -> torch.Tensor:
    """A random weight pruned by the sparsify pass's own ranking."""
    torch.manual_seed(0)
    w = torch.randn(shape)
    p = Sparsify(sparsity=sparsity, pattern=pattern, block=f"{block}x{block}")
    keep = p._keep_top([p._scores(w)], sparsity)[0]
    return torch.where(p._expand(keep, w), w, torch.zeros(()))


def per_shape(args) -> int:  # noqa: ANN001
    """The kernel-level table (CSR and BSR against dense per projection shape)."""
    from optc.tools.measure.timing import measure_interleaved

    print(f"{'thr':>3} {'tokens':>6} {'shape':<18} {'sparsity':>8} {'dense ms':>9} "
          f"{'csr':>7} {'bsr':>7}   (sparse / dense)")
    wins: dict[str, list[float]] = {"csr": [], "bsr": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            for label, shape in SHAPES.items():
                xin = torch.randn(batch * args.seq, shape[1])
                for s in args.sparsity:
                    w_u = pruned(shape, s, "unstructured", args.tile)
                    w_b = pruned(shape, s, "block", args.tile)
                    csr = w_u.to_sparse_csr()
                    bsr = w_b.to_sparse_bsr((args.tile, args.tile))
                    xt = xin.t().contiguous()
                    with torch.inference_mode():
                        t = measure_interleaved({
                            "dense": lambda x=xin, w=w_u: torch.nn.functional.linear(x, w),
                            "csr": lambda m=csr, x=xt: (m @ x).t(),
                            "bsr": lambda m=bsr, x=xt: (m @ x).t(),
                        }, rounds=args.rounds, block=args.block)
                    dense = t["dense"].median
                    ratios = {k: t[k].median / dense for k in ("csr", "bsr")}
                    for k, r in ratios.items():
                        if r < 1:
                            wins[k].append(s)
                    print(f"{threads:>3} {batch * args.seq:>6} {label:<18} {s:>8.2f} "
                          f"{dense * 1e3:>9.3f} {ratios['csr']:>7.2f} {ratios['bsr']:>7.2f}")
    for k, ss in wins.items():
        print(f"{k}: faster than dense at sparsities {sorted(set(ss)) or 'none measured'}")
    return 0


def token_inputs(module, batch: int, seq: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Random token ids (ids 1000-2000, like text), a full mask and zero token types."""
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, 2000, (batch, seq), generator=gen)
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    return {v.name: feeds[v.name] for v in module.graph.inputs if v.name in feeds}


def describe_plan(plan) -> str:  # noqa: ANN001
    """``csr 24 (12 up to 128 rows), dense 12``: weights per kernel, and how many of them switch
    to dense above a row count."""
    parts = []
    for kernel, n in sorted(plan.counts().items()):
        limits = sorted({c.max_tokens for c in plan.layers if c.kernel == kernel and c.max_tokens})
        limited = sum(1 for c in plan.layers if c.kernel == kernel and c.max_tokens)
        extra = f" ({limited} up to {'/'.join(map(str, limits))} rows)" if limited else ""
        parts.append(f"{kernel} {n}{extra}")
    return ", ".join(parts)


def whole_model_line(plan) -> str:  # noqa: ANN001
    """The whole-model check of ``plan`` in one line: each try's ratio, then the decision."""
    tries = ", ".join(f"{m.rows} rows {m.sparse_weights} sparse {m.ratio:.2f}x"
                      for m in plan.model_checks)
    return (f"{tries}: " if tries else "") + plan.model_note


def crossovers(rows: list[dict]) -> dict[tuple[str, int, int], float | None]:
    """(pattern, threads, batch) -> lowest sparsity from which auto wins at every higher one."""
    out: dict[tuple[str, int, int], float | None] = {}
    for key in dict.fromkeys((r["pattern"], r["threads"], r["batch"]) for r in rows):
        mine = sorted((r for r in rows if (r["pattern"], r["threads"], r["batch"]) == key),
                      key=lambda r: r["sparsity"])
        point = None
        for r in reversed(mine):
            if r["ratio"] > FASTER:
                break
            point = r["sparsity"]
        out[key] = point
    return out


def model_table(args) -> list[dict]:  # noqa: ANN001
    """Whole-model latency of auto against dense; prints the table and returns its rows."""
    import optc
    from optc.backends.eager import to_eager
    from optc.backends.sparse_exec import AutoOptions, default_cache_dir
    from optc.tools.measure.timing import measure_interleaved

    model, source = optc.load_model(args.model)
    base = optc.capture(model, source=source)
    options = AutoOptions(tokens=tuple(sorted({b * args.seq for b in args.batch})), seq=args.seq,
                          cache_dir=default_cache_dir() if args.cache else None,
                          whole_model=not args.no_whole_model)
    print(f"{'pattern':<12} {'sparsity':>8} {'thr':>3} {'batch':>5} {'dense ms':>9} {'auto ms':>9} "
          f"{'auto/dense':>10}  kernels (auto)")
    rows = []
    for pattern in args.patterns:
        for sparsity in args.sparsity:
            module = base.clone()
            Sparsify(sparsity=sparsity, pattern=pattern, block=f"{args.tile}x{args.tile}").run(module)
            label = pattern if pattern != "block" else f"block{args.tile}x{args.tile}"
            for threads in args.threads:
                torch.set_num_threads(threads)
                dense = to_eager(module)
                auto = to_eager(module, "auto", auto=options)
                kernels = describe_plan(auto.sparse_plan)
                same = set(auto.sparse_plan.counts()) <= {"dense"}  # two identical modules
                for batch in args.batch:
                    feeds = token_inputs(module, batch, args.seq)
                    with torch.inference_mode():
                        t = measure_interleaved({"dense": lambda f=feeds, m=dense: m(**f),
                                                 "auto": lambda f=feeds, m=auto: m(**f)},
                                                rounds=args.rounds, block=args.block)
                    d, a = t["dense"].median, t["auto"].median
                    row = {"pattern": label, "sparsity": sparsity, "threads": threads, "batch": batch,
                           "dense_ms": d * 1e3, "auto_ms": a * 1e3, "ratio": a / d, "kernels": kernels,
                           "whole_model": auto.sparse_plan.model_note, "identical": same}
                    rows.append(row)
                    note = " (same module: the difference is noise)" if same else ""
                    print(f"{label:<12} {sparsity:>8.2f} {threads:>3} {batch:>5} {d * 1e3:>9.2f} "
                          f"{a * 1e3:>9.2f} {a / d:>10.2f}  {kernels}{note}", flush=True)
                if auto.sparse_plan.model_note:
                    print(f"{'':<12} whole model: {whole_model_line(auto.sparse_plan)}", flush=True)
    print(f"\ncrossover (auto >= {1 - FASTER:.0%} faster than dense from this sparsity up), "
          f"seq {args.seq}:")
    for (pattern, threads, batch), point in crossovers(rows).items():
        shown = f"{point:.2f}" if point is not None else "none measured"
        print(f"  {pattern:<12} threads {threads} batch {batch}: {shown}")
    print(verdict_line(rows))
    return rows


def verdict_line(rows: list[dict]) -> str:
    """Whether auto stayed within 5% of dense, judged on the rows where auto runs a sparse
    kernel somewhere (where it chose dense for every weight, both modules are the same)."""
    judged = [r for r in rows if not r.get("identical")]
    same = len(rows) - len(judged)
    tail = f"; {same} row(s) where auto chose dense for every weight are not judged" if same else ""
    if not judged:
        return f"auto within {SLOWER - 1:.0%} of dense everywhere: yes (auto chose dense everywhere{tail})"
    worst = max(judged, key=lambda r: r["ratio"])
    verdict = "yes" if worst["ratio"] <= SLOWER else "NO"
    return (f"auto within {SLOWER - 1:.0%} of dense everywhere: {verdict} (worst auto/dense "
            f"{worst['ratio']:.2f}: {worst['pattern']} {worst['sparsity']:.2f}, "
            f"{worst['threads']} thread(s), batch {worst['batch']}{tail})")


def main(argv: list[str] | None = None) -> int:
    from optc.tools.measure.timing import benchmark_parser

    p = benchmark_parser("python -m optc.tools.bench.sparse", __doc__)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--patterns", nargs="+", default=["unstructured", "block"],
                   choices=["unstructured", "block"], help="sparsity patterns")
    p.add_argument("--tile", type=int, default=4, help="block side (block pattern, BSR)")
    p.add_argument("--cache", action="store_true", help="let auto reuse ~/.cache/optc measurements")
    p.add_argument("--per-shape", action="store_true", help="the kernel-level table instead")
    p.add_argument("--no-whole-model", action="store_true",
                   help="plan auto with the per-layer choices only (no whole-model check)")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 1, seq 32, 1 thread, "
                   "90%% unstructured, 2 rounds of 2")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.threads = [1], 32, [1]
        args.sparsity, args.patterns, args.rounds, args.block = [0.9], ["unstructured"], 2, 2
    threads = torch.get_num_threads()
    try:
        if args.per_shape:
            return per_shape(args)
        model_table(args)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
