"""``optc specialize`` with the default recipe (or a recipe file based on it): the contract.

Runs :func:`optc.search.contract.specialize_within` and prints the before/after table: the
held-out figure (the part of the validation data the search never saw) with the paired 95%
interval of its change, the dev figure with its paired interval (dev is never used to
choose), the latency on the target, FLOPs and size; then one line per decision (kinds not
tried on the target, int8) and, when nothing fits, the line saying the input was written
unchanged. The artifact's metadata records the contract, every point checked and the Pareto
front (held-out metric vs latency) that ``optc report`` draws.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optc.errors import InputError

__all__ = ["run_contract", "stop_on_sigint", "load_searchable", "refuse_untrained", "prepare_search",
           "SearchSetup", "training_device", "report_split", "dev_change"]

_log = logging.getLogger("optc.specialize")


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """While inside: the first Ctrl-C only asks the search to stop (the function yielded
    returns True from then on), so that the best point so far is still chosen and written; a
    second one interrupts as usual (the handler that was there before, else
    KeyboardInterrupt). Outside the main thread: no change (the function returns False)."""
    seen: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if seen:
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        seen.append(True)
        sys.stderr.write("optc: interrupted: finishing with the best point found so far "
                         "(Ctrl-C again to abort)\n")

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def load_searchable(target: str, progress: Any) -> Any:
    from optc.artifacts import is_artifact, load_module
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    if is_artifact(target):
        with progress.step(f"loading artifact {target}"):
            return load_module(target)
    from optc.frontends.packaged import packaged_model

    if not Path(target).exists() and packaged_model(target) is None:
        raise InputError(f"'{target}' does not exist (give a fine-tuned optc artifact, a model "
                         "directory or a packaged model's name)")
    with progress.step(f"loading {target}"):
        model, source = load_model(target)
    with progress.step("capturing with torch.export"):
        return capture(model, source=source)


def refuse_untrained(target: str, meta: dict[str, Any]) -> None:
    fresh = (meta.get("source") or {}).get("newly_initialized") or []
    if fresh and not (meta.get("task") or {}).get("trained_steps"):
        raise InputError(f"'{target}' has a task head initialized at random ({fresh[0]}, ...): "
                         "fine-tune it first (optc finetune)")


def training_device(args: argparse.Namespace) -> dict[str, str]:
    """The ``device``/``precision`` search options of ``--device``/``--precision`` (a CUDA
    request without CUDA fails here, before any slow work)."""
    from optc.train.device import check_precision, resolve_device

    device = resolve_device(args.device)
    return {"device": str(device), "precision": check_precision(args.precision, device)}


@dataclasses.dataclass(frozen=True)
class SearchSetup:
    """What both recipes of ``optc specialize`` start from (:func:`prepare_search`)."""

    module: Any
    task: Any
    tokenizer: Any
    options: Any
    """The search options with the data, device and max length filled in."""
    names: tuple[str, ...]
    """The model's inputs the tokenizer fills."""
    out: Path
    pareto_paths: list[Path]
    inputs: list[Path]
    """The paths the outputs must not overwrite."""


def prepare_search(args: argparse.Namespace, options: Any, progress: Any) -> SearchSetup:
    """Everything before the search, for every recipe: option and data checks, the outputs
    (refused before any slow work), the model (loaded or captured), its task and tokenizer,
    the validation split it was fine-tuned with, and its max length."""
    import os

    from optc.errors import PipelineSpecError
    from optc.frontends.huggingface import load_tokenizer
    from optc.outputs import check_output
    from optc.passes.spec import task_pipeline
    from optc.search import holdout_options
    from optc.tasks import EMBEDDING_KINDS, get_task, resolve_data_path
    from optc.tools.cli.preflight import read_search_data, recorded_task
    from optc.train import task_from_meta, trained_max_length

    if args.val_data is not None and (args.val_size is not None or args.seed is not None):
        raise PipelineSpecError("--val-data replaces the validation split carved from "
                                "train: drop --val-size/--seed")
    options = dataclasses.replace(options, val_data=args.val_data, **training_device(args))
    task = get_task(args.task) if args.task else None
    if task is not None and task.kind not in EMBEDDING_KINDS:
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
    for path in (args.data, args.val_data):
        if path is not None:
            resolve_data_path(path)
    known = task or recorded_task(args.model)  # an artifact's task, read without loading it
    if known is not None:
        with progress.step(f"reading {known.name} data"):  # bad data fails before loading
            read_search_data(known, args)
    module = load_searchable(args.model, progress)
    refuse_untrained(args.model, module.meta)
    task = task or task_from_meta(module.meta)
    if task is None:
        raise InputError(f"'{args.model}' records no task: pass --task NAME")
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
    return SearchSetup(module, task, tokenizer, options, names, out, pareto_paths, inputs)


