"""Benchmark: torch's sparse CPU kernels (CSR, BSR) against the dense linear on MiniLM's
projection shapes, at several sparsities: where would a sparse kernel pay off?

    python -m optc.tools.bench_sparse [--batch 1 8] [--seq 128] [--threads 1 2]
                                      [--sparsity 0.5 0.8 0.9 0.95] [--tile 4]

Weights are pruned with optc's ``sparsify`` rules (unstructured per tensor; ``block`` with
``--tile`` x ``--tile`` tiles) and multiplied as ``W_sparse @ x.T`` (the layout in which
torch's CSR kernel is fastest). Latencies are medians of interleaved blocks; the ratio is
sparse over dense (below 1: the sparse kernel is faster). The crossover is the lowest sparsity
at which the sparse kernel wins for every shape.
"""

from __future__ import annotations

import torch

from optc.passes.sparsify import Sparsify

SHAPES = {"attention 384x384": (384, 384), "ffn up 1536x384": (1536, 384),
          "ffn down 384x1536": (384, 1536)}


def pruned(shape: tuple[int, int], sparsity: float, pattern: str, block: int) -> torch.Tensor:
    """A random weight pruned by the sparsify pass's own ranking."""
    torch.manual_seed(0)
    w = torch.randn(shape)
    p = Sparsify(sparsity=sparsity, pattern=pattern, block=f"{block}x{block}")
    keep = p._keep_top([p._scores(w)], sparsity)[0]
    return torch.where(p._expand(keep, w), w, torch.zeros(()))


def main(argv: list[str] | None = None) -> int:
    from optc.tools.timing import benchmark_parser, measure_interleaved

    p = benchmark_parser("python -m optc.tools.bench_sparse", __doc__)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--tile", type=int, default=4, help="BSR block side")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
