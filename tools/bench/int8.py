"""Benchmark: optc's int8 (and sparse + int8) MiniLM against fp32 and the best path a user gets
without optc, plus sizes on disk, agreement and pass run time.

    python -m optc.tools.bench.int8 [--model DIR] [--batch 1 8] [--seq 128] [--threads 1 2]
                                    [--sentences 872] [--skip-latency] [--skip-base]
                                    [--onnx-only]
    python -m optc.tools.bench.int8 --artifact RUN --task sst2 [--data DIR] [--sentences N]
                                    [--max-drop P]           # task metric of each int8 mode
    python -m optc.tools.bench.int8 --attention [--artifact RUN --task sst2] [--threads 1]
                                    # int8 linears vs int8 linears + int8 attention matmuls

Variants: ``quantize`` (dynamic), ``quantize{mode=static}`` calibrated on ``--calibration``
examples of the task's training file (SST-2 train by default; never the dev sentences that
agreement is measured on), and with ``--max-drop`` the accuracy-aware static variant.

``--task``: the task metric on the dev split (first ``--sentences`` examples) of the fp32
model and each int8 variant, and the argmax agreement of their predictions with fp32's; the
fp32 model is ``--artifact`` (an optc artifact of a fine-tuned model, e.g. from ``finetune``)
or the captured ``--model``. With ``--artifact`` only this table is printed.

``--attention``: only the comparison of ``quantize`` (int8 linears) with
``quantize{targets=attention,ffn,matmuls}`` (also the attention's Q·Kᵀ and P·V in int8): with
``--task``, the dev metric and argmax agreement with fp32 of each (and of both in static mode) (fp32: ``--artifact`` or the
captured ``--model``); then latency of optc's ONNX export (fp32, int8, int8 + matmuls) and of
the eager modules, interleaved.

The before/after table of one compiled model (no data needed) is ``optc MODEL --passes=...
-o OUT --compare`` (:mod:`optc.tools.reports.compare`).

Latency (medians of interleaved blocks; ratios from one run). Each block starts after a
``--settle`` pause (0.2 s): ONNX Runtime's idle intra-op workers spin for tens of ms after a
run; on a 2-core machine the previous variant's spinning worker takes the core the next
variant's second thread needs, which at 2 threads and batch 1 (blocks of ~60 ms) cost every
variant that follows another ONNX Runtime session most of its second thread, but not the first
one, which follows the torch variants (the likely reason optc's int8 measured 14.99 ms there
against the dynamo baseline's 11.75 ms, while batch 8 scaled normally):
- eager: optc's fp32 eager module against the same IR after ``quantize`` (target: int8 >= 1.6x);
- ONNX: optc's int8 exports (``quantize``, whose embedding tables are int8 too; static QDQ;
  ``quantize{embeddings=false}``, fp32 tables) against the fused route's int8
  (:mod:`optc.tools.bench.fused_route`: the Hugging Face model with eager attention, TorchScript
  exporter, ORT's transformer optimizer, per-channel ``quantize_dynamic``, which also makes the
  embedding tables int8), with each file's size (whole file; weights alone) and agreement with the
  fp32 model in torch (cosine of mean-pooled embeddings on ``--sentences`` SST-2 dev sentences);
  ratios optc / fused (the issue's goal: <= 0.95).

``--kernel-minima N`` adds, per thread count and batch, each ONNX model's sum over its nodes of
the node's minimum kernel time in ONNX Runtime profiles of N fresh sessions: a quiet-latency
estimate on a shared machine, where a node is rarely delayed in every run while medians are
noise (under heavy load a 2-thread session may never get both cores: raise N).

Size: bytes of the encoder layers' parameters in the saved safetensors (fp32 dense, int8,
90% unstructured + int8 with compressed storage) and of the whole artifact directory.
Pass time runs on one thread and includes the verifier after each pass. Agreement: sentence embeddings (mean pooled, as sentence-transformers does) of SST-2 dev
sentences, int8 vs fp32: cosine similarity, and for each sentence whether its nearest other
sentence is the same (argmax agreement). Pass time: ``sparsify{sparsity=0.9},quantize`` on
MiniLM and on a random BERT-base-sized model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

PIPELINE = "quantize"
ATTENTION_PIPELINE = "quantize{targets=attention,ffn,matmuls}"
STATIC_PIPELINE = "quantize{{mode=static,data={data},samples={samples}}}"
SPARSE_PIPELINE = "sparsify{sparsity=0.9,pattern=unstructured},quantize"
FP32_TABLES_PIPELINE = "quantize{embeddings=false}"


def data_root() -> Path:
    return Path(os.environ.get("OPTC_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))


def static_spec(calibration: Path, samples: int) -> str:
    return STATIC_PIPELINE.format(data=calibration, samples=samples)


def task_table(fp32, task_name: str, data: str | None, calibration: Path, samples: int,  # noqa: ANN001
               limit: int, max_drop: float | None, variants: dict[str, str] | None = None) -> None:
    """Print the task metric on dev of fp32 and each int8 variant (default: dynamic, static,
    and with ``max_drop`` accuracy-aware static), with argmax agreement."""
    import optc
    from optc.passes.finetune import pass_tokenizer
    from optc.passes.spec import parse_pipeline
    from optc.tasks import evaluate, get_task

    task = get_task(task_name)
    if variants is None:
        variants = {"int8 dynamic": PIPELINE, "int8 static": static_spec(calibration, samples)}
    if max_drop is not None:
        task_dir = data or data_root() / "glue" / "SST-2"  # its train split: calibration, val
        variants[f"int8 static max_drop={max_drop}"] = (
            f"quantize{{mode=static,data={task_dir},samples={samples},task={task_name},"
            f"max_drop={max_drop},val_samples={limit}}}")
    tokenizer = pass_tokenizer(parse_pipeline("finetune")[0], fp32)
    examples = task.read("dev", data, limit=limit)
    ref = evaluate(task, optc.to_eager(fp32), examples, tokenizer)
    print(f"task {task.name}: {task.main_metric} on {len(examples)} dev examples")
    print(f"  {'fp32':<34} {ref.score:6.2f}")
    for name, spec in variants.items():
        module = fp32.clone()
        start = time.perf_counter()
        report = optc.run_pipeline(module, spec)
        seconds = time.perf_counter() - start
        got = evaluate(task, optc.to_eager(module), examples, tokenizer)
        same = sum(a == b for a, b in zip(ref.predictions, got.predictions, strict=True))
        kept = report.records[-1].stats.get("kept_fp32")
        print(f"  {name:<34} {got.score:6.2f}  drop {ref.score - got.score:+.2f}  argmax "
              f"agreement {100 * same / len(examples):.1f}%  pass {seconds:.1f} s"
              + (f"  fp32 kept: {kept}" if kept else ""))


def attention_latency(fp32, args) -> None:  # noqa: ANN001
    """ONNX and eager latency: fp32, int8 linears, int8 linears + int8 attention matmuls."""
    import optc
    from optc.backends.onnx import OnnxModule, export_onnx
    from optc.tools.measure.timing import measure_interleaved

    modules = {"fp32": fp32, "int8": fp32.clone(), "int8+matmuls": fp32.clone()}
    optc.run_pipeline(modules["int8"], PIPELINE)
    optc.run_pipeline(modules["int8+matmuls"], ATTENTION_PIPELINE)
    inputs = {v.name for v in fp32.graph.inputs}
    with tempfile.TemporaryDirectory(prefix="optc-bench-int8-attention-") as tmp:
        paths = {n: export_onnx(m, Path(tmp) / f"{n.replace('+', '-')}.onnx")
                 for n, m in modules.items()}
        eager = {n: optc.to_eager(m) for n, m in modules.items() if n != "fp32"}
        print(f"latency (ms, medians of {args.rounds} interleaved blocks of {args.block}); "
              "ratio = int8+matmuls / int8")
        print(f"{'thr':>3} {'batch':>5} {'seq':>4}  " + "  ".join(
            f"{'onnx ' + n:>18}" for n in paths) + f"  {'ratio':>5}  "
            + "  ".join(f"{'eager ' + n:>18}" for n in eager) + f"  {'ratio':>5}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            runners = {n: OnnxModule(p, threads=threads) for n, p in paths.items()}
            for batch in args.batch:
                ids = torch.randint(1000, 2000, (batch, args.seq))
                feeds = {k: v for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                           "token_type_ids": torch.zeros_like(ids)}.items()
                         if k in inputs}
                variants = {f"onnx {n}": (lambda r=r, f=feeds: r(**f)) for n, r in runners.items()}

                def run(m, f=feeds):  # noqa: ANN001, ANN202
                    with torch.inference_mode():
                        return m(**f)

                variants.update({f"eager {n}": (lambda m=m, r=run: r(m)) for n, m in eager.items()})
                t = measure_interleaved(variants, rounds=args.rounds, block=args.block,
                                        settle=args.settle)
                ms = {n: t[n].median * 1e3 for n in t}
                print(f"{threads:>3} {batch:>5} {args.seq:>4}  "
                      + "  ".join(f"{ms['onnx ' + n]:>18.2f}" for n in paths)
                      + f"  {ms['onnx int8+matmuls'] / ms['onnx int8']:>5.2f}  "
                      + "  ".join(f"{ms['eager ' + n]:>18.2f}" for n in eager)
                      + f"  {ms['eager int8+matmuls'] / ms['eager int8']:>5.2f}")


def kernel_minima(paths: dict[str, Path], threads: int, feeds: dict[str, torch.Tensor],
                  sessions: int, runs: int = 20) -> dict[str, float]:
    """Seconds per model: the sum over its graph nodes of each node's minimum kernel time in
    ONNX Runtime profiles of ``runs`` runs in each of ``sessions`` fresh sessions (interleaved
    across models): a quiet-latency estimate on a shared machine (see the module docstring)."""
    import collections
    import json

    import onnxruntime as ort

    from optc.backends.onnx import session_options

    arrays = {k: v.numpy() for k, v in feeds.items()}
    minima: dict[str, dict[str, float]] = {n: collections.defaultdict(lambda: float("inf"))
                                           for n in paths}
    with tempfile.TemporaryDirectory(prefix="optc-bench-profile-") as tmp:
        for _ in range(sessions):
            for name, path in paths.items():
                opts = session_options(threads)
                opts.enable_profiling = True
                opts.profile_file_prefix = str(Path(tmp) / "p")
                opts.log_severity_level = 3
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                inputs = {i.name: arrays[i.name] for i in session.get_inputs()}
                for _ in range(runs):
                    session.run(None, inputs)
                trace = Path(session.end_profiling())
                for event in json.loads(trace.read_text()):
                    if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                        node = minima[name]
                        node[event["name"]] = min(node[event["name"]], event["dur"] * 1e-6)
                trace.unlink()
    return {name: sum(nodes.values()) for name, nodes in minima.items()}


def onnx_comparison(model, fp32, int8, static, work: Path, args) -> dict[str, Path]:  # noqa: ANN001
    """Sizes, agreement and latency of optc's int8 ONNX exports (``static``: also its QDQ
    export) against the fused route's int8."""
    import optc
    from optc.backends.onnx import export_onnx
    from optc.tools.bench.fused_route import build_fused, int8_operand_types, quantize_fused
    from optc.tools.bench.onnx import compare_files, format_comparison, token_batches

    fused = build_fused(model, work)
    paths = {"fused int8": quantize_fused(fused.path, work / "fused-int8.onnx"),
             "optc int8": export_onnx(int8, work / "optc-int8.onnx")}
    if static is not None:
        paths["optc int8 static (QDQ)"] = export_onnx(static, work / "optc-int8-static.onnx")
    tables32 = fp32.clone()
    optc.run_pipeline(tables32, FP32_TABLES_PIPELINE)
    paths["optc int8 f32-tables"] = export_onnx(tables32, work / "optc-int8-f32-tables.onnx")
    print()
    print(f"ONNX: optc against the fused route's int8 (TorchScript export + ORT optimizer + "
          f"per-channel quantize_dynamic; fusions {fused.fused})")
    for name, path in paths.items():
        ops = int8_operand_types(path)
        print(f"  {name}: " + ", ".join(f"{op} {'/'.join(sorted(t))}" for op, t in ops.items()))
    print("  (u8 x s8: the operands ONNX Runtime's VNNI kernels take where the CPU has VNNI)")
    batches = token_batches(args.model, args.sentences)
    result = compare_files(paths, model, batches, threads=args.threads, sizes=args.batch,
                           seq=args.seq, rounds=args.rounds, block=args.block,
                           settle=args.settle)
    ratios = {f"{n.split(' ', 1)[1] if ' ' in n else n}/fused": (n, "fused int8")
              for n in paths if n.startswith("optc")}
    for line in format_comparison(result, ratios, sum(len(b["input_ids"]) for b in batches)):
        print(line)
    return paths