def report_split(task: Any, data: Any, options: Any) -> tuple[list[Any], str]:
    """The examples ``optc specialize`` reports its result on, never used to choose it, and
    their name in the table: the task's dev split; for a task whose data is one file (the
    label-free ``embedding`` on a user's texts) the part of the file outside the validation
    split, which the search never reads (but a recipe's training between rounds does: then
    it is named as optimistic)."""
    if task.data_file("dev", data) == task.data_file("train", data):
        rest = task.read("train", data, val_size=options.val_size, seed=options.seed)
        trained = options.rounds > 1 and bool(options.between)
        return rest, "trained-on (optimistic)" if trained else "unsearched"
    return task.read("dev", data), "dev"


def dev_change(task: Any, module: Any, final: Any, examples: list[Any], tokenizer: Any,
               names: tuple[str, ...], max_length: int | None, same: bool = False) -> Any:
    """The paired change (:class:`~optc.tasks.MetricDelta`) of the task's main metric from
    ``module`` to ``final`` on ``examples``; the label-free ``embedding`` task scores both
    against ``module``'s embeddings. ``same``: ``final`` is ``module`` (not evaluated twice)."""
    from optc.backends.eager import to_eager
    from optc.tasks import evaluate, paired_bootstrap, references_of

    before = evaluate(task, to_eager(module), examples, tokenizer, input_names=names,
                      max_length=max_length, reference="self" if task.needs_reference else None)
    after = before if same else evaluate(
        task, to_eager(final), examples, tokenizer, input_names=names, max_length=max_length,
        reference=before if task.needs_reference else None)
    return paired_bootstrap(task, before.predictions, after.predictions, references_of(examples))


def _fmt(value: float | None, form: str = "{:.2f}") -> str:
    return "-" if value is None else form.format(value)


