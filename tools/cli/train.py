"""``optc eval`` and ``optc finetune``: score a model on a task, train one and save it.

    optc eval TARGET [--task T] [--data DIR] [--split dev|val|train] [--json]
    optc finetune [MODEL] --task T [--data DIR] -o OUT [--epochs N] [--pooling mean] [--force]

TARGET is an optc artifact, a Hugging Face model directory or id, an ``.onnx`` file (run in
ONNX Runtime) or a TorchScript ``.pt`` file. The task (its whole spec: columns, labels), the
max length it was fine-tuned with and the tokenizer default to what the target records: an
artifact in its IR's meta, ONNX and TorchScript files in their metadata (the tokenizer's files
included; see :mod:`optc.backends.record`). A ``--task`` with other labels than the recorded
task is refused; one with the same labels (other columns or metrics) and a ``--max-length``
other than the recorded one win with a one-line warning.

The functions return exit codes and raise :class:`~optc.errors.OptcError` for the CLI's
``main`` to print as one line; usage errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from optc.errors import InputError
from optc.tools.cli.eval_targets import (
    eval_task,
    load_for_eval,
    max_length_for,
    model_pooling,
    same_head,
    token_names,
)
from optc.tools.common import Parser as _Parser
from optc.tools.common import output_path

__all__ = ["cmd_eval", "cmd_finetune", "eval_parser", "finetune_parser"]

_EPILOG = ("exit codes: 0 ok, 1 internal error, 2 bad usage, 3 bad input model/data/artifact, "
           "4 output exists or is unwritable")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _open_fraction(text: str) -> float:
    value = _fraction(text)
    if value in (0, 1):
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def _evaluate_base(args: argparse.Namespace, task: Any, base: tuple[Any, ...], examples: Any,
                   progress: Any) -> Any:
    """``--against``: BASE scored on the same examples (task ``embedding``: against itself,
    as its embeddings are the reference TARGET is scored against)."""
    from optc.tasks import evaluate

    _, base_fn, base_tok, base_names, base_trained, base_meta = base
    with progress.counting(f"evaluating {args.against} ({args.split})", _unit(task)) as count:
        return evaluate(task, base_fn, examples, base_tok, batch_size=args.batch_size,
                        max_length=args.max_length or base_trained, device=args.torch_device,
                        progress=count,
                        input_names=token_names(base_names),
                        pooling=model_pooling(task, args.tokenizer, base_meta, base_tok),
                        reference="self" if task.needs_reference else None)


def _unit(task: Any) -> str:
    """What :func:`optc.tasks.evaluate` counts for ``task``: QA windows of the contexts,
    sentences of the embedding tasks (both of a pair), else examples."""
    if task.kind == "extractive-qa":
        return "windows"
    return "examples" if task.trainable else "sentences"


def _device_argument(p: argparse.ArgumentParser, what: str, default: str = "auto") -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"cpu, cuda, cuda:N or auto (cuda when torch sees a GPU): {what} "
                        f"(default {default})")


# -- optc eval ------------------------------------------------------------------------------
def eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optc eval", description="Score a model on a task's data: metrics, "
                "examples per second, number of examples.", epilog=_EPILOG)
    p.add_argument("target", metavar="TARGET",
                   help="optc artifact, Hugging Face model directory or id, .onnx or "
                        "TorchScript .pt file")
    p.add_argument("--task", help="task name or spec (sst2, mrpc, squad, "
                   "text-classification{labels=neg,pos}, sentence-similarity, "
                   "embedding{data=FILE}); default: the task TARGET records "
                   "(artifact, .onnx, .pt); other labels than it records are refused")
    p.add_argument("--data", metavar="DIR", help="task data directory or file (default: the "
                   "task's directory under $OPTC_DATA_DIR)")
    p.add_argument("--split", default="dev", choices=["dev", "val", "train"],
                   help="split to score (val: the seeded validation part of train)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="token limit (default: the one TARGET records, i.e. it was fine-tuned "
                        "with, else 128; 384 for QA)")
    p.add_argument("--limit", type=_positive_int, default=None, help="score the first N examples")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory or id (default: the "
                   "one recorded with the model)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch/ORT threads")
    _device_argument(p, "where the model runs (optc artifacts, Hugging Face models, "
                     "TorchScript; ONNX files run in ONNX Runtime on the CPU)", default="cpu")
    p.add_argument("--against", metavar="BASE",
                   help="also score BASE (e.g. the model TARGET was compressed from) on the same "
                        "examples and print the change of the main metric with a paired "
                        "bootstrap confidence interval")
    p.add_argument("--confidence", type=_open_fraction, default=0.95,
                   help="--against: confidence level of the interval (default 0.95)")
    p.add_argument("--resamples", type=_positive_int, default=1000,
                   help="--against: bootstrap resamples (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


def _st_onnx_target(target: str | None) -> str | None:
    """The ONNX file of a directory written by ``--backend onnx-st`` (it records its task and
    tokenizer like any ``.onnx`` output), else ``target`` itself."""
    from optc.backends.st_onnx import st_onnx_file

    found = st_onnx_file(target) if target is not None and Path(target).is_dir() else None
    return str(found) if found is not None else target


def cmd_eval(argv: list[str]) -> int:
    """``optc eval``: print the task metrics of a target."""
    import torch

    from optc.tasks import evaluate, paired_bootstrap, references_of
    from optc.tools.progress import Progress
    from optc.train import selection_warning
    from optc.train.device import resolve_device

    args = eval_parser().parse_args(argv)
    # a sentence-transformers ONNX directory (--backend onnx-st) is scored through its ONNX file
    args.target, args.against = _st_onnx_target(args.target), _st_onnx_target(args.against)
    progress = Progress(enabled=not args.quiet)
    args.torch_device = resolve_device(args.device)  # a cuda request without CUDA fails here
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # The task, the data and the options are checked before any model is loaded.
    task = eval_task(args.target, args.task, args.torch_device)
    if task.needs_reference and not args.against:
        raise InputError(f"task '{task.name}' scores a model's embeddings against a reference "
                         "model's: pass --against BASE (e.g. the model TARGET was compressed "
                         "from)")
    base_task = None
    if args.against:
        base_task = eval_task(args.against, args.task, args.torch_device, default_task=task)
        if not same_head(base_task, task):
            raise InputError(f"'{args.against}' is a {base_task.name} model and '{args.target}' "
                             f"a {task.name} one: --against compares models of the same task")
    with progress.step(f"reading {task.name} ({args.split})"):
        examples = task.read(args.split, args.data, limit=args.limit)  # the same for both models
    with progress.step(f"loading {args.target}"):
        task, model_fn, tok, names, trained, meta = load_for_eval(
            args.target, task, args.tokenizer, args.threads, device=args.torch_device)
    base = None
    if base_task is not None:
        with progress.step(f"loading {args.against}"):
            base = load_for_eval(args.against, base_task, args.tokenizer, args.threads,
                                  device=args.torch_device)
    # A checkpoint chosen on the split being scored makes its figure optimistic: say so.
    selection = [w for w in (selection_warning(meta, args.target, args.split),
                             base and selection_warning(base[5], args.against, args.split)) if w]
    for warning in selection:
        print(f"optc: warning: {warning}", file=sys.stderr)
    length = max_length_for(args.target, args.max_length, trained, meta)
    before = None
    if base is not None and task.needs_reference:  # BASE's embeddings are the reference
        before = _evaluate_base(args, task, base, examples, progress)
    with progress.counting(f"evaluating {task.name} ({args.split})", _unit(task)) as count:
        result = evaluate(task, model_fn, examples, tok, batch_size=args.batch_size,
                          max_length=length, input_names=token_names(names), progress=count,
                          device=args.torch_device,
                          pooling=model_pooling(task, args.tokenizer, meta, tok),
                          reference=before if task.needs_reference else None)
    spec = (meta.get("task") or {}).get("spec") if args.task is None else args.task
    summary = {"target": args.target, "task": task.name, "task_spec": spec or task.name,
               "max_length": length, "split": args.split,
               "metrics": result.metrics, "main_metric": result.main_metric,
               "score": result.score, "examples": result.num_examples,
               "examples_per_second": result.examples_per_second, "seconds": result.seconds,
               "selection_warnings": selection}
    if "pooling" in result.extra:
        summary["pooling"] = result.extra["pooling"]
    delta = None
    if base is not None:
        if before is None:
            before = _evaluate_base(args, task, base, examples, progress)
        with progress.step(f"paired bootstrap ({args.resamples} resamples)"):
            delta = paired_bootstrap(task, before.predictions, result.predictions,
                                     references_of(examples),
                                     confidence=args.confidence, resamples=args.resamples)
        summary["against"] = {"target": args.against, "metrics": before.metrics,
                              "score": before.score, "change": delta.to_json()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    metrics = "  ".join(f"{k} {v:.2f}" for k, v in result.metrics.items())
    print(f"{task.name} {args.split}: {metrics}  ({result.num_examples} examples, "
          f"{result.examples_per_second:.1f} examples/s)")
    if delta is not None:
        verdict = "significant" if delta.significant else "not significant: the interval holds 0"
        print(f"against {args.against}: {delta.metric} {delta.before:.2f} -> {delta.after:.2f}, "
              f"{delta.describe()} ({verdict}; paired bootstrap, {delta.resamples} resamples)")
    return 0


# -- optc finetune --------------------------------------------------------------------------
def finetune_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optc finetune", description="Fine-tune a model on a task and write an "
                "optc artifact recording the task, its labels, metric and dev score.",
                epilog=_EPILOG)
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="Hugging Face id, model directory or optc artifact (default: the "
                        "embedded all-MiniLM-L6-v2)")
    p.add_argument("--task", help="task name or spec (default: the artifact's task)")
    p.add_argument("--data", metavar="DIR", help="task data directory (or one file, split into "
                   "train and validation); default: the task's directory under $OPTC_DATA_DIR")
    p.add_argument("-o", "--output", metavar="OUT", type=output_path, required=True, help="artifact to write")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an artifact")
    p.add_argument("--epochs", type=_positive_float, default=3.0)
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=5e-5)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="token limit (default 128; 384 for QA)")
    p.add_argument("--warmup-ratio", type=_fraction, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.15,
                   help="validation split carved from train and never trained on, for later "
                        "searches such as optc specialize (fraction or count; 0: train on all)")
    p.add_argument("--pooling", default="auto", choices=["auto", "pooler", "cls", "mean"],
                   help="what a new classification/regression head reads: the pooler output, "
                        "the first token (cls), the attention-masked mean of the tokens (mean: "
                        "what sentence-transformers encoders such as all-MiniLM-L6-v2 were "
                        "trained with); auto: the pooler when the model has one, else cls")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--dropout", type=_fraction, default=None,
                   help="train-mode dropout (default: the source model's, else 0.1)")
    p.add_argument("--eval-split", default="val", choices=["dev", "val", "none"],
                   help="where the best epoch's weights are chosen: val (default), the --holdout "
                        "part of train, never trained on; dev (then optc eval and optc report "
                        "flag the model's dev figures as chosen on dev); none: keep the last")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory or id (default: the "
                   "one recorded with the model)")
    _device_argument(p, "where the model trains and is evaluated")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of training (fp16 with loss scaling); the weights "
                        "stay fp32 (default fp32)")
    p.add_argument("--checkpoint-dir", metavar="DIR", type=output_path,
                   help="write checkpoints here: every --checkpoint-every steps, and on Ctrl-C "
                        "(the run stops at the end of the step in progress; a second Ctrl-C "
                        "stops at once, without a checkpoint)")
    p.add_argument("--checkpoint-every", metavar="N", type=_positive_int, default=None,
                   help="steps between checkpoints (needs --checkpoint-dir)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted run from its --checkpoint-dir (or one "
                        "step-NNNNNN checkpoint in it); give the other options as before")
    p.add_argument("--nproc", metavar="N", type=_positive_int, default=1,
                   help="train data-parallel in N processes on this machine (gloo on the CPU, "
                        "NCCL with one GPU each on CUDA); the same global --batch-size is split "
                        "among them. torchrun --nproc-per-node N -m optc finetune ... works too")
    p.add_argument("--json", action="store_true", help="print the training report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


class _StepPrinter:
    """Training progress on stderr: one rewritten line on a terminal, else ~20 lines."""

    def __init__(self, enabled: bool, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, info: Any) -> None:
        if not self.enabled:
            return
        every = max(1, info.total // 20)
        if not self.tty and info.step % every and info.step != info.total:
            return
        eta = time.strftime("%H:%M:%S", time.gmtime(info.eta_seconds))
        terms = "".join(f"  {k} {v:.4g}" for k, v in info.terms.items())  # e.g. sparsity
        line = (f"optc: step {info.step}/{info.total}  epoch {info.epoch:.2f}  loss "
                f"{info.loss:.4f}{terms}  {info.step_seconds:.2f} s/step  ETA {eta}")
        if self.tty:
            end = "\n" if info.step == info.total else ""
            self.stream.write(f"\r\033[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _load_module(target: str | None, progress: Any) -> Any:
    from optc.artifacts import is_artifact, load_module
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    if target is not None and is_artifact(target):
        with progress.step(f"loading artifact {target}"):
            return load_module(target)
    with progress.step(f"loading {target or 'all-MiniLM-L6-v2 (embedded)'}"):
        model, source = load_model(target)
    with progress.step("capturing with torch.export"):
        return capture(model, source=source)


def cmd_finetune(argv: list[str]) -> int:
    """``optc finetune``: train a model on a task and save it as an artifact."""
    from optc.tasks import reuse_reads

    with reuse_reads():  # the data read before the model is loaded is not parsed again
        return _finetune(argv)


def _finetune(argv: list[str]) -> int:
    from optc.artifacts import save
    from optc.frontends.huggingface import load_tokenizer
    from optc.outputs import check_output
    from optc.passes.finetune import Finetune
    from optc.passes.support.calibration import check_vocabulary
    from optc.tasks import get_task
    from optc.tools.cli.launch import launch_local
    from optc.tools.cli.preflight import read_task_data, recorded_task
    from optc.tools.progress import Progress
    from optc.train import TrainingInterrupted, finetune, has_task_head, run_options, task_from_meta
    from optc.train.device import resolve_device
    from optc.train.distributed import env_world_size, init_from_env, shutdown

    args = finetune_parser().parse_args(argv)
    if args.checkpoint_every is not None and args.checkpoint_dir is None:
        finetune_parser().error("--checkpoint-every needs --checkpoint-dir DIR")
    if args.nproc > 1:
        if env_world_size() > 1:
            raise InputError("--nproc starts the processes itself; this one was started by "
                             "torchrun (WORLD_SIZE is set): drop --nproc")
        resolve_device(args.device)  # a cuda request without CUDA fails before the start
        return launch_local(["finetune", *_without_nproc(argv)], args.nproc, args.threads)
    options_run = run_options(args.device, args.precision, args.checkpoint_every,
                              args.checkpoint_dir, args.resume)  # bad ones fail before work
    world = init_from_env(options_run.device)
    main = world.main
    progress = Progress(enabled=not args.quiet and main)
    task = get_task(args.task) if args.task else None  # a bad task fails before slow work
    if task is not None:
        task.check_trainable("optc finetune")
    out = Path(args.output)
    inputs = [Path(p) for p in (args.model, args.data) if p is not None and os.path.lexists(p)]
    check_output(out, args.force, kind="artifact", inputs=inputs)
    if args.data is not None:
        from optc.tasks import resolve_data_path

        resolve_data_path(args.data)  # a missing data path fails before slow work
    eval_split = None if args.eval_split == "none" else args.eval_split
    known = task or recorded_task(args.model)  # an artifact's task, read without loading it
    if known is not None:
        known.check_trainable("optc finetune")
        with progress.step(f"reading {known.name} data"):  # bad data fails before loading
            read_task_data(known, args.data, eval_split)
    module = _load_module(args.model, progress)
    task = task or task_from_meta(module.meta)
    if task is None:
        raise InputError(f"'{args.model}' records no task: pass --task NAME")
    has_task_head(module, task, args.pooling)  # a head that does not fit fails before training
    ref = args.tokenizer or (module.meta.get("source") or {}).get("tokenizer")
    if ref is None:
        raise InputError("the model records no tokenizer: pass --tokenizer DIR")
    tokenizer = load_tokenizer(ref)
    check_vocabulary(module, tokenizer, "optc finetune")
    options = {"epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr,
               "batch_size": args.batch_size, "max_length": args.max_length,
               "warmup_ratio": args.warmup_ratio, "weight_decay": args.weight_decay,
               "seed": args.seed, "threads": args.threads,
               "holdout": int(args.holdout) if args.holdout >= 1 else args.holdout,
               "pooling": args.pooling, "dropout": args.dropout}
    try:
        report = finetune(module, args.task or task, args.data, tokenizer=tokenizer,
                          eval_split=eval_split, progress=_StepPrinter(not args.quiet and main),
                          device=options_run.device, precision=args.precision,
                          checkpoint_every=args.checkpoint_every,
                          checkpoint_dir=args.checkpoint_dir, resume=args.resume, **options)
    except TrainingInterrupted as stop:
        if main:
            print(f"optc: stopped after step {stop.step}; checkpoint {stop.checkpoint}: continue "
                  f"with the same command and --resume {args.checkpoint_dir}", file=sys.stderr)
        raise
    if not main:  # rank 0 writes the artifact and reports
        shutdown()
        return 0
    spec = Finetune(task=args.task or task.name, data=args.data, eval_split=args.eval_split,
                    tokenizer=args.tokenizer, **options).spec()
    module.meta["pipeline"] = list(module.meta.get("pipeline", [])) + [spec]
    extra = {"task": module.meta["task"], "label_names": list(task.label_names),
             "metric": task.main_metric, "training": report.summary()}
    if report.best is not None:
        extra["eval_score"] = report.score  # on extra["eval_split"]
        extra["eval_split"] = report.extra.get("eval_split")
    with progress.step(f"writing {out}"):
        save(module, out, force=args.force, extra=extra, inputs=inputs)
    shutdown()
    if args.json:
        print(json.dumps({"output": str(out), **report.summary()}, indent=2))
        return 0
    for record in report.evals:
        metrics = "  ".join(f"{k} {v:.2f}" for k, v in record.metrics.items())
        print(f"epoch {record.epoch:.2f} (step {record.step}): {metrics}")
    best = (f", best {report.extra.get('eval_split')} {task.main_metric} {report.score:.2f}"
            if report.best is not None else "")
    print(f"wrote {out}: {task.name}, {report.steps} steps in {report.seconds:.1f} s{best}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each started process gets)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        name = arg.split("=", 1)[0]
        mine = len(name) >= 3 and "--nproc".startswith(name)  # argparse takes abbreviations
        if skip:
            skip = False
        elif mine and "=" not in arg:
            skip = True
        elif not mine:
            out.append(arg)
    return out