def encoder_bytes(artifact: Path, module) -> int:  # noqa: ANN001
    """Bytes the encoder layers' parameters take in the artifact's safetensors file (compressed
    entries and scales included)."""
    from optc.ir.analysis import analyze

    names = set()
    for layer in analyze(module).layers:
        names |= set(layer.param_names())
    with open(artifact / "weights.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        base = key.split("#")[0]
        base = base[:-len("_scale")] if base.endswith("_scale") and base[:-len("_scale")] in names else base
        if base in names:
            start, end = info["data_offsets"]
            total += end - start
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size


def sentences(count: int) -> list[str]:
    path = data_root() / "glue" / "SST-2" / "dev.tsv"
    lines = path.read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:count]]


def embeddings(run, tok, texts: list[str]) -> torch.Tensor:  # noqa: ANN001
    out = []
    for i in range(0, len(texts), 32):
        enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = run(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     token_type_ids=enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])))
        hidden = hidden["last_hidden_state"]
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    cos = (a * b).sum(-1)
    sa, sb = a @ a.T, b @ b.T
    sa.fill_diagonal_(-2)
    sb.fill_diagonal_(-2)
    same = (sa.argmax(1) == sb.argmax(1)).float().mean().item()
    return cos.mean().item(), cos.min().item(), same


