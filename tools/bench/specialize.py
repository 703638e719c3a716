"""Benchmark of accuracy-driven specialization (AxFormer) on MiniLM fine-tuned per task.

    python -m optc.tools.bench.specialize [--tasks sst2,mrpc,rte,cola,stsb] [--models DIR]
        [--epochs N] [--val-size X --seed N] [--val-limit N] [--threads N]
        [--then 'quantize{mode=dynamic}'] [--rule loss|metric|metric-loss --tolerance P]
        [--sweeps N] [--unit-order index|importance] [--fine-threshold X] [--rounds N]
        [--between SPEC] [--val-data PATH] [--confirm X] [--max-flips X] [--save] [--retime]
        [--smoke]
    python -m optc.tools.bench.specialize --max-drop D [--backend onnx] [--int8 auto|on|off]
        [--recipe default|FILE] [--tasks ...] [--models DIR] [--save]

For each task: fine-tunes the embedded all-MiniLM-L6-v2 with ``optc.train.finetune`` unless
``DIR/<task>-minilm`` already holds a fine-tuned artifact (it is written there for reuse),
runs the published search, and reports the baseline dev metric; after specialization the dev
metric, FLOPs ratio, ONNX Runtime latency ratio (batch 1, seq 128, 1 thread), parameter ratio,
search time and number of evaluations; the same after ``--then``; Poor Man's BERT top-layer
dropping at the same FLOPs (its dev metric); and the speedup of the search's tricks (prefix
reuse, length-sorted batches) on a fixed set of candidate evaluations.

The search judges on the split each model's fine-tuning held out (its recorded ``val_size``
and ``seed``) unless ``--val-size``/``--seed`` say otherwise (a warning says when the model has
trained on part of the split searched).

``--max-drop D`` benchmarks the tolerance contract of ``optc specialize`` instead: per task the
dev and held-out change with their paired 95% intervals, the speedup measured on ``--backend``
(batch 1, 1 thread, seq 128) of the fastest structured point and of the result (int8 included),
whether int8 was kept, the search time, and whether the input was kept.

``--smoke`` runs a few training steps and a small validation split: it checks the machinery,
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import optc
from optc.artifacts import is_artifact, load_module, save
from optc.backends import write_backend
from optc.backends.model_inputs import token_inputs
from optc.backends.onnx import OnnxModule
from optc.frontends.capture import capture
from optc.frontends.huggingface import load_model, load_tokenizer
from optc.ir.analysis import analyze, module_flops
from optc.passes.manager import run_pipeline
from optc.passes.spec import task_pipeline
from optc.search import (
    RULES,
    Candidate,
    Config,
    GatedRunner,
    SearchOptions,
    holdout_options,
    prepare_batches,
    specialize,
    validate,
    validation_examples,
)
from optc.search.contract import ContractOptions, Target, specialize_within
from optc.search.measure import max_seq
from optc.search.options import UNIT_ORDERS
from optc.search.recipe import load_recipe
from optc.tasks import evaluate, get_task, paired_bootstrap, references_of
from optc.tools.bench.tasks import RECIPES
from optc.train import finetune, trained_max_length
from optc.train.batching import input_names_of

TASKS = ("sst2", "mrpc", "rte", "cola", "stsb")


def _names(module: Any) -> tuple[str, ...]:
    """The module's token inputs (those a tokenizer gives)."""
    return input_names_of([v.name for v in module.graph.inputs])


def _fine_tuned(task: str, models: Path, epochs: float | None, smoke: bool,
                data: str | None = None) -> Any:
    """``models/<task>-minilm`` if it holds an artifact, else MiniLM fine-tuned there with the
    task's :data:`~optc.tools.bench.tasks.RECIPES` settings (``epochs`` overrides them), keeping
    the default validation split out of training (the search's split) and the best epoch on it."""
    path = models / f"{task}-minilm{'-smoke' if smoke else ''}"
    if is_artifact(path):
        return load_module(path)
    model, source = load_model(None)
    module = capture(model, source=source)
    tok = load_tokenizer(source["tokenizer"])
    options = {k: v for k, v in RECIPES.get(task, {}).items() if k != "holdout"}
    if smoke:
        options = {"max_steps": 20, "pooling": options.get("pooling", "auto")}
    elif epochs is not None:
        options.update(epochs=epochs, max_steps=None)
    finetune(module, task, data, tokenizer=tok, eval_split="val", **options)
    save(module, path, extra={"task": module.meta["task"]})
    return module


