"""Benchmark: embedding a corpus of real sentences of very different lengths (ragged batches).

    python -m optc.tools.bench.corpus [--model DIR] [--texts 1000] [--batch-size 32]
                                      [--threads 1 2] [--rounds 3] [--max-length 256]

The corpus: the dev texts of SST-2, MRPC and RTE (every sentence of every pair) under
``$OPTC_DATA_DIR``, shuffled with a fixed seed, the first ``--texts`` of them. Each route turns
the list of texts into mean-pooled embeddings, end to end (tokenization and pooling included),
at ``--batch-size`` texts per model call:

- ``optc``: optc's ONNX export run by :class:`optc.tasks.runtime.Runner`, which sorts the texts
  by length and pads each batch only to its own longest text;
- ``fused-padded``: the fused ONNX Runtime route (:func:`optc.tools.bench.fused_route.build_fused`:
  TorchScript exporter + ORT transformer optimizer) fed the texts in input order, each batch
  padded to its longest text (the tokenizer's ``padding=True``: what a naive loop does);
- ``st-encode``: sentence-transformers' own ``SentenceTransformer.encode`` (torch, which also
  sorts by length), when the package is installed (``pip install sentence-transformers``).

All routes use the same token limit (``--max-length``; sentence-transformers' ``max_seq_length``
is set to it) and thread count (ORT intra-op threads, torch threads). Each timing is one pass
over the corpus; routes are interleaved round by round and the median is reported, with texts
per second and the ratio of optc's throughput over each route's. The padding line counts the
tokens each batching computes on (real tokens and padding), which bounds what removing the
remaining padding inside the model could still gain.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["corpus", "padded_tokens", "main"]

CORPUS_TASKS = ("sst2", "mrpc", "rte")
"""Tasks whose dev texts make the corpus."""
_AGREEMENT = 0.999
"""Minimum cosine of every route's embedding with optc's (the same model)."""
_CHECKED = 96
"""Texts whose embeddings are compared across routes before timing."""


def corpus(count: int, root: str | os.PathLike | None = None, seed: int = 0) -> list[str]:
    """``count`` dev texts of :data:`CORPUS_TASKS` (both sentences of a pair) under the data
    ``root`` (default: ``$OPTC_DATA_DIR``), shuffled with ``seed``."""
    from optc.errors import InputError
    from optc.tasks import get_task

    texts: list[str] = []
    for name in CORPUS_TASKS:
        task = get_task(name)
        data = Path(root) / str(task.data_path) if root is not None else None
        for example in task.read("dev", data):
            texts.append(example.text)
            if example.text_pair is not None:
                texts.append(example.text_pair)
    if count > len(texts):
        raise InputError(f"the corpus has {len(texts)} texts; asked for {count}")
    random.Random(seed).shuffle(texts)
    return texts[:count]


def padded_tokens(lengths: Sequence[int], batch_size: int, sort: bool) -> int:
    """Token positions computed when texts of ``lengths`` run ``batch_size`` at a time, each
    batch padded to its longest (``sort``: longest first, as the runner batches)."""
    order = sorted(lengths, reverse=True) if sort else list(lengths)
    return sum(max(order[i:i + batch_size]) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from optc.tasks import DEFAULT_POOLING

    return DEFAULT_POOLING(hidden, mask)


def _fused_padded(session: Any, tokenizer: Any, names: Sequence[str], batch_size: int,
                  max_length: int) -> Callable[[Sequence[str]], torch.Tensor]:
    """Texts -> mean-pooled embeddings through ``session`` (an OnnxModule), input order,
    each batch padded to its longest text."""
    def run(texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            out = session(**{n: enc[n] for n in names})
            rows.append(_mean_pool(out["last_hidden_state"], enc["attention_mask"]))
        return torch.cat(rows)
    return run


def _st_encode(model_dir: str, max_length: int, batch_size: int,
               ) -> Callable[[Sequence[str]], torch.Tensor] | None:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = max_length

    def run(texts: Sequence[str]) -> torch.Tensor:
        # the model directory's own pipeline may normalize: compare directions only
        return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                            show_progress_bar=False)
    return run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m optc.tools.bench.corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="sentence-embedding model directory "
                   "(default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--data", default=None, help="data root (default: $OPTC_DATA_DIR)")
    p.add_argument("--texts", type=int, default=1000, help="corpus size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256,
                   help="token limit of every route (MiniLM's sentence-transformers default)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes over the corpus")
    p.add_argument("--no-st", action="store_true", help="leave sentence-transformers out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.backends.onnx import OnnxModule, export_onnx
    from optc.tasks.runtime import Runner
    from optc.tools.bench.fused_route import build_fused
    from optc.tools.measure.timing import measure_interleaved

    texts = corpus(args.texts, args.data)
    model, source = optc.load_model(args.model)
    model_dir = str(source.get("tokenizer") or source.get("model"))
    with tempfile.TemporaryDirectory(prefix="optc-bench-corpus-") as tmp:
        work = Path(tmp)
        optc_file = export_onnx(optc.capture(model, source=source), work / "optc.onnx")
        fused = build_fused(model, work)
        probe = Runner.open(optc_file, max_length=args.max_length)
        lengths = [len(ids) for ids in probe.tokenizer(texts, truncation=True,
                                                       max_length=args.max_length)["input_ids"]]
        real = sum(lengths)
        naive = padded_tokens(lengths, args.batch_size, sort=False)
        bucketed = padded_tokens(lengths, args.batch_size, sort=True)
        print(f"model: {source.get('model')}  corpus: {len(texts)} texts of "
              f"{'+'.join(CORPUS_TASKS)} dev, {min(lengths)}-{max(lengths)} tokens "
              f"(mean {real / len(texts):.1f}), batch {args.batch_size}, max length "
              f"{args.max_length}")
        print(f"token positions computed: input order padded {naive} ({naive / real:.2f}x the "
              f"real tokens), sorted buckets {bucketed} ({bucketed / real:.3f}x)")
        header = f"{'threads':>7}  {'route':<14} {'median s':>9} {'texts/s':>8} {'optc x':>7}"
        print()
        print(header)
        print("-" * len(header))
        for threads in args.threads:
            torch.set_num_threads(threads)
            runner = Runner.open(optc_file, threads=threads, max_length=args.max_length)
            session = OnnxModule(fused.path, threads=threads)
            routes: dict[str, Callable[[Sequence[str]], torch.Tensor]] = {
                "optc": lambda t, r=runner: r.encode(t, batch_size=args.batch_size),
                "fused-padded": _fused_padded(session, runner.tokenizer, session.input_names,
                                              args.batch_size, args.max_length),
            }
            st = None if args.no_st else _st_encode(model_dir, args.max_length, args.batch_size)
            if st is not None:
                routes["st-encode"] = st
            sample = texts[:_CHECKED]
            reference = routes["optc"](sample)
            for name, route in routes.items():
                cos = torch.nn.functional.cosine_similarity(route(sample).float(), reference,
                                                            dim=-1)
                if float(cos.min()) < _AGREEMENT:
                    raise SystemExit(f"{name} disagrees with optc: min cosine {float(cos.min()):.5f}")
            start = time.perf_counter()
            times = measure_interleaved({n: (lambda f=f: f(texts)) for n, f in routes.items()},
                                        rounds=args.rounds, block=1, warmup=0,
                                        settle=0.2 if threads > 1 else 0.0)
            for name in routes:
                median = times[name].median
                print(f"{threads:>7}  {name:<14} {median:>9.2f} {len(texts) / median:>8.0f} "
                      f"{median / times['optc'].median:>7.2f}")
            print(f"{'':>7}  ({args.rounds} interleaved rounds in "
                  f"{time.perf_counter() - start:.0f} s; optc x = route's time / optc's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
