"""Sentence-embedding benchmark: the label-free tolerance contract on real encoders.

    python -m optc.tools.bench.embedding --models minilm,mpnet --max-drop 1

For each model (all-MiniLM-L6-v2, all-mpnet-base-v2; packaged models optc assembles from
PyPI) and with no label anywhere:

1. unlabeled search text: ``--texts`` sentences drawn (seeded) from the *training* files of
   GLUE SST-2, MRPC and RTE under the data root (never their dev), written to one file;
2. ``optc specialize``'s contract on it (task ``embedding{data=FILE}``: mean cosine to the
   input model's embeddings, ``--max-drop`` points; target ONNX Runtime, batch 1, seq 128,
   ``--threads``), with the default recipe;
3. rows, each exported to ONNX and run by ONNX Runtime: the input; the fastest structured
   point within the tolerance (fp32); the contract's choice (with int8 when it pays);
   dropping the middle layers without a search at the structured point's FLOPs (one layer
   when no structured point is within the tolerance); and the
   anchors of the fused route on the unmodified model (:mod:`optc.tools.bench.fused_route`: the
   TorchScript export with ORT's transformer fusions, and its per-channel dynamic int8,
   the quantization sentence-transformers' ``export_dynamic_quantized_onnx_model`` asks
   ORT for);
4. per row: STS-B dev Spearman (zero-shot, the model's own pooling) with the paired 95%
   interval of its change from the input, mean cosine and top-10 neighbour agreement with
   the input's embeddings on ``--held`` other training sentences the search never saw,
   latency at batch 1 and batch 32 (seq 128, ``--threads``, interleaved) and the file size.

Dev data is read for reporting only: nothing is chosen on it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "search_texts"]

MODELS = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
TEXT_TASKS = ("sst2", "mrpc", "rte")


def search_texts(count: int, held: int, seed: int = 0, root: str | Path | None = None
                 ) -> tuple[list[str], list[str]]:
    """(search texts, held-out texts): disjoint seeded samples of the training sentences of
    :data:`TEXT_TASKS` (both sentences of a pair), without duplicates, under the data
    ``root`` (default: ``$OPTC_DATA_DIR``)."""
    from optc.errors import InputError
    from optc.tasks import get_task

    texts: list[str] = []
    for name in TEXT_TASKS:
        task = get_task(name)
        data = Path(root) / str(task.data_path) if root is not None else None
        for example in task.read("train", data, val_size=0):
            texts.append(example.text)
            if example.text_pair is not None:
                texts.append(example.text_pair)
    unique = sorted({t.strip() for t in texts if t.strip()})
    if count + held > len(unique):
        raise InputError(f"the training sentences hold {len(unique)} texts; asked for "
                         f"{count} + {held}")
    random.Random(seed).shuffle(unique)
    return unique[:count], unique[count:count + held]


def _middle_drop(module: Any, flops: int) -> Any:
    """``module`` without its middle layers (attention and FFN blocks), as few as bring its
    FLOPs to at most ``flops``."""
    from optc.ir.analysis import analyze, module_flops
    from optc.search.candidates import Candidate, Config, commit

    layers = analyze(module).layers
    middle = (len(layers) - 1) / 2
    order = sorted(layers, key=lambda layer: (abs(layer.index - middle), layer.index))
    for count in range(1, len(layers)):
        clone = module.clone()
        chosen = order[:count]
        commit(clone, Config(frozenset({Candidate(kind, layer.id, ())
                                        for layer in chosen for kind in ("attention", "ffn")})))
        if module_flops(clone, 128) <= flops:
            return clone, count
    return module.clone(), 0


def _bench_model(key: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from optc.backends import write_backend
    from optc.backends.eager import to_eager
    from optc.backends.onnx import OnnxModule
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model, load_tokenizer
    from optc.ir.analysis import module_flops
    from optc.search import SearchOptions
    from optc.search.contract import ContractOptions, Target, specialize_within
    from optc.search.recipe import RECIPES
    from optc.tasks import evaluate, get_task, paired_bootstrap, read_pooling
    from optc.tasks.records import Example
    from optc.tools.bench.fused_route import build_fused, latency_rows, onnx_bytes, quantize_fused

    name = MODELS[key]

    def say(text: str) -> None:
        sys.stderr.write(f"[{key}] {text}\n")

    model, source = load_model(name)
    module = capture(model, source=source)
    tokenizer = load_tokenizer(name)
    directory = Path(str(getattr(tokenizer, "name_or_path", name)))
    pooling = read_pooling(directory) if directory.is_dir() else None
    texts, held = search_texts(args.texts, args.held, args.seed)
    file = work / f"{key}-texts.txt"
    file.write_text("\n".join(texts) + "\n")
    task = get_task(f"embedding{{data={file}}}")
    recipe = RECIPES["default"]
    options = recipe.options(SearchOptions(val_size=args.val_size, seed=args.seed,
                                           batch_size=32, max_length=128), args.max_drop)
    contract = ContractOptions(max_drop=args.max_drop, target=Target("onnx", args.threads, 1),
                               hard_attention=recipe.hard_attention, measure=recipe.measure,
                               time_budget=args.time_budget)
    begin = time.perf_counter()
    result = specialize_within(module, task, tokenizer, None, options, contract, step=say)
    seconds = time.perf_counter() - begin
    say(f"contract done in {seconds:.0f} s: {result.chosen.label}")
    fp32 = [p for p in result.points if p.within and not p.int8 and p.latency_ms is not None]
    structured = min(fp32, key=lambda p: p.latency_ms)
    variants: dict[str, Any] = {"input": module}
    if structured is not result.input:
        variants["structured"] = result.build(structured)
    if result.chosen is not structured:
        variants[f"contract ({result.chosen.label})"] = result.module
    # no search: as many middle layers as bring FLOPs to the structured point's (one layer
    # when the search found none within the tolerance)
    flops = module_flops(variants.get("structured", module), 128) - 1
    dropped, count = _middle_drop(module, flops)
    if count:
        variants[f"drop {count} middle layer{'s' if count > 1 else ''}"] = dropped
    files: dict[str, Path] = {}
    for i, (label, variant) in enumerate(variants.items()):
        path = work / f"{key}-{i}.onnx"
        write_backend(variant, "onnx", path, force=True)
        files[label] = path
    say("building the fused route")
    fused = build_fused(model, work, name=f"{key}-fused").path
    files["fused route fp32"] = fused
    files["fused route int8"] = quantize_fused(fused, work / f"{key}-fused-int8.onnx")
    sts = get_task("sentence-similarity")
    dev = sts.read("dev")
    ref_task = get_task("embedding")
    held_examples = [Example(t) for t in held]
    reference = evaluate(ref_task, to_eager(module), held_examples, tokenizer,
                         pooling=pooling, reference="self")
    rows = []
    base_sts = None
    for label, path in files.items():
        say(f"scoring {label}")
        run = OnnxModule(path, threads=args.eval_threads)  # outputs a dict, as evaluate reads
        names = tuple(run.input_names)
        scored = evaluate(sts, run, dev, tokenizer, input_names=names, pooling=pooling)
        agree = evaluate(ref_task, run, held_examples, tokenizer, input_names=names,
                         pooling=pooling, reference=reference)
        if base_sts is None:
            base_sts = scored
        change = paired_bootstrap(sts, base_sts.predictions, scored.predictions,
                                  [e.label for e in dev])
        size = onnx_bytes(path)
        rows.append({"model": name, "variant": label, "sts_b": scored.score,
                     "sts_b_change": change.to_json(), "cosine": agree.metrics["cosine"],
                     "top10_agreement": agree.metrics["top10_agreement"],
                     "file_mb": size["file"] / 1e6, "weights_mb": size["weights"] / 1e6})
    say("timing (interleaved)")
    timing = latency_rows(files, [args.threads], args.batches, args.seq, args.rounds,
                          args.block, settle=0.0, vocab=tokenizer.vocab_size)
    for row in rows:
        for t in timing:
            row[f"b{t['batch']}_ms"] = 1e3 * t["median"][row["variant"]]
    for row in rows:
        for b in args.batches:
            row[f"b{b}_speedup"] = rows[0][f"b{b}_ms"] / row[f"b{b}_ms"]
    rows[0]["search_seconds"] = seconds
    rows[0]["notes"] = result.notes
    return rows


def _table(rows: list[dict[str, Any]], batches: list[int], threads: int, seq: int) -> str:
    head = ["model", "variant", "STS-B", "change [95% CI]", "cosine", "top-10",
            *[f"B{b} ms" for b in batches], *[f"B{b} x" for b in batches], "file MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r["sts_b_change"]
        cells = [r["model"], r["variant"], f"{r['sts_b']:.2f}",
                 f"{c['delta']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]",
                 f"{r['cosine']:.2f}", f"{r['top10_agreement']:.1f}",
                 *[f"{r[f'b{b}_ms']:.1f}" for b in batches],
                 *[f"{r[f'b{b}_speedup']:.2f}" for b in batches], f"{r['file_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nONNX Runtime, seq {seq}, {threads} thread(s), interleaved medians; "
                 "x: speedup over the input's optc ONNX file")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from optc.tools.common import quiet_libraries

    p = argparse.ArgumentParser(prog="python -m optc.tools.bench.embedding",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm,mpnet")
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--texts", type=int, default=600, help="search texts (default 600)")
    p.add_argument("--val-size", type=float, default=0.5,
                   help="share of the search texts the search validates on (default 0.5)")
    p.add_argument("--held", type=int, default=500, help="held-out texts (default 500)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-threads", type=int, default=2)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--time-budget", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write the rows as JSON to this file")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    quiet_libraries()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="optc-bench-embedding-") as tmp:
        for key in [k.strip() for k in args.models.split(",") if k.strip()]:
            if key not in MODELS:
                p.error(f"unknown model '{key}'; valid: {', '.join(MODELS)}")
            rows += _bench_model(key, args, Path(tmp))
    print(_table(rows, args.batches, args.threads, args.seq))
    if args.save:
        Path(args.save).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