def _onnx_latency(modules: list[Any], seq: int = 128, reps: int = 20) -> list[float]:
    """Median ORT latency (ms), batch 1, 1 thread, variants interleaved in blocks."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for i, m in enumerate(modules):
            path = Path(tmp) / f"m{i}.onnx"
            write_backend(m, "onnx", path)
            sessions.append(OnnxModule(path, threads=1))
        inputs = token_inputs(modules[0], 1, max_seq(modules[0], seq))
        times: list[list[float]] = [[] for _ in modules]
        for s in sessions:
            s(**{k: v for k, v in inputs.items() if k in s.input_names})
        for _ in range(5):
            for i, s in enumerate(sessions):
                feed = {k: v for k, v in inputs.items() if k in s.input_names}
                for _ in range(reps // 5):
                    start = time.perf_counter()
                    s(**feed)
                    times[i].append((time.perf_counter() - start) * 1000)
        return [statistics.median(t) for t in times]


def _dev_eval(task: Any, module: Any, tok: Any, dev: list[Any]) -> Any:
    return evaluate(task, optc.to_eager(module), dev, tok, input_names=_names(module),
                    max_length=trained_max_length(module.meta))


def _dev(task: Any, module: Any, tok: Any, dev: list[Any]) -> float:
    return _dev_eval(task, module, tok, dev).score


def _dev_change(task: Any, before: Any, after: Any, dev: list[Any]) -> list[float]:
    """The 95% paired-bootstrap interval of the dev metric's change (metric points)."""
    change = paired_bootstrap(task, before.predictions, after.predictions, references_of(dev))
    return [change.low, change.high]


def _top_drop_at(module: Any, flops: int) -> Any:
    """Poor Man's BERT: drop top layers until the FLOPs are at most ``flops`` (or one left)."""
    layers = len(analyze(module).layers)
    best = module
    for count in range(0, layers):
        m = module.clone()
        if count:
            run_pipeline(m, f"drop-layers{{strategy=top,count={count}}},dce")
        best = m
        if module_flops(m, 128) <= flops:
            break
    return best


def _trick_speedups(module: Any, task: Any, tok: Any, val: list[Any]) -> dict[str, float]:
    """Seconds for the same candidate evaluations with and without each trick."""
    structure = analyze(module)
    last = structure.layers[-1].id
    names = _names(module)
    heads = structure.layers[-1].attention.num_heads if structure.layers[-1].attention else 0
    cands = [Candidate("heads", last, (h,)) for h in range(min(3, heads - 1))] + \
        [Candidate("ffn", last)]
    out: dict[str, float] = {}
    sorted_batches = prepare_batches(task, val, tok, 32, None, names)
    for label, reuse in (("prefix reuse", True), ("full model", False)):
        runner = GatedRunner(module, task, sorted_batches, names, prefix_reuse=reuse)
        start = time.perf_counter()
        for c in cands:
            runner.evaluate(Config(), c)
        out[label] = time.perf_counter() - start
    from optc.tasks.batching import batches as make_batches

    unsorted = list(make_batches(val, tok, 32, 128, names, sort=False))
    runner = GatedRunner(module, task, unsorted, names, prefix_reuse=True)
    start = time.perf_counter()
    for c in cands:
        runner.evaluate(Config(), c)
    out["unsorted batches"] = time.perf_counter() - start
    return out


def _tag(args: argparse.Namespace) -> str:
    """The name of a run's options in saved models and rows (``metric-0-ffn+heads-sweeps3``)."""
    return (args.rule if args.rule == "loss" else f"{args.rule}-{args.tolerance:g}") + \
        ("-" + args.kinds.replace(",", "+") if args.kinds else "") + \
        (f"-sweeps{args.sweeps}" if args.sweeps > 1 else "") + \
        (f"-{args.unit_order}" if args.unit_order != "index" else "") + \
        (f"-fine{args.fine_threshold:g}" if args.fine_threshold != 1.1 else "") + \
        (f"-rounds{args.rounds}" if args.rounds > 1 else "") + \
        (f"-between-{args.between}" if args.rounds > 1 and args.between != "reconstruct" else "") + \
        (f"-valfile-{Path(args.val_data).stem}" if args.val_data else "") + \
        (f"-confirm{args.confirm:g}" if args.confirm else "") + \
        (f"-flips{args.max_flips:g}" if args.max_flips is not None else "")


