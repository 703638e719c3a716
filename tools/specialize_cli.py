"""``optc specialize``: the accuracy-driven search (AxFormer) on a fine-tuned model.

    optc specialize MODEL [--task T] [--data DIR] -o OUT [--force]
                    [--rule loss|metric|metric-loss] [--tolerance P] [--kinds LIST] [--k N]
                    [--groups N] [--val-size X | --val-data PATH] [--confirm X] [--max-flips X]
                    [--flops-target R]
                    [--time-budget S] [--sweeps N] [--unit-order O] [--rounds N]
                    [--between SPEC] [--then SPEC] [--keep-pareto N] [--workers N] [--ray]

Prints the search history and a before/after table (dev metric, FLOPs, latency, size) and
writes the specialized model as an artifact whose metadata records the history.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from optc.errors import InputError, PipelineSpecError
from optc.tools.common import Parser as _Parser
from optc.tools.common import output_path

__all__ = ["cmd_specialize", "specialize_parser"]

_log = logging.getLogger("optc.specialize")

_EPILOG = ("exit codes: 0 ok, 1 internal error, 2 bad usage or option, 3 bad input model/data "
           "(no task head, labels that do not fit, too little validation data), 4 output exists "
           "or is unwritable, 5 a pass failed")


def _int_at_least(minimum: int):  # noqa: ANN202
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):  # nan compares false with every bound a later check uses
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def _val_size(text: str) -> float | int:
    value = _number(text)
    if value >= 1:
        if value != int(value):
            raise argparse.ArgumentTypeError(f"a count of examples is an integer, got {text}")
        return int(value)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1) or a count, got {text}")
    return value


def specialize_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optc specialize", description="Specialize a fine-tuned model for its "
                "task: greedily try hard attention and removing FFN/attention blocks, neuron "
                "groups and heads, keeping what the validation split says does not hurt "
                "(AxFormer). The published procedure is the default.", epilog=_EPILOG)
    p.add_argument("model", metavar="MODEL", help="fine-tuned optc artifact (optc finetune) or "
                   "Hugging Face model directory with a trained task head")
    p.add_argument("--task", help="task name or spec (default: the one the artifact records)")
    p.add_argument("--data", metavar="DIR", help="task data directory (train gives the "
                   "validation split, dev the reported metric); default: under $OPTC_DATA_DIR")
    p.add_argument("-o", "--output", metavar="OUT", type=output_path, required=True, help="artifact to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an artifact")
    p.add_argument("--rule", choices=["loss", "metric", "metric-loss"], default="loss",
                   help="acceptance: loss (published: lower mean loss and most samples no "
                        "worse), metric (validation metric within --tolerance) or metric-loss "
                        "(that, and the mean validation loss no higher than the unpruned "
                        "model's)")
    p.add_argument("--tolerance", type=_number, default=0.0,
                   help="metric rule: tolerated drop in metric points (default 0)")
    p.add_argument("--kinds", default="hard-attention,ffn,ffn-groups,attention,heads",
                   help="candidate kinds in order (default: all, published order)")
    p.add_argument("--k", type=_int_at_least(1), default=30,
                   help="hard attention: probabilities kept per query row (default 30)")
    p.add_argument("--groups", type=_int_at_least(1), default=12,
                   help="FFN neuron groups per layer (default 12)")
    p.add_argument("--fine-threshold", type=_number, default=1.1,
                   help="try groups/heads after a rejected block whose loss is below this x "
                        "the best loss (default 1.1)")
    p.add_argument("--val-size", type=_val_size, default=None,
                   help="validation split carved from train: fraction or count (default: the "
                        "split held out when the model was fine-tuned, else 0.15)")
    p.add_argument("--val-limit", type=_int_at_least(1), default=None,
                   help="use only the first N validation examples")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the validation split (default: the fine-tuning holdout's, else 0)")
    p.add_argument("--val-data", metavar="PATH", default=None,
                   help="search on this labelled file (or a directory's val file) instead of "
                        "a split carved from train: e.g. examples from where the model will "
                        "be used, when train does not represent them")
    p.add_argument("--confirm", type=_number, default=0.0, metavar="X",
                   help="keep this share of the validation examples out of the search and "
                        "cut each round's acceptances after the longest prefix the rule "
                        "still accepts on them (default 0: none, as published)")
    p.add_argument("--max-flips", type=_number, default=None, metavar="X",
                   help="classification: also refuse a candidate that changes the predicted "
                        "class of more than this share of the validation examples (e.g. "
                        "0.02; default: not counted, as published)")
    p.add_argument("--flops-target", type=_number, default=None,
                   help="stop once FLOPs are at most this fraction of the input's")
    p.add_argument("--latency-target", type=_number, default=None,
                   help="stop once the measured latency (eager, B1, S128, 1 thread) is at most "
                        "this fraction of the input's")
    p.add_argument("--time-budget", type=_number, default=None, metavar="SECONDS",
                   help="stop trying candidates after this long; the best model so far is "
                        "written")
    p.add_argument("--sweeps", type=_int_at_least(1), default=1,
                   help="passes over the trial order (default 1, as published); later sweeps "
                        "retry rejected candidates whose context changed, and a sweep that "
                        "accepts nothing ends the search")
    p.add_argument("--unit-order", choices=["index", "importance"], default="index",
                   help="heads and FFN neuron groups: index (published: by position) or "
                        "importance (Taylor importance on the validation split; heads least "
                        "important first, neurons grouped by rank)")
    p.add_argument("--rounds", type=_int_at_least(1), default=1,
                   help="search up to N times: after a round, --between refits its result "
                        "and the next round searches that, judged against MODEL's validation "
                        "results (default 1: one search, as published)")
    p.add_argument("--between", metavar="SPEC", default="reconstruct",
                   help="pipeline run between rounds (default: reconstruct, the least-squares "
                        "refit toward MODEL)")
    p.add_argument("--then", metavar="SPEC", default=None,
                   help="pipeline run on the result, e.g. 'quantize{mode=dynamic}' or "
                        "'distill{epochs=1}' (whose default teacher is MODEL, the model "
                        "before specialization)")
    p.add_argument("--keep-pareto", type=_int_at_least(0), default=0, metavar="N",
                   help="also write up to N other operating points of the history's Pareto "
                        "front (validation metric vs FLOPs) as OUT-pareto-1..N, cheapest first")
    p.add_argument("--workers", type=_int_at_least(1), default=1,
                   help="evaluate candidates in N local processes (same result as serial)")
    p.add_argument("--ray", action="store_true",
                   help="evaluate on Ray (RAY_ADDRESS, or a local instance); needs optc[ray]")
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="recompute every layer for every candidate (slower; same result)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32)
    p.add_argument("--max-length", type=_int_at_least(2), default=None,
                   help="token limit (default: the one the model was fine-tuned with, else "
                        "128; 384 for QA)")
    p.add_argument("--no-dev", action="store_true", help="skip the dev metric before/after")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the one "
                   "recorded with the model)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch threads")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


def _load(target: str, progress: Any) -> Any:
    from optc.artifacts import is_artifact, load_module
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    if is_artifact(target):
        with progress.step(f"loading artifact {target}"):
            return load_module(target)
    if not Path(target).exists():
        raise InputError(f"'{target}' does not exist (give a fine-tuned optc artifact or model "
                         "directory)")
    with progress.step(f"loading {target}"):
        model, source = load_model(target)
    with progress.step("capturing with torch.export"):
        return capture(model, source=source)


def _refuse_untrained(target: str, meta: dict[str, Any]) -> None:
    fresh = (meta.get("source") or {}).get("newly_initialized") or []
    if fresh and not (meta.get("task") or {}).get("trained_steps"):
        raise InputError(f"'{target}' has a task head initialized at random ({fresh[0]}, ...): "
                         "fine-tune it first (optc finetune)")


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or b is None else f"{b / a:.3f}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _change(before: float | None, after: float | None, form: str = "{:+.2f}") -> str:
    return "-" if before is None or after is None else form.format(after - before)


def _confirmation_line(held: dict[str, Any], metric: str, round_: int | None) -> str:
    """One line on a round's confirmation: what it kept and the figures it judged by."""
    def figure(value: float | None, loss: float) -> str:
        return f"{metric} {value:.2f}" if value is not None else f"loss {loss:.4f}"

    kept = next((p for p in held["prefixes"] if p["passes"]), None)
    line = (f"confirmation{'' if round_ is None else f' (round {round_})'} on "
            f"{held['examples']} held-out validation examples: kept {held['kept']} of "
            f"{held['of']} acceptances (input: "
            f"{figure(held['baseline_metric'], held['baseline_loss'])}")
    if kept is not None:
        line += f"; kept: {figure(kept['metric'], kept['mean_loss'])}"
    return line + ")"


