"""``optc inspect TARGET [--seq N] [--json]``: a model's IR and per-layer table, or with
``--diff`` what changed between two models; ``--graph`` also draws it
(:mod:`optc.tools.reports.graph`). An ``.onnx`` file is summarized from the file itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from optc.tools.cli.targets import load_target
from optc.tools.cli.task_option import add_task_arguments, give_head, resolve_task_option
from optc.tools.common import EPILOG, output_path
from optc.tools.common import Parser as _Parser

__all__ = ["cmd_inspect"]


def cmd_inspect(argv: list[str]) -> int:
    from optc.ir.printer import print_module
    from optc.tools.progress import Progress
    from optc.tools.reports.inspection import format_summary, summarize

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
        from optc.tools.reports.graph import GRAPH_SUFFIXES, check_graph_output

        if Path(args.graph).suffix.lower() not in GRAPH_SUFFIXES:
            p.error(f"--graph {args.graph}: the picture's name must end in .svg, .png or .dot")
        check_graph_output(args.graph, args.force)  # before any slow work
    if (not args.diff and args.graph is None and Path(args.target).suffix.lower() == ".onnx"
            and Path(args.target).is_file()):
        from optc.tools.reports.inspection import format_onnx_summary, summarize_onnx

        info = summarize_onnx(args.target)  # ops, weight bytes and optc's sparsity annotations
        print(json.dumps(info, indent=2) if args.json else format_onnx_summary(info), end="" if not args.json else "\n")
        return 0
    progress = Progress(enabled=not args.quiet)
    head, task = resolve_task_option(args, p)
    module = load_target(args.target, head, progress)
    if task is not None:
        give_head(module, task, args.task, [])
    if args.diff:
        from optc.tools.reports.inspection import diff_modules, format_diff

        other = load_target(args.other, head, progress)
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
    from optc.tools.reports.graph import detail_dot, diff_dot, overview_dot, render

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
