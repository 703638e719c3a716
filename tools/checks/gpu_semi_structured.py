"""GPU check: optc's ``sparse_kernel=semi-structured`` (2:4) against dense on a MiniLM-sized BERT.

    python -m optc.tools.checks.gpu_semi_structured [--batch 8 32] [--seq 128] [--rounds 10]
                                                   [--dtypes float32 float16]

Needs a CUDA machine with pip-installed torch and this repository (transformers is not used: the
model is a random-weight BERT encoder written here in plain torch, MiniLM's shape: hidden 384,
6 layers, 12 heads, FFN 1536, post-LayerNorm, GELU, padded attention masks). For each dtype it

1. captures the model with optc (dynamic batch and sequence) and runs ``sparsify{pattern=2:4}``
   on the attention and FFN projections (36 weights);
2. lowers it twice on CUDA: ``to_eager(module, device="cuda")`` (dense) and
   ``to_eager(module, "semi-structured")`` (fp32 through torch's CUTLASS 2:4 kernels, fp16
   through cuSPARSELt), and checks that every weight got the kernel asked for;
3. checks that they agree on padded inputs: max |semi - dense| / max(1, max |dense|) within
   :data:`TOLERANCE` (2:4 tensor-core kernels may round through TF32/fp16 accumulation orders),
   and cosine similarity of the outputs >= 0.999;
4. times both (CUDA-synchronized medians of interleaved blocks) at each batch size;
5. checks that TorchScript falls back to dense with a warning (semi-structured tensors do not
   script) and still matches.

Prints one line per check and a timing table; exit status 0 when every check passed, 1 when one
failed, 2 without CUDA. Runs in well under 3 minutes on a recent GPU (capture takes ~10 s per
dtype). ``--cpu-dry-run`` runs the same steps on CPU with ``csr`` standing in for
``semi-structured`` (to test the script itself where there is no GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

TOLERANCE = {"float32": 2e-2, "float16": 5e-2}
"""Max |semi-structured - dense| relative to max(1, max |dense|), per dtype."""


class Layer(nn.Module):
    """A BERT encoder layer (post-LayerNorm, GELU FFN)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.up, self.down = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                           split(self.value(x)), attn_mask=mask)
        x = self.ln1(x + self.out(a.transpose(1, 2).reshape(b, n, h)))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """A random-weight BERT encoder of MiniLM's shape."""

    def __init__(self, vocab: int = 8192, hidden: int = 384, layers: int = 6, heads: int = 12,
                 ffn: int = 1536, positions: int = 512) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, hidden), nn.Embedding(positions, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(Layer(hidden, heads, ffn) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.ln(self.tok(input_ids) + self.pos(torch.arange(n, device=input_ids.device)))
        mask = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        return x


def build(dtype: torch.dtype, layers: int):  # noqa: ANN201
    """The 2:4-sparsified optc module of a random encoder at ``dtype``."""
    import optc
    from optc.passes.sparsify import Sparsify

    torch.manual_seed(0)
    model = Encoder(layers=layers).eval().to(dtype)
    ids = torch.randint(0, 8192, (4, 32))
    mask = torch.ones_like(ids)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    module = optc.capture(model, {"input_ids": ids, "attention_mask": mask},
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    Sparsify(pattern="2:4").run(module)
    return module


def inputs(batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    """Random ids with every other row padded over its last quarter."""
    gen = torch.Generator().manual_seed(batch * 7 + seq)
    ids = torch.randint(1, 8192, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[::2, seq - seq // 4:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def timed(variants: dict, rounds: int, block: int, sync) -> dict[str, float]:  # noqa: ANN001
    """Median milliseconds per call, interleaved in blocks, synchronized."""
    for fn in variants.values():
        for _ in range(3):
            fn()
    sync()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(block):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def compare(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max difference relative to max(1, max |want|), cosine similarity)."""
    g, w = got.float().cpu(), want.float().cpu()
    rel = float((g - w).abs().max()) / max(1.0, float(w.abs().max()))
    cos = float(F.cosine_similarity(g.reshape(1, -1), w.reshape(1, -1)))
    return rel, cos


def main(argv: list[str] | None = None) -> int:
    from optc.backends.eager import to_eager
    from optc.backends.torchscript import to_torchscript

    p = argparse.ArgumentParser(prog="python -m optc.tools.checks.gpu_semi_structured",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    p.add_argument("--layers", type=int, default=6, help="encoder layers (MiniLM: 6)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="no GPU: run the steps on CPU with csr in place of semi-structured")
    args = p.parse_args(argv)
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: the 2:4 semi-structured check needs a GPU (--cpu-dry-run tests "
              "the script on CPU)")
        return 2
    device = "cpu" if dry else "cuda"
    kernel = "csr" if dry else "semi-structured"
    sync = (lambda: None) if dry else torch.cuda.synchronize
    if not dry:
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    start = time.perf_counter()
    failures = []

    def check(ok: bool, text: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {text}", flush=True)
        if not ok:
            failures.append(text)

    rows = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        if dry and dtype != torch.float32:
            print(f"skip {name}: CPU dry run is fp32 only")
            continue
        try:
            module = build(dtype, args.layers)
            dense = to_eager(module, device=device)
            semi = to_eager(module, kernel, device=device)
        except Exception as exc:  # noqa: BLE001 - a check script reports and goes on
            check(False, f"{name}: lowering failed: {type(exc).__name__}: {exc}")
            continue
        counts = semi.sparse_plan.counts()
        check(counts == {kernel: 6 * args.layers}, f"{name}: {kernel} kernels for every 2:4 "
              f"weight ({counts})")
        with torch.inference_mode():
            for batch in args.batch:
                feeds = inputs(batch, args.seq, device)
                rel, cos = compare(semi(**feeds)[next(iter(module.graph.outputs))],
                                   dense(**feeds)[next(iter(module.graph.outputs))])
                check(rel <= TOLERANCE[name] and cos >= 0.999,
                      f"{name} batch {batch} seq {args.seq}: {kernel} vs dense max rel diff "
                      f"{rel:.2e} (<= {TOLERANCE[name]:g}), cosine {cos:.6f} (>= 0.999)")
                t = timed({"dense": lambda f=feeds, m=dense: m(**f), kernel: lambda f=feeds, m=semi: m(**f)},
                          args.rounds, args.block, sync)
                rows.append((name, batch, t["dense"], t[kernel]))
        if name == "float32":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scripted = to_torchscript(module, "semi-structured" if not dry else "dense")
            warned = any("cannot script semi-structured" in str(w.message) for w in caught)
            check(dry or warned, "TorchScript: semi-structured falls back to dense with a warning")
            feeds = inputs(2, 16, "cpu")
            with torch.inference_mode():
                out = scripted(feeds["input_ids"], feeds["attention_mask"])
                want = to_eager(module)(**feeds)
            key = next(iter(module.graph.outputs))
            rel, _ = compare(out[key], want[key])
            check(rel <= 1e-5, f"TorchScript fallback matches dense (max rel diff {rel:.1e})")
    print(f"\n{'dtype':<8} {'batch':>5} {'seq':>4} {'dense ms':>9} {kernel + ' ms':>19} {'speedup':>8}")
    for name, batch, d, s in rows:
        print(f"{name:<8} {batch:>5} {args.seq:>4} {d:>9.3f} {s:>19.3f} {d / s:>7.2f}x")
    print(f"\n{len(failures)} check(s) failed; {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
