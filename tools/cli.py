"""The ``optc`` command line.

    optc [MODEL] --passes=SPEC [--backend eager] -o OUT   compile a model into an artifact
    optc inspect TARGET [--seq N] [--json]               IR and per-layer table
    optc passes [--json]                                 every pass, its options and docs
    optc tasks [NAME] [--json]                           every task: head, files, metrics, options
    optc bench TARGET... [--batch N..] [--threads N..]   latency, memory, size side by side
    optc report TARGET [BASELINE] -o OUT.html           HTML report: charts, pipeline, graph

MODEL is a Hugging Face id, a local model directory or an optc artifact; without MODEL the
embedded all-MiniLM-L6-v2 is compiled. Errors print one line and exit non-zero (see
:mod:`optc.errors` for the codes).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import os
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from optc.errors import InputError, OptcError, PipelineSpecError, excerpt
from optc.tools.common import EPILOG, output_path, quiet_libraries
from optc.tools.common import Parser as _Parser
from optc.tools.task_option import (
    HEAD_CHOICES,
    add_task_arguments,
    fill_task,
    give_head,
    resolve_task_option,
)

__all__ = ["main", "MESSAGE_LIMIT", "TASK_CHOICES"]

MESSAGE_LIMIT = 2000
"""Characters of an error message printed at most (input text in it is cut much shorter)."""

# -- model loading shared by the subcommands ----------------------------------------------------
def _load_target(target: str | None, task: str, progress: Any) -> Any:
    """An IR module from an artifact, a model directory, a hub id, or the embedded MiniLM."""
    from optc.artifacts import is_artifact, load_module

    if target is not None and is_artifact(target):
        with progress.step(f"loading artifact {target}"):
            module = load_module(target)
        _check_task(target, task, module)
        return module
    if target is not None and Path(target).is_dir() and not (Path(target) / "config.json").exists():
        if (Path(target) / "metadata.json").exists() or (Path(target) / "model.optc").exists():
            raise InputError(f"'{target}' looks like an incomplete optc artifact (model.optc or metadata.json missing)")
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    with progress.step(f"loading {target or 'all-MiniLM-L6-v2 (embedded)'}"):
        model, source = load_model(target, task=task)
    with progress.step("capturing with torch.export"):
        return capture(model, source=source)


def _input_paths(args: argparse.Namespace) -> list[Path]:
    """Existing paths the compile command reads: -o must never replace one of them."""
    paths = []
    for given in (args.model, args.data, args.dump_dir):
        if given is not None and os.path.lexists(given):
            paths.append(Path(given))
    if args.model is not None and Path(args.model).suffix == ".safetensors":
        paths.append(Path(args.model).parent)  # a weights file is loaded with its directory
    return paths


TASK_CHOICES = HEAD_CHOICES
"""The heads ``--head`` loads (the old name: ``--task`` named a head; see task_option)."""

_TASK_HEADS = {"sequence-classification": "ForSequenceClassification",
               "question-answering": "ForQuestionAnswering",
               "token-classification": "ForTokenClassification"}


def _check_task(target: str, task: str, module: Any) -> None:
    """Refuse a --head that differs from the head an artifact was compiled with."""
    if task == "auto":
        return
    from optc.tasks import HEADS

    cls = str((module.meta.get("source") or {}).get("class") or "")
    head = next((t for t, suffix in _TASK_HEADS.items() if cls.endswith(suffix)), "base")
    kind = (module.meta.get("task") or {}).get("kind")
    if kind in HEADS:  # a head added by optc finetune
        head, cls = HEADS[kind], cls or "optc task head"
    if cls and head == task:
        return
    raise InputError(
        f"--head {task} does not apply to '{target}': an optc artifact's head is fixed when it is "
        f"compiled ({cls or 'unknown class'}, head {head if cls else 'unknown'}); drop --head, or "
        "compile the original model with --head"
    )


# -- optc MODEL ---------------------------------------------------------------------------------
def _compile_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="optc",
        description="Compile a transformer model: capture it, run a pass pipeline, write an artifact.",
        epilog="subcommands: 'optc inspect TARGET', 'optc passes', 'optc tasks', 'optc ops', "
               "'optc bench TARGET...', 'optc eval TARGET', 'optc finetune [MODEL]', "
               "'optc specialize MODEL -o OUT', "
               "'optc report TARGET [BASELINE] -o OUT.html' (each has "
               "--help); '--verbose' anywhere shows debug detail\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="Hugging Face id, local model directory, or optc artifact "
                        "(default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--passes", default="", metavar="SPEC",
                   help="pipeline spec, e.g. 'dce' or 'drop-layers{strategy=top,count=2},dce' "
                        "(list passes with 'optc passes')")
    p.add_argument("--backend", default="eager",
                   choices=["eager", "torchscript", "onnx", "hf", "onnx-st"],
                   help="eager: optc artifact directory (default); torchscript: file for "
                        "torch.jit.load; onnx: ONNX model for ONNX Runtime; hf: Hugging Face "
                        "directory for transformers (trust_remote_code=True); onnx-st: "
                        "sentence-transformers directory with onnx/model.onnx for "
                        "SentenceTransformer(OUT, backend='onnx') (fp32 or int8 embedding models)")
    p.add_argument("-o", "--output", metavar="OUT", type=output_path,
                   help="where to write: a directory (eager, hf, onnx-st) or a file "
                        "(torchscript, onnx)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_task_arguments(p, "the task of the passes that read task data (finetune, distill, "
                          "quantize max_drop, ...) where their spec names none")
    p.add_argument("--data", metavar="PATH",
                   help="calibration data for passes that measure the model (a text file, GLUE "
                        "tsv, SQuAD json or task directory; relative paths are also tried under "
                        "$OPTC_DATA_DIR); fills each such pass's data= option")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--dump-dir", metavar="DIR", type=output_path, help="write the IR before and after every pass to DIR")
    p.add_argument("--no-verify", action="store_true", help="skip IR verification between passes")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check: by default OUT is loaded back, run on example "
                        "inputs and compared with the IR before it is installed (exit 6 and "
                        "nothing written if it disagrees)")
    p.add_argument("--compare", action="store_true",
                   help="after writing OUT, print it side by side with the input model: "
                        "parameters, size on disk, measured latency (batch 1, seq 128, 1 thread) "
                        "and agreement of the outputs on fixed sentences")
    p.add_argument("--sparse-kernel", metavar="KERNEL",
                   choices=["auto", "dense", "csr", "bsr", "semi-structured"],
                   help="how eager and TorchScript run sparse weights: dense (default), csr, bsr, "
                        "semi-structured (2:4, CUDA only) or auto (a sparse kernel only where it "
                        "is measured faster on this machine); prints the choice per layer and "
                        "records it in OUT (see optc.backends.sparse_exec)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where training passes (finetune, distill, gradual-prune, qat, l0-prune) "
                        "train: cpu, cuda, cuda:N or auto (cuda when torch sees a GPU; default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of training passes (default fp32)")
    p.add_argument("--json", action="store_true", help="print the pass report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("--version", action="version", version=f"optc {_version()}")
    return p


def _version() -> str:
    from optc import __version__

    return __version__


def _cmd_compile(argv: list[str]) -> int:
    from optc.backends import write_backend
    from optc.backends.writers import DIRECTORY_BACKENDS
    from optc.passes.context import PassContext
    from optc.passes.manager import DumpIR, PassManager, PrintAfterAll
    from optc.passes.spec import parse_pipeline
    from optc.tools.progress import Progress
    from optc.train.device import check_precision, resolve_device

    args = _compile_parser().parse_args(argv)
    progress = Progress(enabled=not args.quiet)
    head, task = resolve_task_option(args, _compile_parser())  # a bad task fails here
    passes = parse_pipeline(args.passes)  # bad specs fail before any slow work
    device = resolve_device(args.device)  # a cuda request without CUDA fails here
    context = PassContext(device=str(device), precision=check_precision(args.precision, device))
    if args.data is not None:
        from optc.data import resolve_data_path

        resolve_data_path(args.data)  # a missing data path fails before any slow work
        passes = [
            dataclasses.replace(p, data=args.data)
            if p.uses_data and p.data is None else p
            for p in passes
        ]
    if task is not None:
        passes = fill_task(passes, args.task, task, args.data)
    out = Path(args.output) if args.output else None
    if args.compare and (out is None or args.backend in ("hf", "onnx-st")):
        raise PipelineSpecError("--compare measures the written output: give -o OUT and "
                                "--backend eager, torchscript or onnx")
    if args.sparse_kernel and args.backend not in ("eager", "torchscript"):
        _compile_parser().error("--sparse-kernel chooses eager and TorchScript kernels; ONNX "
                                "and hf outputs carry sparsity annotations instead: drop it")
    if args.sparse_kernel:
        from optc.backends.sparse_exec import check_kernel_available

        check_kernel_available(args.sparse_kernel)  # before any slow work
    kind = "artifact" if args.backend in DIRECTORY_BACKENDS else "file"
    inputs = _input_paths(args)
    if out is not None:
        from optc.outputs import check_output

        check_output(out, args.force, kind=kind, inputs=inputs)  # before any slow work
    if any(p.uses_data for p in passes):
        from optc.tools.preflight import check_pass_data, recorded_task

        with progress.step("reading the passes' data"):  # bad data fails before loading
            check_pass_data(passes, task or recorded_task(args.model))
    module = _load_target(args.model, head, progress)
    if task is not None:
        give_head(module, task, args.task, passes)  # the head the task implies
    instruments: list[Any] = []
    if args.print_after_all:
        instruments.append(PrintAfterAll(sys.stderr))
    if args.dump_dir:
        instruments.append(DumpIR(args.dump_dir))
    manager = PassManager(passes, verify=not args.no_verify, instruments=instruments)
    original = module.clone() if args.compare else None
    with progress.step("running passes"):
        report = manager.run(module, context)
    module.meta["pipeline"] = list(module.meta.get("pipeline", [])) + [p.spec() for p in passes]
    if passes:  # stats and times of every pass, for `optc report` (JSON-safe copies)
        module.meta["pass_stats"] = list(module.meta.get("pass_stats", [])) + json.loads(
            json.dumps(report.to_json(), default=str))
    sparse_plan = None
    if args.sparse_kernel:
        from optc.backends.eager import EagerModule
        from optc.backends.sparse_exec import plan_sparse_kernels

        module.meta["sparse_kernel"] = args.sparse_kernel  # what the backends and optc.load use
        with progress.step(f"choosing sparse kernels ({args.sparse_kernel})"):
            sparse_plan = plan_sparse_kernels(module, args.sparse_kernel,
                                              runner=lambda p: EagerModule(module, p))
    if out is not None:
        from optc.backends.selfcheck import check_written
        from optc.outputs import staged_output

        # Written under a hidden name beside OUT, loaded back and run against the eager IR
        # (unless --no-check), and moved into place only when complete and correct.
        with staged_output(out, args.force, kind=kind, inputs=inputs) as staged:
            with progress.step(f"writing {out} ({args.backend})"):
                write_backend(module, args.backend, staged, check=False)  # checked below
            if not args.no_check:
                with progress.step(f"checking {out} against the IR"):
                    check_written(module, args.backend, staged, label=out)
    comparison = None
    if original is not None and out is not None:
        from optc.tools.compare import compare_models

        with progress.step("comparing with the input model"):
            comparison = compare_models(original, module, out, args.backend)
    if args.json:
        print(json.dumps({
            "output": str(out) if out else None,
            "parameters": module.num_parameters(),
            "passes": report.to_json(),
            "sparse_kernels": sparse_plan.to_json() if sparse_plan else None,
            "comparison": comparison.to_json() if comparison else None,
        }, indent=2))
        return 0
    if passes:
        print(report.table())
    if sparse_plan is not None:
        print(sparse_plan.table(), end="")
    params = module.num_parameters()
    where = f"wrote {out}" if out else "compiled (no -o given, nothing written)"
    print(f"{where}: {params:,} parameters, {len(module.graph)} nodes")
    if comparison is not None:
        from optc.tools.compare import format_comparison

        print(format_comparison(comparison), end="")
    return 0


# -- optc inspect -------------------------------------------------------------------------------
def _cmd_inspect(argv: list[str]) -> int:
    from optc.ir.printer import print_module
    from optc.tools.inspection import format_summary, summarize
    from optc.tools.progress import Progress

    p = _Parser(prog="optc inspect", description="Print a model's IR and per-layer table, or "
                "with --diff what changed between two models.", epilog=EPILOG)
    p.add_argument("target", metavar="TARGET",
                   help="optc artifact, Hugging Face id or local model directory")
    p.add_argument("other", metavar="OTHER", nargs="?",
                   help="with --diff: the model to compare TARGET with")
    p.add_argument("--diff", action="store_true",
                   help="show what changed from TARGET to OTHER: layers, heads, FFN neurons, "
                        "parameters, FLOPs")
    p.add_argument("--seq", type=int, default=128, help="sequence length for FLOPs (default 128)")
    p.add_argument("--json", action="store_true", help="machine-readable output (includes the IR)")
    p.add_argument("--no-ir", action="store_true", help="print only the summary table")
    add_task_arguments(p, "shows the model with the head it implies")
    p.add_argument("--graph", metavar="OUT", type=output_path, help="also draw the graph (with --diff: TARGET with "
                   "what OTHER removed or changed marked) to OUT.svg, OUT.png or OUT.dot; "
                   "without Graphviz's dot program the .dot source is written instead")
    p.add_argument("--detail", type=int, metavar="LAYER", help="with --graph: the full graph "
                   "of the layer at position LAYER (with --diff: before and after)")
    p.add_argument("--force", action="store_true", help="replace the --graph picture if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = p.parse_args(argv)
    if args.seq < 1:
        p.error("--seq must be at least 1")
    if args.diff != (args.other is not None):
        p.error("--diff takes two models: optc inspect --diff A B")
    if args.detail is not None and args.graph is None:
        p.error("--detail draws a picture: give --graph OUT.svg too")
    if args.graph is not None:
        from optc.tools.graph import GRAPH_SUFFIXES, check_graph_output

        if Path(args.graph).suffix.lower() not in GRAPH_SUFFIXES:
            p.error(f"--graph {args.graph}: the picture's name must end in .svg, .png or .dot")
        check_graph_output(args.graph, args.force)  # before any slow work
    if (not args.diff and args.graph is None and Path(args.target).suffix.lower() == ".onnx"
            and Path(args.target).is_file()):
        from optc.tools.inspection import format_onnx_summary, summarize_onnx

        info = summarize_onnx(args.target)  # ops, weight bytes and optc's sparsity annotations
        print(json.dumps(info, indent=2) if args.json else format_onnx_summary(info), end="" if not args.json else "\n")
        return 0
    progress = Progress(enabled=not args.quiet)
    head, task = resolve_task_option(args, p)
    module = _load_target(args.target, head, progress)
    if task is not None:
        give_head(module, task, args.task, [])
    if args.diff:
        from optc.tools.inspection import diff_modules, format_diff

        other = _load_target(args.other, head, progress)
        if task is not None:
            give_head(other, task, args.task, [])
        if args.graph is not None:
            _draw_graph(args, module, other)
        d = diff_modules(module, other, seq=args.seq)
        print(json.dumps(d, indent=2) if args.json else format_diff(d, args.target, args.other), end="\n" if args.json else "")
        return 0
    if args.graph is not None:
        _draw_graph(args, module, None)
    info = summarize(module, seq=args.seq)
    if args.json:
        info["ir"] = print_module(module)
        print(json.dumps(info, indent=2))
        return 0
    if not args.no_ir:
        print(print_module(module))
    print(format_summary(info), end="")
    return 0


def _draw_graph(args: argparse.Namespace, module: Any, other: Any) -> None:
    """Write ``--graph`` (a diff picture when ``other`` is given); one line on stderr says
    what was written (the .dot source when Graphviz is missing)."""
    from optc.tools.graph import detail_dot, diff_dot, overview_dot, render

    names = (args.target, args.other)
    if args.detail is not None:
        source = detail_dot(module, args.detail, other, names=names)
    elif other is not None:
        source = diff_dot(module, other, title=f"{args.target} -> {args.other}")
    else:
        source = overview_dot(module, title=args.target)
    inputs = tuple(Path(t) for t in names if t)
    written, note = render(source, args.graph, args.force, inputs=inputs)
    sys.stderr.write(f"optc: {note}\n" if note else f"optc: wrote {written}\n")


# -- optc passes --------------------------------------------------------------------------------
def option_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each dataclass field (xDSL style), by field name, from the
    class and the classes it extends (a subclass's docs win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:] + [None], strict=True):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_passes() -> list[dict[str, Any]]:
    """Every registered pass with its options (name, type, default, doc)."""
    from optc.passes.base import format_value
    from optc.passes.registry import all_passes
    from optc.passes.spec import describe_type

    result = []
    for name, cls in all_passes().items():
        hints = typing.get_type_hints(cls)
        docs = option_docs(cls)
        options = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            options.append({
                "name": f.name,
                "type": describe_type(hints[f.name]),
                "default": format_value(default),
                "doc": docs.get(f.name, ""),
            })
        result.append({"name": name, "summary": cls.summary(), "options": options})
    return result


def _cmd_passes(argv: list[str]) -> int:
    p = _Parser(prog="optc passes", description="List every pass with its options.", epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    passes = describe_passes()
    if args.json:
        print(json.dumps(passes, indent=2))
        return 0
    width = max(len(x["name"]) for x in passes)
    for x in passes:
        print(f"{x['name'].ljust(width)}  {x['summary']}")
        for o in x["options"]:
            print(f"{'':{width}}    {o['name']}={o['default']}  ({o['type']})  {o['doc']}".rstrip())
    print("\nspec syntax: name or name{option=value,...}; separate passes with commas")
    return 0


# -- optc bench ---------------------------------------------------------------------------------
def _cmd_bench(argv: list[str]) -> int:
    from optc.tools.bench import (
        check_backends_option,
        fit_seq,
        format_bench,
        make_runners,
        run_bench,
        run_profile,
    )
    from optc.tools.progress import Progress

    p = _Parser(
        prog="optc bench",
        description="Latency (median, p10, p90), peak memory, parameters and size on disk of "
                    "one or more targets side by side, with ratios to the first.",
        epilog="TARGET: an .onnx file, a TorchScript .pt file, an optc artifact directory, a "
               "Hugging Face model directory or id, or 'embedded' (the bundled MiniLM)\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help="for artifacts and models: comma-separated backends to lower to and time "
                        "(eager, torchscript, onnx; 'hf' = the original model). Default: eager "
                        "for artifacts, hf for models")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--seq", type=int, default=None,
                   help="sequence length (default 128, shortened with a note to the shortest "
                        "position table among the targets; a longer explicit --seq is refused)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts (default 1)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--block", type=int, default=5, help="calls per block (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per target (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--profile", action="store_true",
                   help="also print where the time goes: per op kind (linear, attention, norm, "
                        "...) the time from ONNX Runtime's or torch's profiler next to its FLOPs "
                        "and bytes from the IR's cost model (see optc.tools.profile)")
    p.add_argument("--profile-calls", type=int, default=20, metavar="N",
                   help="--profile: profiled calls per target (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = p.parse_args(argv)
    for flag in ("seq", "rounds", "block", "profile_calls"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    if min(args.batch) < 1 or min(args.threads) < 1:
        p.error("--batch and --threads must be at least 1")
    backends = [b.strip() for b in args.backends.split(",")] if args.backends is not None else None
    try:
        check_backends_option(args.targets, backends)
    except OptcError as exc:
        p.error(str(exc))
    progress = Progress(enabled=not args.quiet)
    import tempfile

    rows: list[dict[str, Any]] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as tmp:
        for threads in args.threads:
            with progress.step(f"loading {len(args.targets)} target(s)"):
                runners = make_runners(args.targets, backends, threads, Path(tmp))
            seq, note = fit_seq(runners, args.seq)
            if note and not args.quiet:
                sys.stderr.write(f"optc: note: {note}\n")
            for batch in args.batch:
                with progress.step(f"timing batch {batch}, {threads} thread(s)"):
                    timed = run_bench(runners, batch, seq, threads, args.rounds, args.block,
                                      args.warmup, memory=not args.no_memory)
                if args.profile:
                    with progress.step(f"profiling batch {batch}, {threads} thread(s)"):
                        text, kinds = run_profile(runners, batch, seq, threads,
                                                  args.profile_calls)
                    profiles.append(text)
                    for row, found in zip(timed, kinds, strict=True):
                        row["profile"] = found["kinds"]
                rows += timed
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from optc.backends.cpu_features import describe

        print(f"cpu: {describe()}")  # kernels (VNNI, BF16) and so timings depend on it
        print(format_bench(rows), end="")
        for text in profiles:
            print()
            print(text, end="")
    return 0


# -- entry point --------------------------------------------------------------------------------
# -- optc ops ------------------------------------------------------------------------------------
def describe_ops() -> list[dict[str, Any]]:
    """Every high-level op: operands, attributes and which backends lower it natively."""
    from optc.ir.ops import REQUIRED, all_ops
    from optc.passes.base import format_value

    result = []
    for name, op in sorted(all_ops().items()):
        attrs = []
        for key, a in op.attrs.items():
            types = a.types if isinstance(a.types, tuple) else (a.types,)
            attrs.append({"name": key, "type": "|".join(t.__name__ for t in types),
                          "required": a.default is REQUIRED,
                          "default": None if a.default is REQUIRED else format_value(a.default),
                          "doc": a.doc})
        result.append({
            "name": name,
            "doc": op.doc,
            "operands": [{"name": o.name, "dtypes": o.dtypes, "optional": o.optional}
                         for o in op.operands],
            "attributes": attrs,
            "lowerings": {"eager": "kernel", "torchscript": "script" if op.script else None,
                          "onnx": "custom" if op.onnx else "traced"},
        })
    return result


def _cmd_ops(argv: list[str]) -> int:
    p = _Parser(prog="optc ops", description="List the IR's high-level ops: operands, "
                "attributes and their backend lowerings (ATen ops are written aten.name.overload).",
                epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    ops = describe_ops()
    if args.json:
        print(json.dumps(ops, indent=2))
        return 0
    for op in ops:
        operands = ", ".join(o["name"] + ("?" if o["optional"] else "") + f": {o['dtypes']}"
                             for o in op["operands"])
        onnx = {"custom": "ONNX Runtime op", "traced": "traced"}[op["lowerings"]["onnx"]]
        print(f"{op['name']}({operands})  {op['doc']}  [onnx: {onnx}]")
        for a in op["attributes"]:
            default = "required" if a["required"] else a["default"]
            print(f"    {a['name']}: {a['type']} = {default}  {a['doc']}".rstrip())
    return 0


def _cmd_eval(argv: list[str]) -> int:
    from optc.tools.train_cli import cmd_eval

    return cmd_eval(argv)


def _cmd_finetune(argv: list[str]) -> int:
    from optc.tools.train_cli import cmd_finetune

    return cmd_finetune(argv)


def _cmd_specialize(argv: list[str]) -> int:
    from optc.tools.specialize_cli import cmd_specialize

    return cmd_specialize(argv)


def _cmd_report(argv: list[str]) -> int:
    from optc.tools.report import cmd_report

    return cmd_report(argv, load=_load_target)


def _cmd_tasks(argv: list[str]) -> int:
    from optc.tools.tasks_cli import cmd_tasks

    return cmd_tasks(argv)


_COMMANDS = {"inspect": _cmd_inspect, "passes": _cmd_passes, "tasks": _cmd_tasks,
             "bench": _cmd_bench,
             "ops": _cmd_ops, "eval": _cmd_eval, "finetune": _cmd_finetune,
             "report": _cmd_report, "specialize": _cmd_specialize}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback_wanted = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    interrupts = _Interrupts()
    if console:
        interrupts.install()
    try:
        code = _main(argv, traceback_wanted, interrupts, console)
        interrupts.quiet = True  # from here on a Ctrl-C is only noted (no bytecode check before)
    except KeyboardInterrupt:  # a Ctrl-C while an error was being reported
        interrupts.quiet = True
        return _interrupted(console, interrupts)
    if console and interrupts.settle():
        # Ctrl-C after the command's last step: its output is whole, but the user interrupted.
        return _interrupted(console, interrupts)
    return code


def _main(argv: list[str], traceback_wanted: bool, interrupts: _Interrupts, console: bool) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Anywhere in main, imports included: one line, exit 130. Outputs are staged and
        # cleaned up by their own finally blocks before the interrupt gets here.
        return _interrupted(console, interrupts)
    except OptcError as exc:
        if interrupts.seen:  # a library turned the KeyboardInterrupt into an error of its own
            return _interrupted(console, interrupts)
        if traceback_wanted:
            raise
        # Messages quote input text through excerpt(); this bounds any that does not.
        sys.stderr.write(f"optc: error: {excerpt(str(exc), MESSAGE_LIMIT, quote=False)}\n")
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `optc inspect ... | head`): stop quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except Exception as exc:  # noqa: BLE001 - last-resort: one line, not a traceback
        if interrupts.seen:
            return _interrupted(console, interrupts)
        if traceback_wanted:
            raise
        first = excerpt((str(exc).strip().splitlines() or [""])[0], MESSAGE_LIMIT, quote=False)
        sys.stderr.write(
            f"optc: internal error: {type(exc).__name__}: {first} "
            "(rerun with --traceback and report it)\n"
        )
        return 1


def _interrupted(console: bool, interrupts: _Interrupts) -> int:
    """Report Ctrl-C with one line and exit code 130."""
    if console:
        interrupts.settle()  # a second Ctrl-C must not interrupt this message
    sys.stderr.write("optc: interrupted\n")
    if console:
        # Exit now: CPython marks a KeyboardInterrupt raised inside exec() (dataclasses and
        # torch.fx generate code with it) as unhandled even when it was caught, and would then
        # kill itself with SIGINT at exit instead of returning 130.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(130)
    return 130


class _Interrupts:
    """Console only: how Ctrl-C (SIGINT) reaches the CLI.

    While a command runs, each SIGINT raises KeyboardInterrupt and is noted (some libraries
    catch the KeyboardInterrupt and raise their own error instead; main still reports an
    interrupt). A KeyboardInterrupt that lands in a finalizer or weakref callback (torch runs
    many during garbage collection), where Python would swallow it with an "Exception ignored
    ... Traceback" message and go on, is re-delivered. When the command is over,
    :meth:`settle` makes the process ignore SIGINT: Python restores the default action while it
    shuts down (after flushing stdout), so a late Ctrl-C would otherwise kill it by the signal,
    with no message and no exit code of its own."""

    def __init__(self) -> None:
        self.seen = False
        """A SIGINT arrived."""
        self.quiet = False
        """Only note SIGINTs from now on (the command is over or is being reported)."""

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.seen = True
        if not self.quiet:
            raise KeyboardInterrupt

    def install(self) -> None:
        import _thread
        import signal
        import threading

        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._on_sigint)
        previous = sys.unraisablehook

        def hook(info: Any) -> None:
            if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
                # From another thread, a moment later: never inside this hook or the finalizer.
                timer = threading.Timer(0.01, _thread.interrupt_main)
                timer.daemon = True
                timer.start()
                return
            previous(info)

        sys.unraisablehook = hook

    def settle(self) -> bool:
        """Stop raising and ignore SIGINT from now on (also at the OS level, so that it
        holds while the interpreter shuts down); returns whether a SIGINT ever arrived.
        ``signal.signal`` runs a pending Python handler before it switches, so a signal that
        arrived just before is noted here rather than reported as a race."""
        import signal

        self.quiet = True
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self.seen


_READ_DATA = ("eval", "finetune", "specialize")
"""Subcommands that read task data (and compile): they run inside ``reuse_reads``."""


def _run(argv: list[str]) -> int:
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    quiet_libraries(verbose)
    command = _COMMANDS.get(argv[0]) if argv else None
    if command is not None and argv[0] not in _READ_DATA:
        return command(argv[1:])
    from optc.tasks import reuse_reads

    # The data is read before the model is loaded (bad data fails fast) and again where it
    # is used: inside reuse_reads each task file is parsed once.
    with reuse_reads():
        return command(argv[1:]) if command else _cmd_compile(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
