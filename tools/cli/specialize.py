"""``optc specialize``: the fastest model within a stated tolerance, on one fine-tuned model.

    optc specialize MODEL [--task T] [--data DIR] -o OUT [--force] [--max-drop D]
                    [--backend eager|torchscript|onnx] [--threads N] [--batch N]
                    [--int8 auto|on|off] [--time-budget S] [--workers N]
                    [--recipe default|published|FILE] [--keep-pareto N]

The contract (default recipe; :mod:`optc.tools.cli.specialize_contract`): the result is the
fastest model measured on the target whose metric on a held-out part of the validation data
is at most D points below the input's, else the input unchanged. ``--recipe published`` runs
the AxFormer procedure exactly and prints the search history and a before/after table (dev
metric, FLOPs, latency, size). The old search flags (``--rule``, ``--tolerance``, ``--sweeps``,
... see :data:`KNOBS`) are hidden recipe keys; a command naming one of them without
``--max-drop``/``--recipe`` runs the published recipe, as before recipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from typing import Any

from optc.errors import PipelineSpecError
from optc.tools.cli.specialize_contract import dev_change as dev_change_of
from optc.tools.cli.specialize_contract import (
    prepare_search,
    report_split,
    run_contract,
    stop_on_sigint,
)
from optc.tools.common import Parser as _Parser
from optc.tools.common import output_path

__all__ = ["cmd_specialize", "specialize_parser", "choose_recipe", "KNOBS"]

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


_HIDE = argparse.SUPPRESS

KNOBS: dict[str, str] = {
    "rule": "rule", "tolerance": "tolerance", "kinds": "kinds", "k": "k",
    "groups": "neuron_groups", "fine_threshold": "fine_threshold", "confirm": "confirm",
    "max_flips": "max_flips", "flops_target": "flops_target",
    "latency_target": "latency_target", "sweeps": "sweeps", "unit_order": "unit_order",
    "rounds": "rounds", "between": "between",
}
"""The search knobs that moved into recipe files: each flag (hidden from --help) still sets
its recipe key, so old commands replay; a command that names one of them and no --max-drop
or --recipe runs the published recipe with it, as it did before recipes."""


def specialize_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optc specialize", description="Make a fine-tuned model as fast as "
                "possible on the target while its metric on a held-out part of the "
                "validation data (never searched) stays within --max-drop points of the "
                "input's: the result is the fastest model measured within the tolerance "
                "(structured removals, then int8), or the input unchanged when none is. "
                "'--recipe published' runs the AxFormer paper's procedure exactly.",
                epilog=_EPILOG)
    p.add_argument("model", metavar="MODEL", help="fine-tuned optc artifact (optc finetune) or "
                   "Hugging Face model directory with a trained task head")
    p.add_argument("--task", help="task name or spec (default: the one the artifact records)")
    p.add_argument("--data", metavar="DIR", help="task data directory (train gives the "
                   "validation split, dev the reported metric); default: under $OPTC_DATA_DIR")
    p.add_argument("-o", "--output", metavar="OUT", type=output_path, required=True, help="artifact to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an artifact")
    p.add_argument("--max-drop", type=_number, default=None, metavar="D",
                   help="the contract: the result's metric on the held-out part is at most D "
                        "points (the task's metric, e.g. accuracy %%) below the input's "
                        "(default 1.0)")
    p.add_argument("--backend", choices=["eager", "torchscript", "onnx"], default=None,
                   help="what 'fastest' is measured on (default eager)")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="threads of the target (default 1)")
    p.add_argument("--batch", type=_int_at_least(1), default=None,
                   help="batch size of the target (default 1; sequence length 128)")
    p.add_argument("--int8", choices=["auto", "on", "off"], default=None,
                   help="quantize the result within the same tolerance: auto (default: when "
                        "int8 is faster on the target), on, off")
    p.add_argument("--time-budget", type=_number, default=None, metavar="SECONDS",
                   help="end after about this long with the best point within the tolerance "
                        "found so far (Ctrl-C does the same)")
    p.add_argument("--workers", type=_int_at_least(1), default=1,
                   help="evaluate candidates in N local processes (same result as serial)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where the training passes between search rounds (a recipe's "
                        "'between', e.g. distill) run: cpu, cuda, cuda:N or auto (default: "
                        "cuda when there is one); the search's evaluations run on the CPU")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of those training passes (default fp32)")
    p.add_argument("--recipe", metavar="NAME|FILE", default=None,
                   help="how the search runs: default, published (the AxFormer paper's exact "
                        "procedure, no contract) or a recipe file (TOML; see the README)")
    p.add_argument("--keep-pareto", type=_int_at_least(0), default=0, metavar="N",
                   help="also write up to N other points of the Pareto front (held-out "
                        "metric vs latency) as OUT-pareto-1..N")
    # the old search knobs: recipe keys now (hidden; see KNOBS)
    p.add_argument("--rule", choices=["loss", "metric", "metric-loss"], default=None, help=_HIDE)
    p.add_argument("--tolerance", type=_number, default=None, help=_HIDE)
    p.add_argument("--kinds", default=None, help=_HIDE)
    p.add_argument("--k", type=_int_at_least(1), default=None, help=_HIDE)
    p.add_argument("--groups", type=_int_at_least(1), default=None, help=_HIDE)
    p.add_argument("--fine-threshold", type=_number, default=None, help=_HIDE)
    p.add_argument("--confirm", type=_number, default=None, metavar="X", help=_HIDE)
    p.add_argument("--max-flips", type=_number, default=None, metavar="X", help=_HIDE)
    p.add_argument("--flops-target", type=_number, default=None, help=_HIDE)
    p.add_argument("--latency-target", type=_number, default=None, help=_HIDE)
    p.add_argument("--sweeps", type=_int_at_least(1), default=None, help=_HIDE)
    p.add_argument("--unit-order", choices=["index", "importance"], default=None, help=_HIDE)
    p.add_argument("--rounds", type=_int_at_least(1), default=None, help=_HIDE)
    p.add_argument("--between", metavar="SPEC", default=None, help=_HIDE)
    p.add_argument("--then", metavar="SPEC", default=None, help=_HIDE)
    p.add_argument("--no-prefix-reuse", action="store_true", help=_HIDE)
    # data and reporting details (hidden: their defaults come from the model)
    p.add_argument("--val-size", type=_val_size, default=None, help=_HIDE)
    p.add_argument("--val-limit", type=_int_at_least(1), default=None, help=_HIDE)
    p.add_argument("--seed", type=int, default=None, help=_HIDE)
    p.add_argument("--val-data", metavar="PATH", default=None, help=_HIDE)
    p.add_argument("--ray", action="store_true", help=_HIDE)
    p.add_argument("--batch-size", type=_int_at_least(1), default=32, help=_HIDE)
    p.add_argument("--max-length", type=_int_at_least(2), default=None, help=_HIDE)
    p.add_argument("--no-dev", action="store_true", help=_HIDE)
    p.add_argument("--no-latency", action="store_true", help=_HIDE)
    p.add_argument("--tokenizer", metavar="DIR", help=_HIDE)
    p.add_argument("--json", action="store_true", help=_HIDE)
    p.add_argument("-q", "--quiet", action="store_true", help=_HIDE)
    return p


def choose_recipe(args: argparse.Namespace) -> Any:
    """The recipe a command runs (:data:`KNOBS`), with its old flags as recipe keys."""
    from optc.search.recipe import RECIPES, load_recipe

    knobs = {field: getattr(args, dest) for dest, field in KNOBS.items()
             if getattr(args, dest) is not None}
    if "kinds" in knobs:
        knobs["kinds"] = tuple(k.strip() for k in knobs["kinds"].split(",") if k.strip())
    if args.no_prefix_reuse:
        knobs["prefix_reuse"] = False
    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
    elif args.max_drop is None and (knobs or args.then):
        recipe = RECIPES["published"]  # an old command: what it ran before recipes
    else:
        recipe = RECIPES["default"]
    if recipe.published:
        given = [f"--{n.replace('_', '-')}" for n in ("max_drop", "int8")
                 if getattr(args, n) is not None]
        if given:
            raise PipelineSpecError(f"the published recipe has no tolerance contract: drop "
                                    f"{', '.join(given)} (or use the default recipe)")
    elif args.then:
        raise PipelineSpecError("--then runs after the published recipe's search; the "
                                "contract quantizes within --max-drop itself (--int8): drop "
                                "--then, or add --recipe published")
    return recipe.with_search(**knobs)


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
    args = specialize_parser().parse_args(argv)
    recipe = choose_recipe(args)  # bad options and recipe files fail before any work (exit 2)
    if not recipe.published:
        return run_contract(args, recipe)
    return _run_published(args, recipe)


def _run_published(args: argparse.Namespace, recipe: Any) -> int:
    """The published recipe (or a file based on it): the search alone, as before recipes."""
    import torch

    from optc.artifacts import save
    from optc.passes.manager import run_pipeline
    from optc.passes.spec import task_pipeline
    from optc.search import SearchOptions, commit, specialize, validate
    from optc.search.measure import backend_latencies, latencies
    from optc.tools.progress import Progress
    from optc.train import task_spec

    progress = Progress(enabled=not args.quiet)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = recipe.options(SearchOptions(  # bad options fail before any slow work (exit 2)
        val_size=0.15 if args.val_size is None else args.val_size,
        seed=0 if args.seed is None else args.seed,
        val_limit=args.val_limit, batch_size=args.batch_size, max_length=args.max_length,
        time_budget=args.time_budget, workers=args.workers, ray=args.ray), None)
    setup = prepare_search(args, options, progress)
    module, task, tokenizer, options, names = (setup.module, setup.task, setup.tokenizer,
                                               setup.options, setup.names)
    out, pareto_paths, inputs = setup.out, setup.pareto_paths, setup.inputs
    max_length = options.max_length
    then_task = args.task or task_spec(task) or task.name  # what --then's training passes get

    def on_trial(entry: Any) -> None:
        if not args.quiet:
            mark = "accepted" if entry.accepted else "rejected"
            label = f"{entry.label} (round {entry.round})" if entry.round > 1 else entry.label
            sys.stderr.write(f"optc: step {entry.step}: layer {entry.layer} {label}: "
                             f"loss {entry.mean_loss:.4f}, {100 * entry.not_worse:.0f}% not "
                             f"worse, {mark}\n")

    with progress.step(f"searching ({task.name})"), stop_on_sigint() as stop:
        result = specialize(module, task, tokenizer, args.data, options, progress=on_trial,
                            stop=stop)
    final = result.module
    if args.then:
        with progress.step(f"running {args.then}"):
            report = run_pipeline(final, task_pipeline(args.then, args.data, then_task),
                                  reference=module)
        if not args.quiet and not args.json:
            print(report.table())
    with progress.step(f"evaluating {task.name} validation after"):
        val_loss, val_metric = validate(final, task, tokenizer, args.data, options,
                                        reference=module)
    dev_before = dev_after = dev_change = None
    split = "dev"
    if not args.no_dev:
        examples, split = report_split(task, args.data, options)
        with progress.step(f"evaluating {task.name} {split} before and after"):
            dev_change = dev_change_of(task, module, final, examples, tokenizer, names,
                                       max_length)
            dev_before, dev_after = dev_change.before, dev_change.after
    lat_before = lat_after = None
    if not args.no_latency and args.backend is None:
        with progress.step("measuring latency (batch 1, seq 128, 1 thread)"):
            lat_before, lat_after = latencies([module, final])
    elif not args.no_latency:
        with progress.step(f"measuring latency ({args.backend})"):
            lat_before, lat_after = backend_latencies([module, final], args.backend,
                                                      args.batch or 1, 128, args.threads or 1)
    summary = result.summary()
    summary.update({"dev_metric_before": dev_before, "dev_metric_after": dev_after,
                    "dev_change": None if dev_change is None else dev_change.to_json(),
                    "latency_ms_before": lat_before, "latency_ms_after": lat_after,
                    "params_after": final.num_parameters(), "then": args.then,
                    "val_loss_after": val_loss, "val_metric_after": val_metric,
                    "max_flips": options.max_flips, "recipe": recipe.name})
    meta = dict(final.meta)
    sweeps = f",sweeps={options.sweeps}" if options.sweeps > 1 else ""
    order = f",unit_order={options.unit_order}" if options.unit_order != "index" else ""
    order += f",rounds={options.rounds}" if options.rounds > 1 else ""
    tolerance = f",tolerance={options.tolerance:g}" if options.rule != "loss" else ""
    tolerance += f",max_flips={options.max_flips:g}" if options.max_flips is not None else ""
    order += f",confirm={options.confirm:g}" if options.confirm else ""
    meta["pipeline"] = list(meta.get("pipeline", [])) + [
        f"specialize{{rule={options.rule}{tolerance},k={options.k}{sweeps}{order}}}"]
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
            (f"{split} {task.main_metric}", "-" if dev_before is None else f"{dev_before:.2f}",
             "-" if dev_after is None else f"{dev_after:.2f}",
             "-" if dev_change is None else dev_change.describe()),
            (f"validation {task.main_metric}", _score(result.baseline_metric),
             _score(val_metric), _change(result.baseline_metric, val_metric)),
            ("validation loss", f"{result.baseline_loss:.4f}", f"{val_loss:.4f}",
             _change(result.baseline_loss, val_loss, "{:+.4f}")),
            ("GFLOPs (B1,S128)", f"{result.flops_before / 1e9:.3f}",
             f"{result.flops_after / 1e9:.3f}", _ratio(result.flops_before, result.flops_after)),
            (f"latency ms ({args.backend or 'eager'})",
             "-" if lat_before is None else f"{lat_before:.2f}",
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
                  f"searched ({figure}) fails the {options.rule} rule against the input: round "
                  f"{info['round']}'s result was kept without the refit")
    print(f"wrote {out}: {len(result.config.accepted)} of {len(result.history)} candidates "
          f"accepted, {result.evaluations} evaluations in {result.seconds:.1f} s "
          f"({result.stopped})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cmd_specialize(sys.argv[1:]))