def _retime(tasks: list[str], models: Path, tag: str, reps: int = 40) -> int:
    """Time the models an earlier ``--save`` run wrote (the unpruned, specialized, --then and
    top-dropped ones, interleaved) and print each one's ORT latency over the unpruned's."""
    print(f"ONNX Runtime latency over the unpruned model's (B1, S128, 1 thread), {tag}:")
    print("task  unpruned ms  spec  then  top-drop")
    for name in tasks:
        kinds = [k for k in ("spec", "then", "drop") if is_artifact(models / f"{name}-{k}-{tag}")]
        if "spec" not in kinds or not is_artifact(models / f"{name}-minilm"):
            print(f"{name}  (no saved models for {tag} in {models}: run with --save first)")
            continue
        found = [load_module(models / f"{name}-minilm")]
        found += [load_module(models / f"{name}-{k}-{tag}") for k in kinds]
        lat = _onnx_latency(found, reps=reps)
        ratio = dict(zip(kinds, (t / lat[0] for t in lat[1:]), strict=True))
        print(f"{name}  {lat[0]:.2f}  " + "  ".join(
            f"{ratio[k]:.3f}" if k in ratio else "-" for k in ("spec", "then", "drop")))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.bench.specialize",
                                description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--models", default="bench-models", help="where fine-tuned models are kept")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="the task's data directory, with one task (default: each task's "
                        "directory under $OPTC_DATA_DIR)")
    p.add_argument("--epochs", type=float, default=None,
                   help="fine-tuning epochs (default: the task's optc.tools.bench.tasks recipe)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the search")
    p.add_argument("--val-size", type=float, default=None,
                   help="share of train the search validates on (default: the one each "
                        "model's fine-tuning held out, else 0.15)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of that split (default: the fine-tuning holdout's, else 0)")
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--val-data", default=None, metavar="PATH",
                   help="the search's validation examples from this labelled file (or a "
                        "directory's val file) instead of --val-size of train; one task")
    p.add_argument("--confirm", type=float, default=0.0,
                   help="share of the validation examples kept out of the search to confirm "
                        "it (0: none)")
    p.add_argument("--max-flips", type=float, default=None,
                   help="refuse candidates that change the predicted class of more than this "
                        "share of the validation examples (classification)")
    p.add_argument("--then", default=None, help="pipeline after specialization")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rule", default="loss", choices=RULES,
                   help="acceptance rule (loss: the published one)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="metric rule: tolerated validation-metric drop, in points")
    p.add_argument("--sweeps", type=int, default=1,
                   help="passes over the trial order (1: published)")
    p.add_argument("--unit-order", default="index", choices=UNIT_ORDERS,
                   help="heads and neuron groups by position (published) or by Taylor importance")
    p.add_argument("--fine-threshold", type=float, default=1.1,
                   help="try groups/heads after a rejected block whose loss is below this x the "
                        "best loss (1.1: published)")
    p.add_argument("--rounds", type=int, default=1,
                   help="search rounds with --between refitting each round's result (1: one)")
    p.add_argument("--between", default="reconstruct", help="pipeline between rounds")
    p.add_argument("--kinds", default=None,
                   help="candidate kinds in order (default: the published ones, hard attention first)")
    p.add_argument("--save", action="store_true",
                   help="write the specialized, top-dropped and --then models and the row (JSON) "
                        "into --models as <task>-spec-<rule>, -drop-<rule>, -then-<rule>, to time "
                        "them later on a quiet machine (--retime)")
    p.add_argument("--retime", action="store_true",
                   help="only time the models an earlier --save run with these options wrote "
                        "(run it on a quiet machine)")
    p.add_argument("--smoke", action="store_true", help="a few steps, small split: machinery only")
    p.add_argument("--max-drop", type=float, default=None, metavar="D",
                   help="run the tolerance contract (optc specialize's default) instead: the "
                        "fastest point within D held-out metric points, timed on --backend "
                        "(batch 1, 1 thread, seq 128), with --int8; the search recipe is "
                        "--recipe (default: default)")
    p.add_argument("--backend", default="onnx", choices=["eager", "torchscript", "onnx"],
                   help="contract: what 'fastest' is measured on (default onnx)")
    p.add_argument("--int8", default="auto", choices=["auto", "on", "off"],
                   help="contract: int8 within the tolerance (default auto)")
    p.add_argument("--recipe", default="default", help="contract: recipe name or file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = Path(args.models)
    models.mkdir(parents=True, exist_ok=True)
    rows = []
    tasks = [t for t in args.tasks.split(",") if t]
    if args.data is not None and len(tasks) != 1:
        p.error("--data names one task's data: give one task with --tasks")
    if args.val_data is not None and len(tasks) != 1:
        p.error("--val-data names one task's validation file: give one task with --tasks")
    if args.retime:
        return _retime(tasks, models, _tag(args))
    if args.max_drop is not None:
        return _contract(args, tasks, models)
    for name in tasks:
        task = get_task(name)
        module = _fine_tuned(name, models, args.epochs, args.smoke, args.data)
        tok = load_tokenizer(module.meta["source"]["tokenizer"])
        options = SearchOptions(workers=args.workers,
                                rule=args.rule, tolerance=args.tolerance, sweeps=args.sweeps,
                                unit_order=args.unit_order, fine_threshold=args.fine_threshold,
                                rounds=args.rounds, between=args.between,
                                max_length=trained_max_length(module.meta),
                                val_limit=args.val_limit or (64 if args.smoke else None),
                                val_data=args.val_data, confirm=args.confirm,
                                max_flips=args.max_flips,
                                kinds=("hard-attention", "ffn", "attention") if args.smoke
                                else tuple(args.kinds.split(",")) if args.kinds
                                else SearchOptions().kinds)
        if args.val_data is None:
            options, warning = holdout_options(options, module.meta, args.val_size, args.seed)
            if warning:
                print(f"warning: {name}: {warning}", file=sys.stderr)
        result = specialize(module, task, tok, args.data, options)
        spec = result.module
        dev = task.read("dev", args.data)  # once, for every model of the row
        base_eval, spec_eval = (_dev_eval(task, m, tok, dev) for m in (module, spec))
        dev0, dev1 = base_eval.score, spec_eval.score
        dropped = _top_drop_at(module, result.flops_after)
        lat = _onnx_latency([module, spec, dropped])
        row = {"task": name, "dev": dev0, "dev_spec": dev1,
               "dev_spec_ci": _dev_change(task, base_eval, spec_eval, dev),
               "flops": result.flops_after / result.flops_before, "latency": lat[1] / lat[0],
               "params": spec.num_parameters() / module.num_parameters(),
               "search_s": result.seconds, "evals": result.evaluations,
               "sweeps": result.sweeps, "accepted": len(result.config.accepted),
               "rounds": len(result.rounds) or 1,
               "accepted_all": len(spec.meta["specialization"]["accepted"]),
               "round_flops": [r["flops_after"] / result.flops_before for r in result.rounds],
               "refits_kept": [r["between_kept"] for r in result.rounds if "between_kept" in r],
               "confirmation": [r["confirmation"] for r in result.rounds
                                or [{"confirmation": result.confirmation}]
                                if r.get("confirmation")],
               "val": result.baseline_metric,
               "val_spec": validate(spec, task, tok, args.data, options)[1],
               "dev_drop": _dev(task, dropped, tok, dev),
               "drop_flops": module_flops(dropped, 128) / result.flops_before}
        if args.then:
            then = spec.clone()  # data-reading passes get the task's data, as in optc specialize
            run_pipeline(then, task_pipeline(args.then, args.data or task.data_path, name),
                         reference=module)
            row["dev_then"] = _dev(task, then, tok, dev)
            row["val_then"] = validate(then, task, tok, args.data, options)[1]
            lt = _onnx_latency([module, then])
            row["latency_then"] = lt[1] / lt[0]
        val = validation_examples(task, args.data, options)
        row["confirmed"] = [f"{c['kept']}/{c['of']}" for c in row["confirmation"]]
        row["tricks"] = _trick_speedups(module, task, tok, val[:256])
        row["rule"] = _tag(args)
        if args.save:
            tag = row["rule"]
            save(spec, models / f"{name}-spec-{tag}", force=True, extra={"task": spec.meta["task"]})
            save(dropped, models / f"{name}-drop-{tag}", force=True)
            if args.then:
                save(then, models / f"{name}-then-{tag}", force=True)
            (models / f"{name}-spec-{tag}.json").write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(row, flush=True)
    header = ("task  dev  dev spec [95% CI of the change]  FLOPs  ORT lat  params  search s  evals  "
              "top-drop dev (FLOPs)  val base/spec" + ("  dev then  lat then  val then"
                                                      if args.then else "")
              + ("  confirmed per round" if args.confirm else ""))
    print(header)
    for r in rows:
        low, high = r["dev_spec_ci"]
        line = (f"{r['task']}  {r['dev']:.2f}  {r['dev_spec']:.2f} [{low:+.2f}, {high:+.2f}]  "
                f"{r['flops']:.3f}  "
                f"{r['latency']:.3f}  {r['params']:.3f}  {r['search_s']:.0f}  {r['evals']}  "
                f"{r['dev_drop']:.2f} ({r['drop_flops']:.3f})  {_score(r['val'])}/"
                f"{_score(r['val_spec'])}")
        if args.then:
            line += f"  {r['dev_then']:.2f}  {r['latency_then']:.3f}  {_score(r['val_then'])}"
        if args.confirm:
            line += "  " + (",".join(r["confirmed"]) or "-")
        print(line)
    print("tricks (seconds for the same 4 candidate evaluations on <=256 validation examples):")
    for r in rows:
        print(f"{r['task']}  " + "  ".join(f"{k} {v:.2f}" for k, v in r["tricks"].items()))
    return 0


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _contract(args: argparse.Namespace, tasks: list[str], models: Path) -> int:
    """One row per task under the tolerance contract: dev and held-out change with their
    paired intervals, the measured speedup on the target (structured only, and the result
    with int8), int8 kept or not, search seconds, and whether the input was kept."""
    recipe = load_recipe(args.recipe)
    rows = []
    for name in tasks:
        task = get_task(name)
        module = _fine_tuned(name, models, args.epochs, args.smoke, args.data)
        tok = load_tokenizer(module.meta["source"]["tokenizer"])
        options = recipe.options(SearchOptions(
            workers=args.workers, max_length=trained_max_length(module.meta),
            val_limit=args.val_limit or (128 if args.smoke else None), val_data=args.val_data,
            kinds=("ffn", "attention") if args.smoke else SearchOptions().kinds),
            args.max_drop)
        if args.val_data is None:
            options, warning = holdout_options(options, module.meta, args.val_size, args.seed)
            if warning:
                print(f"warning: {name}: {warning}", file=sys.stderr)
        result = specialize_within(module, task, tok, args.data, options, ContractOptions(
            max_drop=args.max_drop, target=Target(args.backend), int8=args.int8,
            hard_attention=recipe.hard_attention, measure=recipe.measure))
        dev = task.read("dev", args.data)
        before, after = (_dev_eval(task, m, tok, dev) for m in (module, result.module))
        fp32 = [p for p in result.points if p.within and not p.int8 and p.latency_ms]
        base = result.input.latency_ms or 0.0
        held = result.held_out_change
        row = {"task": name, "max_drop": args.max_drop, "dev": before.score,
               "dev_after": after.score, "dev_ci": _dev_change(task, before, after, dev),
               "held": held.before, "held_after": held.after, "held_ci": [held.low, held.high],
               "held_examples": result.held_out_examples,
               "speedup": base / result.chosen.latency_ms if result.chosen.latency_ms else None,
               "speedup_fp32": base / min(p.latency_ms for p in fp32) if fp32 else None,
               "int8": result.chosen.int8, "removed": len(result.chosen.config.accepted),
               "seconds": result.seconds, "fallback": result.fallback, "notes": result.notes,
               "backend": args.backend}
        if args.save:
            save(result.module, models / f"{name}-contract-{args.max_drop:g}", force=True,
                 extra={"task": module.meta["task"], "specialization": {
                     **result.search.summary(), "contract": result.summary()}})
            (models / f"{name}-contract-{args.max_drop:g}.json").write_text(
                json.dumps(row, indent=1, default=str))
        rows.append(row)
        print(row, flush=True)
    print(f"task  dev -> after [95% CI]  held-out -> after [95% CI]  speedup ({args.backend}) "
          "structured / result  int8  removals  search s")
    for r in rows:
        def ratio(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}x"

        print(f"{r['task']}  {r['dev']:.2f} -> {r['dev_after']:.2f} [{r['dev_ci'][0]:+.2f}, "
              f"{r['dev_ci'][1]:+.2f}]  {r['held']:.2f} -> {r['held_after']:.2f} "
              f"[{r['held_ci'][0]:+.2f}, {r['held_ci'][1]:+.2f}]  {ratio(r['speedup_fp32'])} / "
              f"{ratio(r['speedup'])}  {'yes' if r['int8'] else 'no'}  {r['removed']}  "
              f"{r['seconds']:.0f}" + ("  (input kept)" if r["fallback"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