def run_contract(args: argparse.Namespace, recipe: Any) -> int:
    """``optc specialize`` under the contract (``args`` from :func:`specialize_parser`)."""
    from optc.artifacts import save
    from optc.search import SearchOptions
    from optc.search.contract import ContractOptions, Target, specialize_within
    from optc.tools.progress import Progress

    progress = Progress(enabled=not args.quiet)
    max_drop = 1.0 if args.max_drop is None else args.max_drop
    options = recipe.options(SearchOptions(  # bad options fail before any slow work (exit 2)
        val_size=0.15 if args.val_size is None else args.val_size,
        seed=0 if args.seed is None else args.seed, val_limit=args.val_limit,
        batch_size=args.batch_size, max_length=args.max_length, workers=args.workers,
        ray=args.ray), max_drop)
    target = Target(args.backend or "eager", args.threads or 1, args.batch or 1)
    contract = ContractOptions(max_drop=max_drop, target=target, int8=args.int8 or "auto",
                               hard_attention=recipe.hard_attention, measure=recipe.measure,
                               time_budget=args.time_budget)
    setup = prepare_search(args, options, progress)
    module, task, tokenizer, options, names = (setup.module, setup.task, setup.tokenizer,
                                               setup.options, setup.names)
    out, pareto_paths, inputs = setup.out, setup.pareto_paths, setup.inputs
    max_length = options.max_length

    def on_trial(entry: Any) -> None:
        if not args.quiet:
            mark = "accepted" if entry.accepted else "rejected"
            metric = "" if entry.metric is None else f", {task.main_metric} {entry.metric:.2f}"
            sys.stderr.write(f"optc: step {entry.step}: layer {entry.layer} {entry.label}: "
                             f"loss {entry.mean_loss:.4f}{metric}, {mark}\n")

    def step(what: str) -> None:
        if not args.quiet:
            sys.stderr.write(f"optc: {what}\n")

    with stop_on_sigint() as stop:
        result = specialize_within(module, task, tokenizer, args.data, options, contract,
                                   progress=on_trial, stop=stop, step=step)
        interrupted = stop()
    final = result.module
    change, split = None, "dev"
    if not args.no_dev:
        examples, split = report_split(task, args.data, options)
        with progress.step(f"evaluating {task.name} {split} before and after"):
            change = dev_change(task, module, final, examples, tokenizer, names, max_length,
                                same=result.fallback is not None)
    record = {**result.search.summary(), "recipe": recipe.name,
              "contract": result.summary(),
              "dev_change": None if change is None else change.to_json(),
              "dev_metric_before": None if change is None else change.before,
              "dev_metric_after": None if change is None else change.after,
              "dev_split": split,
              "latency_ms_before": result.input.latency_ms,
              "latency_ms_after": result.chosen.latency_ms,
              "params_after": final.num_parameters()}
    meta = dict(final.meta)
    meta.pop("specialization", None)
    if not result.fallback:
        meta["pipeline"] = list(meta.get("pipeline", [])) + [
            f"specialize{{max_drop={max_drop:g},backend={target.backend},"
            f"int8={contract.int8},recipe={Path(recipe.name).name}}}"]
    final.meta = meta
    extra: dict[str, Any] = {"specialization": record}
    if module.meta.get("task"):
        extra["task"] = module.meta["task"]
    with progress.step(f"writing {out}"):
        save(final, out, force=args.force, extra=extra, inputs=inputs)
    written = []
    others = [p for p in result.front() if p is not result.chosen and p is not result.input]
    for path, point in zip(pareto_paths, others, strict=False):
        with progress.step(f"writing {path}"):
            save(result.build(point), path, force=args.force,
                 extra={**extra, "pareto": point.to_json()}, inputs=inputs)
        written.append((path, point))
    record["pareto"] = [{"path": str(p), **point.to_json()} for p, point in written]
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    _print_table(result, task.main_metric, change, split, final, module)
    for path, point in written:
        print(f"wrote {path}: {point.label}, held-out {point.held_out:.2f}, "
              f"{point.latency_ms:.2f} ms")
    for note in result.notes:
        print(f"note: {note}")
    if result.fallback:
        print(result.fallback)
    elif interrupted:
        print("interrupted: chose from the points found before Ctrl-C")
    chosen = result.chosen
    print(f"wrote {out}: {chosen.label} ({len(chosen.config.accepted)} removals"
          f"{', int8' if chosen.int8 else ''}), {len(result.points)} points checked on "
          f"{result.held_out_examples} held-out examples, {result.search.evaluations} search "
          f"evaluations, {result.seconds:.1f} s ({result.stopped})")
    return 0


def _print_table(result: Any, metric: str, dev: Any, split: str, final: Any,
                 module: Any) -> None:
    from optc.ir.analysis import module_flops

    target = result.options.target
    held = result.held_out_change
    before, after = result.input, result.chosen
    flops_after = module_flops(final, 128)
    lat = (after.latency_ms / before.latency_ms
           if before.latency_ms and after.latency_ms is not None else None)
    rows = [("", "before", "after", "change"),
            (f"held-out {metric} ({result.held_out_examples} ex.)", _fmt(held.before),
             _fmt(held.after), held.describe()),
            (f"{split} {metric}" + ("" if dev is None else f" ({dev.examples} ex.)"),
             "-" if dev is None else _fmt(dev.before),
             "-" if dev is None else _fmt(dev.after), "-" if dev is None else dev.describe()),
            (f"latency ms ({target.describe()})", _fmt(before.latency_ms),
             _fmt(after.latency_ms), "-" if lat is None else f"{lat:.3f}x"),
            ("GFLOPs (B1,S128)", f"{before.flops / 1e9:.3f}", f"{flops_after / 1e9:.3f}",
             f"{flops_after / before.flops:.3f}x" if before.flops else "-"),
            ("parameters", f"{module.num_parameters():,}", f"{final.num_parameters():,}",
             f"{final.num_parameters() / module.num_parameters():.3f}x")]
    print(f"contract: held-out {metric} at most {result.options.max_drop:g} below the input's; "
          f"fastest on {target.describe()}")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