def pass_time(module, spec: str) -> float:  # noqa: ANN001
    """Seconds the passes take (one thread, registry already loaded, verification included)."""
    import optc
    from optc.passes.spec import parse_pipeline

    passes = parse_pipeline(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        optc.run_pipeline(module, passes)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    from optc.tools.measure.timing import benchmark_parser

    p = benchmark_parser("python -m optc.tools.bench.int8", __doc__)
    p.add_argument("--sentences", type=int, default=872, help="SST-2 dev sentences for agreement")
    p.add_argument("--skip-latency", action="store_true", help="only sizes, agreement, pass time")
    p.add_argument("--skip-base", action="store_true", help="no BERT-base-sized pass timing")
    p.add_argument("--calibration", type=Path, default=None,
                   help="static mode's calibration file (default: SST-2 train.tsv)")
    p.add_argument("--samples", type=int, default=256, help="calibration examples")
    p.add_argument("--task", default=None, help="also print this task's dev metric per variant")
    p.add_argument("--data", default=None, help="the task's data directory (default: its own)")
    p.add_argument("--artifact", type=Path, default=None,
                   help="fine-tuned optc artifact for --task (then only the task table)")
    p.add_argument("--max-drop", type=float, default=None,
                   help="add the accuracy-aware static variant (metric points)")
    p.add_argument("--attention", action="store_true",
                   help="only: int8 linears vs int8 linears + int8 attention matmuls")
    p.add_argument("--settle", type=float, default=0.2,
                   help="seconds to pause before each timed block (see Latency above)")
    p.add_argument("--onnx-only", action="store_true",
                   help="only the ONNX comparison with the fused route's int8 (no pass times, "
                        "artifacts, eager agreement or eager latency)")
    p.add_argument("--kernel-minima", type=int, default=0, metavar="SESSIONS",
                   help="also print the ONNX models' sums of per-node minimum kernel times over "
                        "this many profiled sessions each (shared machines)")
    args = p.parse_args(argv)
    calibration = args.calibration or data_root() / "glue" / "SST-2" / "train.tsv"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optc
    from optc.backends.cpu_features import describe

    print(f"cpu: {describe()}")
    if args.attention:
        from optc.artifacts import load_module

        if args.artifact is not None:
            fp32 = load_module(args.artifact)
        else:
            model, source = optc.load_model(args.model)
            fp32 = optc.capture(model, source=source)
        torch.set_num_threads(args.threads[0])
        if args.task is not None:
            static = static_spec(calibration, args.samples)
            task_table(fp32, args.task, args.data, calibration, args.samples, args.sentences,
                       None, {"int8 linears": PIPELINE,
                              "int8 linears + attention matmuls": ATTENTION_PIPELINE,
                              "static int8 linears": static,
                              "static int8 linears + matmuls": static[:-1] + ","
                              "targets=attention,ffn,matmuls}"})
        if not args.skip_latency:
            attention_latency(fp32, args)
        return 0
    if args.artifact is not None:
        if args.task is None:
            p.error("--artifact is for the task table: give --task too")
        from optc.artifacts import load_module

        task_table(load_module(args.artifact), args.task, args.data, calibration, args.samples,
                   args.sentences, args.max_drop)
        return 0
    model, source = optc.load_model(args.model)
    fp32 = optc.capture(model, source=source)
    if args.task is not None:
        task_table(fp32, args.task, args.data, calibration, args.samples, args.sentences,
                   args.max_drop)
    int8 = fp32.clone()
    static = fp32.clone()
    sparse = fp32.clone()
    t_int8 = pass_time(int8, PIPELINE)
    if args.onnx_only:
        with tempfile.TemporaryDirectory(prefix="optc-bench-int8-") as tmp:
            onnx_comparison(model, fp32, int8, None, Path(tmp), args)
        return 0
    t_static = pass_time(static, static_spec(calibration, args.samples))
    t_sparse = pass_time(sparse, SPARSE_PIPELINE)
    print(f"pass time on {source['model']}: quantize {t_int8:.2f} s, quantize{{mode=static}} "
          f"{t_static:.2f} s ({args.samples} calibration examples), "
          f"sparsify{{0.9}}+quantize {t_sparse:.2f} s")
    if not args.skip_base:
        import transformers as tf

        torch.manual_seed(0)
        base = tf.BertModel(tf.BertConfig()).eval()
        big = optc.capture(base)
        print(f"pass time on random BERT-base ({big.num_parameters():,} params): "
              f"sparsify{{0.9}}+quantize {pass_time(big, SPARSE_PIPELINE):.2f} s")
        del base, big

    with tempfile.TemporaryDirectory(prefix="optc-bench-int8-") as tmp:
        work = Path(tmp)
        arts = {}
        variants = (("fp32", fp32), ("int8", int8), ("int8-static", static),
                    ("sparse90+int8", sparse))
        for name, mod in variants:
            arts[name] = optc.save(mod, work / name)
        print()
        print(f"{'model':<14} {'encoder MB':>10} {'ratio':>7} {'artifact MB':>11} {'ratio':>7}")
        ref_enc, ref_all = encoder_bytes(arts["fp32"], fp32), dir_bytes(arts["fp32"])
        for name, mod in variants:
            enc, total = encoder_bytes(arts[name], mod), dir_bytes(arts[name])
            print(f"{name:<14} {enc / 1e6:>10.2f} {enc / ref_enc:>7.3f} {total / 1e6:>11.2f} "
                  f"{total / ref_all:>7.3f}")

        from optc.frontends.huggingface import load_tokenizer

        tok = load_tokenizer(args.model)
        texts = sentences(args.sentences)
        with torch.inference_mode():
            e_fp32 = embeddings(optc.to_eager(fp32), tok, texts)
            e_int8 = embeddings(optc.to_eager(int8), tok, texts)
            e_static = embeddings(optc.to_eager(static), tok, texts)
            e_sparse = embeddings(optc.to_eager(sparse), tok, texts)
        print()
        print(f"agreement with fp32 on {len(texts)} SST-2 dev sentences (mean-pooled embeddings)")
        for name, e in (("int8", e_int8), ("int8-static", e_static), ("sparse90+int8", e_sparse)):
            mean, low, same = agreement(e_fp32, e)
            print(f"  {name:<14} cosine mean {mean:.4f} min {low:.4f}  nearest-neighbour argmax "
                  f"agreement {same * 100:.1f}%")
        if args.skip_latency:
            return 0

        from optc.tools.measure.timing import measure_interleaved

        paths = onnx_comparison(model, fp32, int8, static, work, args)
        eager32, eager8 = optc.to_eager(fp32), optc.to_eager(int8)
        eager8s = optc.to_eager(static)
        print()
        print(f"{'thr':>3} {'batch':>5} {'seq':>4}  {'eager f32':>10} {'eager i8':>9} {'speedup':>7} "
              f"{'eager i8 static':>15}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch:
                ids = torch.randint(1000, 2000, (batch, args.seq))
                feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                         "token_type_ids": torch.zeros_like(ids)}

                def eager(m, f=feeds):  # noqa: ANN001, ANN202
                    with torch.inference_mode():
                        return m(**f)

                variants = {"eager f32": lambda e=eager: e(eager32),
                            "eager i8": lambda e=eager: e(eager8),
                            "eager i8 static": lambda e=eager: e(eager8s)}
                t = measure_interleaved(variants, rounds=args.rounds, block=args.block,
                                        settle=args.settle)
                ms = {n: t[n].median * 1e3 for n in t}
                print(f"{threads:>3} {batch:>5} {args.seq:>4}  {ms['eager f32']:>10.2f} "
                      f"{ms['eager i8']:>9.2f} {ms['eager f32'] / ms['eager i8']:>7.2f} "
                      f"{ms['eager i8 static']:>15.2f}")
        if args.kernel_minima:
            print()
            print(f"sums of per-node minimum kernel times (ms), {args.kernel_minima} sessions")
            for threads in args.threads:
                for batch in args.batch:
                    ids = torch.randint(1000, 2000, (batch, args.seq))
                    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                             "token_type_ids": torch.zeros_like(ids)}
                    k = kernel_minima(paths, threads, feeds, args.kernel_minima)
                    best = k["fused int8"]
                    print(f"{threads:>3} {batch:>5} {args.seq:>4}  "
                          + "  ".join(f"{k[n] * 1e3:>27.2f} ms" for n in paths)
                          + f"  {k['optc int8'] / best:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