def cmd_specialize(argv: list[str]) -> int:
    """``optc specialize``: run the search and write the specialized artifact."""
    import torch

    from optc.artifacts import save
    from optc.backends.eager import to_eager
    from optc.frontends.huggingface import load_tokenizer
    from optc.outputs import check_output
    from optc.passes.manager import run_pipeline
    from optc.passes.spec import task_pipeline
    from optc.search import SearchOptions, commit, holdout_options, specialize, validate
    from optc.search.measure import latencies
    from optc.tasks import evaluate, get_task, paired_bootstrap, references_of
    from optc.tools.progress import Progress
    from optc.train import task_from_meta, task_spec, trained_max_length

    args = specialize_parser().parse_args(argv)
    progress = Progress(enabled=not args.quiet)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    options = SearchOptions(  # bad options fail before any slow work (exit 2)
        rule=args.rule, tolerance=args.tolerance, kinds=kinds, neuron_groups=args.groups,
        k=args.k, fine_threshold=args.fine_threshold,
        val_size=0.15 if args.val_size is None else args.val_size,
        seed=0 if args.seed is None else args.seed,
        val_limit=args.val_limit, batch_size=args.batch_size, max_length=args.max_length,
        flops_target=args.flops_target, latency_target=args.latency_target,
        time_budget=args.time_budget, sweeps=args.sweeps, unit_order=args.unit_order,
        rounds=args.rounds, between=args.between, prefix_reuse=not args.no_prefix_reuse,
        workers=args.workers, ray=args.ray, confirm=args.confirm, max_flips=args.max_flips)
    if args.val_data is not None and (args.val_size is not None or args.seed is not None):
        raise PipelineSpecError("--val-data replaces the validation split carved from "
                                "train: drop --val-size/--seed")
    options = dataclasses.replace(options, val_data=args.val_data)
    task = get_task(args.task) if args.task else None
    if task is not None:
        task.check_trainable("optc specialize")
    if args.then:
        task_pipeline(args.then, args.data, args.task)  # a bad spec fails early
    if args.ray or os.environ.get("RAY_ADDRESS"):
        from optc.search.executors import _import_ray

        _import_ray()
    out = Path(args.output)
    inputs = [Path(p) for p in (args.model, args.data, args.val_data)
              if p is not None and os.path.lexists(p)]
    check_output(out, args.force, kind="artifact", inputs=inputs)
    pareto_paths = [out.with_name(f"{out.name}-pareto-{i + 1}") for i in range(args.keep_pareto)]
    for path in pareto_paths:
        check_output(path, args.force, kind="artifact", inputs=inputs)
    from optc.tasks import resolve_task_path

    for path in (args.data, args.val_data):
        if path is not None:
            resolve_task_path(path)
    module = _load(args.model, progress)
    _refuse_untrained(args.model, module.meta)
    task = task or task_from_meta(module.meta)
    if task is None:
        raise InputError(f"'{args.model}' records no task: pass --task NAME")
    then_task = args.task or task_spec(task) or task.name  # what --then's training passes get
    ref = args.tokenizer or (module.meta.get("source") or {}).get("tokenizer")
    if ref is None:
        raise InputError("the model records no tokenizer: pass --tokenizer DIR")
    tokenizer = load_tokenizer(ref)
    if args.val_data is None:
        options, warning = holdout_options(options, module.meta, args.val_size, args.seed)
        if warning:
            _log.warning(warning)
    max_length = args.max_length or trained_max_length(module.meta)
    options = dataclasses.replace(options, max_length=max_length)
    names = tuple(v.name for v in module.graph.inputs
                  if v.name in ("input_ids", "attention_mask", "token_type_ids"))

    def on_trial(entry: Any) -> None:
        if not args.quiet:
            mark = "accepted" if entry.accepted else "rejected"
            label = f"{entry.label} (round {entry.round})" if entry.round > 1 else entry.label
            sys.stderr.write(f"optc: step {entry.step}: layer {entry.layer} {label}: "
                             f"loss {entry.mean_loss:.4f}, {100 * entry.not_worse:.0f}% not "
                             f"worse, {mark}\n")

    with progress.step(f"searching ({task.name})"):
        result = specialize(module, task, tokenizer, args.data, options, progress=on_trial)
    final = result.module
    if args.then:
        with progress.step(f"running {args.then}"):
            report = run_pipeline(final, task_pipeline(args.then, args.data, then_task),
                                  reference=module)
        if not args.quiet and not args.json:
            print(report.table())
    with progress.step(f"evaluating {task.name} validation after"):
        val_loss, val_metric = validate(final, task, tokenizer, args.data, options)
    dev_before = dev_after = dev_change = None
    if not args.no_dev:
        with progress.step(f"evaluating {task.name} dev before and after"):
            dev = task.read("dev", args.data)
            before = evaluate(task, to_eager(module), dev, tokenizer, input_names=names,
                              max_length=max_length)
            after = evaluate(task, to_eager(final), dev, tokenizer, input_names=names,
                             max_length=max_length)
            dev_before, dev_after = before.score, after.score
            dev_change = paired_bootstrap(task, before.predictions, after.predictions,
                                          references_of(dev))
    lat_before = lat_after = None
    if not args.no_latency:
        with progress.step("measuring latency (batch 1, seq 128, 1 thread)"):
            lat_before, lat_after = latencies([module, final])
    summary = result.summary()
    summary.update({"dev_metric_before": dev_before, "dev_metric_after": dev_after,
                    "dev_change": None if dev_change is None else dev_change.to_json(),
                    "latency_ms_before": lat_before, "latency_ms_after": lat_after,
                    "params_after": final.num_parameters(), "then": args.then,
                    "val_loss_after": val_loss, "val_metric_after": val_metric,
                    "max_flips": args.max_flips})
    meta = dict(final.meta)
    sweeps = f",sweeps={args.sweeps}" if args.sweeps > 1 else ""
    order = f",unit_order={args.unit_order}" if args.unit_order != "index" else ""
    order += f",rounds={args.rounds}" if args.rounds > 1 else ""
    tolerance = f",tolerance={args.tolerance:g}" if args.rule != "loss" else ""
    tolerance += f",max_flips={args.max_flips:g}" if args.max_flips is not None else ""
    order += f",confirm={args.confirm:g}" if args.confirm else ""
    meta["pipeline"] = list(meta.get("pipeline", [])) + [
        f"specialize{{rule={args.rule}{tolerance},k={args.k}{sweeps}{order}}}"]
    final.meta = meta
    extra = {"specialization": summary}
    if module.meta.get("task"):
        extra["task"] = module.meta["task"]
    with progress.step(f"writing {out}"):
        save(final, out, force=args.force, extra=extra, inputs=inputs)
    written = []
    for path, (config, score, flops) in zip(pareto_paths, result.pareto(args.keep_pareto),
                                           strict=False):
        point = (result.searched or module).clone()  # the last round's points
        commit(point, config)
        if args.then:
            run_pipeline(point, task_pipeline(args.then, args.data, then_task),
                         reference=module)
        lat = None if args.no_latency else latencies([module, point])[1]
        info = {"val_score": score, "flops": flops, "latency_ms": lat,
                "parameters": point.num_parameters(),
                "accepted": [dataclasses.asdict(c) for c in sorted(config.accepted)]}
        with progress.step(f"writing {path}"):
            save(point, path, force=args.force, extra={**extra, "pareto": info}, inputs=inputs)
        written.append((path, info))
    summary["pareto"] = [{"path": str(p), **{k: v for k, v in i.items() if k != "accepted"}}
                         for p, i in written]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(result.table())
    print()
    rows = [("", "before", "after", "ratio"),
            (f"dev {task.main_metric}", "-" if dev_before is None else f"{dev_before:.2f}",
             "-" if dev_after is None else f"{dev_after:.2f}",
             "-" if dev_change is None else dev_change.describe()),
            (f"validation {task.main_metric}", _score(result.baseline_metric),
             _score(val_metric), _change(result.baseline_metric, val_metric)),
            ("validation loss", f"{result.baseline_loss:.4f}", f"{val_loss:.4f}",
             _change(result.baseline_loss, val_loss, "{:+.4f}")),
            ("GFLOPs (B1,S128)", f"{result.flops_before / 1e9:.3f}",
             f"{result.flops_after / 1e9:.3f}", _ratio(result.flops_before, result.flops_after)),
            ("latency ms (eager)", "-" if lat_before is None else f"{lat_before:.2f}",
             "-" if lat_after is None else f"{lat_after:.2f}", _ratio(lat_before, lat_after)),
            ("parameters", f"{result.params_before:,}", f"{final.num_parameters():,}",
             _ratio(result.params_before, final.num_parameters()))]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for path, info in written:
        lat = "" if info["latency_ms"] is None else f", {info['latency_ms']:.2f} ms"
        print(f"wrote {path}: validation {info['val_score']:.2f}, "
              f"{info['flops'] / 1e9:.3f} GFLOPs{lat}, {info['parameters']:,} parameters")
    hard = sorted({c.layer for c in result.config.accepted if c.kind == "hard-attention"})
    if hard and lat_before and lat_after and lat_after > 1.02 * lat_before:
        print(f"note: hard attention (layers {', '.join(map(str, hard))}) makes this model "
              f"{lat_after / lat_before:.2f}x slower here: top-k attention has no fused kernel "
              "on this machine; --kinds ffn,ffn-groups,attention,heads searches structured "
              "removals only")
    for info in result.rounds or [{"round": 1, "confirmation": result.confirmation}]:
        if info.get("confirmation"):
            print(_confirmation_line(info["confirmation"], task.main_metric,
                                     info["round"] if result.rounds else None))
        if info.get("between_kept") is False:
            figure = (f"validation {task.main_metric} {_score(info['between_val_metric'])}"
                      if info["between_val_metric"] is not None
                      else f"validation loss {info['between_loss']:.4f}")
            print(f"note: round {info['round'] + 1} accepted nothing and the refit it "
                  f"searched ({figure}) fails the {args.rule} rule against the input: round "
                  f"{info['round']}'s result was kept without the refit")
    print(f"wrote {out}: {len(result.config.accepted)} of {len(result.history)} candidates "
          f"accepted, {result.evaluations} evaluations in {result.seconds:.1f} s "
          f"({result.stopped})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cmd_specialize(sys.argv[1:]))

