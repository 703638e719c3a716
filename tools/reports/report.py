"""``optc report``: one self-contained HTML page about a compiled model (and its baseline).

Sections (each says "not present" when the model carries nothing for it):

- summary: parameters, GFLOPs, size on disk, nodes, and latency per backend with ``--bench``
  (through :mod:`optc.tools.measure.bench`), each as a ratio to the baseline;
- layers: a table (stable layer ids, head ids, FFN width, density, precision) and bar charts of
  heads kept, FFN width, weight density and bits per weight, baseline beside the model;
- pipeline: the passes that produced the model (artifact metadata ``pipeline``) with their stats
  and times when recorded (``pass_stats``);
- specialization: the search history that ``optc specialize`` records (the artifact's
  metadata ``specialization``, else the module's ``meta["specialization"]``) as a plot
  (validation loss or metric vs FLOPs per trial, accepted ones highlighted) and the
  before/after dev metric;
- sparsity and precision: the typed parameter attributes (``Sparsity``, ``Quantization``);
- "is it faster here?": FLOPs ratio next to the measured latency ratio per backend, with a plain
  sentence where they disagree;
- graph: the picture of :mod:`optc.tools.reports.graph` (a diff against the baseline when given).

Plots are matplotlib SVG and the graph is Graphviz SVG, inlined: the page needs no network. The
numbers come from :func:`optc.tools.reports.inspection.summarize` (what ``optc inspect --json``
prints), embedded as JSON in ``<script id="optc-data">`` for other tools.

The data is built in :mod:`optc.tools.reports.report_data`, the charts drawn in
:mod:`optc.tools.reports.report_plots` and the page rendered in
:mod:`optc.tools.reports.report_html`; this module runs the command (their public names are
re-exported here).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optc.errors import InputError
from optc.ir.core import Module
from optc.tools.common import EPILOG, output_path
from optc.tools.common import Parser as _Parser
from optc.tools.progress import Progress
from optc.tools.reports import graph as graphs
from optc.tools.reports.report_data import (
    build_report,
    disk_size,
    family,
    layer_rows,
    summarize_cached,
)
from optc.tools.reports.report_html import render_html
from optc.tools.reports.report_plots import layer_charts, pareto_plot, search_plot

__all__ = ["build_report", "render_html", "cmd_report", "family", "disk_size", "report_html",
           "layer_rows", "layer_charts", "search_plot", "pareto_plot", "summarize_cached"]

REPORT_SUFFIXES = (".html", ".htm")


def report_html(module: Module, baseline: Module | None = None, **kwargs: Any) -> str:
    """Build and render the page (see :func:`build_report` for the options)."""
    data = build_report(module, baseline, **kwargs)
    names = (data["name"], data["baseline"]["name"] if data["baseline"] else "")
    if baseline is not None and data.get("comparable"):
        dot = graphs.diff_dot(baseline, module, title=f"{names[1]} -> {names[0]}")
    else:
        dot = graphs.overview_dot(module, title=names[0])
    return render_html(data, dot, graphs.to_svg(dot))


# -- the command ----------------------------------------------------------------------------------
def cmd_report(argv: list[str], load: Callable[[str | None, str, Any], Module]) -> int:
    """``optc report TARGET [BASELINE] -o report.html [--bench] [--force]``."""
    p = _Parser(prog="optc report", description="Write one self-contained HTML page about a "
                "model: summary, per-layer charts, pass pipeline, specialization history, "
                "sparsity/precision, 'is it faster here?' and the graph (a diff against "
                "BASELINE when given).", epilog="TARGET/BASELINE: an optc artifact, a Hugging "
                "Face model directory or id, or 'embedded' (the bundled MiniLM)\n" + EPILOG)
    p.add_argument("target", metavar="TARGET")
    p.add_argument("baseline", metavar="BASELINE", nargs="?")
    p.add_argument("-o", "--output", metavar="OUT.html", type=output_path, required=True)
    p.add_argument("--bench", action="store_true",
                   help="measure latency of both models on eager and ONNX Runtime (1 thread)")
    p.add_argument("--seq", type=int, default=128, help="sequence length for FLOPs and --bench")
    p.add_argument("--force", action="store_true", help="replace OUT.html if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    args = p.parse_args(argv)
    if args.seq < 1:
        p.error("--seq must be at least 1")
    out = Path(args.output)
    if out.suffix.lower() not in REPORT_SUFFIXES:
        p.error(f"-o {args.output}: the report's name must end in .html")
    inputs = tuple(Path(t) for t in (args.target, args.baseline) if t)
    graphs.check_file_output(out, args.force, REPORT_SUFFIXES, inputs)  # before slow work
    progress = Progress(enabled=not args.quiet)
    module = _load(args.target, load, progress)
    baseline = _load(args.baseline, load, progress) if args.baseline else None
    record = _artifact_specialization(args.target)
    bench = None
    if args.bench:
        with progress.step("timing eager and onnx"):
            bench = _bench(args.target, args.baseline, args.seq)
    with progress.step("writing the report"):
        page = report_html(module, baseline, name=args.target, baseline_name=args.baseline or "",
                           path=_local(args.target), baseline_path=_local(args.baseline),
                           seq=args.seq, bench=bench, specialization=record)
        graphs.write_file(out, page.encode("utf-8"), args.force, REPORT_SUFFIXES, inputs)
    data_warn = baseline is not None and family(module) != family(baseline)
    if data_warn:
        sys.stderr.write(f"optc: note: {args.baseline} is a different architecture family; "
                         "only totals are compared\n")
    if not graphs.dot_available():
        sys.stderr.write(f"optc: note: {graphs.DOT_MISSING_HINT}; the report shows the graph's "
                         "DOT source instead of the picture\n")
    print(f"wrote {out}")
    return 0


def _artifact_specialization(target: str) -> dict[str, Any] | None:
    """The ``specialization`` record in an artifact's metadata.json, if any."""
    from optc.artifacts import is_artifact, read_metadata

    if not is_artifact(target):
        return None
    record = read_metadata(target).get("specialization")
    return record if isinstance(record, dict) else None


def _local(target: str | None) -> str | None:
    if target is None:
        return None
    if target == "embedded":
        from optc.frontends.huggingface import default_model_path

        return str(default_model_path())
    return target if Path(target).exists() else None


def _load(target: str, load: Callable[[str | None, str, Any], Module], progress: Any) -> Module:
    from optc.tools.measure.bench import file_backend

    if file_backend(target) is not None:
        raise InputError(f"'{target}' is an exported {file_backend(target)} file: the report reads "
                         "an optc artifact or a model (give the artifact it was compiled from)")
    if Path(target).is_file():
        raise InputError(f"'{target}' is not a model: give an optc artifact directory, a Hugging "
                         "Face model directory or id, or 'embedded'")
    return load(None if target == "embedded" else target, "auto", progress)


def _bench(target: str, baseline: str | None, seq: int) -> list[dict[str, Any]]:
    """Median latency of the model (and the baseline) on eager and onnx, one thread."""
    from optc.tools.measure.bench import fit_seq, make_runners, run_bench

    targets = [target] + ([baseline] if baseline else [])
    with tempfile.TemporaryDirectory(prefix="optc-report-") as tmp:
        runners = make_runners(targets, ["eager", "onnx"], 1, Path(tmp))
        fitted, _ = fit_seq(runners, None)
        seq = min(seq, fitted)
        rows = run_bench(runners, 1, seq, 1, rounds=6, block=5, warmup=3, memory=False)
    for row in rows:
        row["role"] = "model" if row["target"] == target else "baseline"
    return rows
