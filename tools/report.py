"""``optc report``: one self-contained HTML page about a compiled model (and its baseline).

Sections (each says "not present" when the model carries nothing for it):

- summary: parameters, GFLOPs, size on disk, nodes, and latency per backend with ``--bench``
  (through :mod:`optc.tools.bench`), each as a ratio to the baseline;
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
- graph: the picture of :mod:`optc.tools.graph` (a diff against the baseline when given).

Plots are matplotlib SVG and the graph is Graphviz SVG, inlined: the page needs no network. The
numbers come from :func:`optc.tools.inspection.summarize` (what ``optc inspect --json`` prints),
embedded as JSON in ``<script id="optc-data">`` for other tools.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from optc.errors import InputError
from optc.ir.core import Module
from optc.tools import graph as graphs
from optc.tools.common import EPILOG, output_path
from optc.tools.common import Parser as _Parser
from optc.tools.inspection import summarize
from optc.tools.progress import Progress
from optc.train.heads import selection_warning

__all__ = ["build_report", "render_html", "cmd_report", "family", "disk_size"]

REPORT_SUFFIXES = (".html", ".htm")

_BLUE, _GREY, _ORANGE = "#4a78a8", "#b8b8b8", "#d35400"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def disk_size(path: str | os.PathLike | None) -> int | None:
    """Bytes of a file, or of every file under a directory; None when there is no such path."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def family(module: Module) -> dict[str, Any]:
    """What must agree for two models to be compared layer by layer: the source model type,
    the hidden width and the head size."""
    src = module.meta.get("source") or {}
    info = summarize_cached(module)
    hidden = next((int(v.split("[")[1].rstrip("]").split(",")[-1])
                   for v in info["outputs"].values() if v.count(",") == 2), None)
    head_dim = next((x["head_dim"] for x in info["layers"] if x["head_dim"]), None)
    return {"model_type": src.get("model_type") or src.get("class"), "hidden": hidden,
            "head_dim": head_dim}


_SUMMARIES: dict[int, tuple[Module, dict[str, Any]]] = {}


def summarize_cached(module: Module, seq: int = 128) -> dict[str, Any]:
    """:func:`summarize` once per module object and sequence length during one report."""
    key = id(module) * 100003 + seq
    hit = _SUMMARIES.get(key)
    if hit is None or hit[0] is not module:
        hit = (module, summarize(module, seq))
        _SUMMARIES[key] = hit
    return hit[1]


# -- data ---------------------------------------------------------------------------------------
def build_report(module: Module, baseline: Module | None = None, *, name: str = "model",
                 baseline_name: str = "baseline", path: str | None = None,
                 baseline_path: str | None = None, seq: int = 128,
                 bench: list[dict[str, Any]] | None = None,
                 specialization: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (also embedded in the page).

    ``specialization``: the search record of ``optc specialize`` (an artifact's metadata);
    default: the module's ``meta["specialization"]``.
    """
    _SUMMARIES.clear()
    info = summarize_cached(module, seq)
    data: dict[str, Any] = {
        "name": name, "path": path, "seq": seq, "model": info,
        "nonzero_flops": info["nonzero_flops"],
        "specialization": specialization or module.meta.get("specialization"),
        "disk_bytes": disk_size(path), "baseline": None, "warnings": [], "bench": bench,
    }
    for meta, label in ((module.meta, name), (baseline.meta if baseline else {}, baseline_name)):
        warning = selection_warning(meta, label)  # its dev figures are optimistic
        if warning:
            data["warnings"].append(warning)
    if baseline is not None:
        binfo = summarize_cached(baseline, seq)
        data["baseline"] = {"name": baseline_name, "path": baseline_path, "model": binfo,
                            "nonzero_flops": binfo["nonzero_flops"],
                            "disk_bytes": disk_size(baseline_path)}
        fa, fb = family(module), family(baseline)
        data["comparable"] = fa == fb
        if fa != fb:
            what = ", ".join(f"{k} {fb[k]} vs {fa[k]}" for k in fa if fa[k] != fb[k])
            data["warnings"].append(
                f"the baseline {baseline_name} is a different architecture family ({what}): "
                "only totals are compared; the per-layer comparison and the graph diff are left out")
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}&#215;"


# -- plots ----------------------------------------------------------------------------------------
def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "optc"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.find("<svg"):]


def _bits(weights: dict[str, Any]) -> float:
    sizes = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8,
             "int16": 16, "int32": 32, "int64": 64, "bool": 1}
    total = sum(weights["dtypes"].values())
    if not total:
        return 0.0
    return sum(sizes.get(k, 32) * n for k, n in weights["dtypes"].items()) / total


def _density(layer: dict[str, Any], facts: dict[str, Any]) -> float:
    """Nonzero fraction of the layer's projection weights (``inspect``'s per-layer density),
    else of all its parameters."""
    return layer["density"] if "density" in layer else facts["weights"]["density"]


def layer_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer of the baseline (or the model), with the model's values beside."""
    model = data["model"]
    mine = {x["id"]: (x, f) for x, f in zip(model["layers"], model["layer_facts"], strict=True)}
    base = data["baseline"]["model"] if data.get("baseline") and data.get("comparable") else None
    rows = []
    source = base if base is not None else model
    for x, f in zip(source["layers"], source["layer_facts"], strict=True):
        now = mine.get(x["id"])
        row = {"id": x["id"], "position": now[0]["layer"] if now else None,
               "heads": now[0]["heads"] if now else 0, "head_ids": now[0]["head_ids"] if now else [],
               "ffn": now[0]["ffn"] if now else 0,
               "density": _density(*now) if now else None,
               "bits": _bits(now[1]["weights"]) if now else None,
               "precision": now[0].get("precision") if now else None,
               "params": now[0]["params"] if now else 0,
               "hard": now[1]["topk"] if now and now[1]["attention_kind"] == "topk" else None}
        if base is not None:
            row["base"] = {"heads": x["heads"], "head_ids": x["head_ids"], "ffn": x["ffn"],
                           "density": _density(x, f), "bits": _bits(f["weights"]),
                           "params": x["params"]}
        rows.append(row)
    return rows


def layer_charts(rows: list[dict[str, Any]], names: tuple[str, str]) -> str:
    """Four bar charts (heads, FFN width, density, bits per weight), baseline grey beside."""
    fig = Figure(figsize=(10, 5.6))
    axes = fig.subplots(2, 2)
    labels = [f"L{r['id']}" for r in rows]
    xs = list(range(len(rows)))
    has_base = any("base" in r for r in rows)
    width = 0.4 if has_base else 0.7
    for ax, key, title in ((axes[0][0], "heads", "attention heads kept"),
                           (axes[0][1], "ffn", "FFN width (neurons)"),
                           (axes[1][0], "density", "weight density (nonzero fraction)"),
                           (axes[1][1], "bits", "precision (bits per weight)")):
        mine = [r[key] or 0 for r in rows]
        if has_base:
            ax.bar([x - width / 2 for x in xs], [r["base"][key] or 0 for r in rows], width,
                   color=_GREY, label=names[1])
        bars = ax.bar([x + (width / 2 if has_base else 0) for x in xs], mine, width,
                      color=_BLUE, label=names[0])
        for r, bar in zip(rows, bars, strict=True):
            if r["position"] is None:
                ax.text(bar.get_x() + bar.get_width() / 2, 0, "removed", rotation=90,
                        ha="center", va="bottom", fontsize=8, color=_ORANGE)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        if key == "density":
            ax.set_ylim(0, 1.05)
        ax.spines[["top", "right"]].set_visible(False)
    if has_base:
        axes[0][0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _svg(fig)


# -- specialization history ------------------------------------------------------------------------
_Y_KEYS = ("mean_loss", "val_loss", "loss", "validation_loss", "val_metric", "metric", "score")
_X_KEYS = ("flops", "gflops", "flops_ratio")


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    for k in keys:
        if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool):
            return k, d[k]
    return None


def search_plot(spec: dict[str, Any]) -> str | None:
    """Loss/metric vs FLOPs of every trial of a specialization record, accepted highlighted;
    None when the history has no trials with both numbers (skipped trials have none)."""
    cands = next((spec[k] for k in ("candidates", "history", "trials")
                  if isinstance(spec.get(k), list)), [])
    pts = []
    for c in cands:
        if not isinstance(c, dict):
            continue
        x, y = _first(c, _X_KEYS), _first(c, _Y_KEYS)
        if x and y:
            ok = bool(c.get("accepted", c.get("kept", c.get("committed", False))))
            if x[0] == "flops":
                x = ("GFLOPs (batch 1, seq 128)", x[1] / 1e9)
            pts.append((x, y, ok))
    if not pts:
        return None
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    for ok, color, label in ((False, _GREY, "rejected"), (True, _ORANGE, "accepted")):
        sel = [p for p in pts if p[2] == ok]
        if sel:
            ax.scatter([p[0][1] for p in sel], [p[1][1] for p in sel], c=color, label=label,
                       s=28 if ok else 16, zorder=3 if ok else 2)
    ax.set_xlabel(pts[0][0][0].replace("_", " ").replace("gflops", "GFLOPs"))
    ax.set_ylabel(pts[0][1][0].replace("_", " "))
    ax.set_title("specialization search: every candidate", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)


def pareto_plot(spec: dict[str, Any]) -> str | None:
    """Held-out metric vs measured latency of the points ``optc specialize`` checked under
    its tolerance contract (``spec["contract"]``), the Pareto front joined, the chosen point
    and the input marked; None without a contract record with measured points."""
    record = spec.get("contract")
    if not isinstance(record, dict) or not isinstance(record.get("points"), list):
        return None
    points = record["points"]
    timed = [p for p in points if isinstance(p, dict) and p.get("latency_ms") is not None
             and p.get("held_out") is not None]
    if not timed:
        return None
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    ax.scatter([p["latency_ms"] for p in timed], [p["held_out"] for p in timed], c=_GREY, s=16,
               label="measured", zorder=2)
    front = [points[i] for i in record.get("front", []) if 0 <= i < len(points)]
    if front:
        ax.plot([p["latency_ms"] for p in front], [p["held_out"] for p in front], "-o",
                color=_ORANGE, ms=5, label="Pareto front", zorder=3)
    for key, marker, label in (("input", "s", "input"), ("chosen", "*", "chosen")):
        index = record.get(key)
        if isinstance(index, int) and 0 <= index < len(points) and \
                points[index].get("latency_ms") is not None:
            p = points[index]
            ax.scatter([p["latency_ms"]], [p["held_out"]], marker=marker, s=120, c="#222",
                       label=label, zorder=4)
    drop = record.get("max_drop")
    base = points[0].get("held_out") if points else None
    if isinstance(drop, (int, float)) and isinstance(base, (int, float)):
        ax.axhline(base - drop, color=_GREY, ls="--", lw=1, label=f"input - {drop:g}")
    target = record.get("target") or {}
    ax.set_xlabel(f"latency ms ({target.get('backend', '?')}, batch {target.get('batch', '?')}, "
                  f"{target.get('threads', '?')} thread(s))")
    ax.set_ylabel(f"held-out {spec.get('metric') or 'metric'}")
    ax.set_title("operating points within the tolerance", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)


def _before_after(spec: dict[str, Any]) -> tuple[Any, Any] | None:
    for a, b in (("dev_metric_before", "dev_metric_after"), ("dev_before", "dev_after"),
                 ("before", "after"), ("baseline", "final"),
                 ("metric_before", "metric_after")):
        if a in spec and b in spec:
            return spec[a], spec[b]
    return None


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}.muted{color:#888}
.warn{background:#fff4e5;border-left:4px solid #d35400;padding:.5em 1em}.removed{color:#999;text-decoration:line-through}
#pipeline td:last-child,#weights td:last-child{text-align:left}
.graph{overflow:auto;max-height:900px;border:1px solid #eee}.graph svg{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}code{font-size:.9em}
"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def _summary(data: dict[str, Any]) -> str:
    m = data["model"]
    b = data["baseline"]
    bm = b["model"] if b else None
    rows = []
    for label, mine, theirs, fmt in (
        ("parameters", m["parameters"], bm and bm["parameters"], "{:,}"),
        (f"GFLOPs (batch 1, seq {data['seq']})", m["flops"] / 1e9, bm and bm["flops"] / 1e9, "{:.3f}"),
        ("weights in memory", m["parameter_bytes"], bm and bm["parameter_bytes"], "mb"),
        ("size on disk", data["disk_bytes"], b and b["disk_bytes"], "mb"),
        ("nodes", m["nodes"], bm and bm["nodes"], "{:,}"),
    ):
        show = (lambda v: _mb(v)) if fmt == "mb" else (lambda v, f=fmt: "-" if v is None else f.format(v))
        row = [label, show(mine)]
        if b:
            row += [show(theirs), _fmt_ratio(_ratio(mine, theirs))]
        rows.append(row)
    for backend, (mine, theirs) in _latency(data).items():
        row = [f"latency {backend} (median)", "-" if mine is None else f"{mine:.2f} ms"]
        if b:
            row += ["-" if theirs is None else f"{theirs:.2f} ms", _fmt_ratio(_ratio(mine, theirs))]
        rows.append(row)
    head = ["", _esc(data["name"])] + ([_esc(b["name"]), "ratio"] if b else [])
    note = "" if data["bench"] is not None else \
        '<p class="muted">latency: not measured (run <code>optc report ... --bench</code>)</p>'
    return _table(head, rows) + note


def _latency(data: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    out: dict[str, tuple[float | None, float | None]] = {}
    for row in data["bench"] or []:
        mine, theirs = out.get(row["backend"], (None, None))
        if row["role"] == "model":
            mine = row["median_ms"]
        else:
            theirs = row["median_ms"]
        out[row["backend"]] = (mine, theirs)
    return out


def _layers_section(data: dict[str, Any]) -> str:
    rows = layer_rows(data)
    if not rows:
        return "<p>no transformer layers found (not present)</p>"
    names = (data["name"], data["baseline"]["name"] if data.get("baseline") else "")
    has_base = any("base" in r for r in rows)
    head = ["layer id", "position", "heads", "head ids", "FFN", "params", "density", "bits", "attention"]
    table = []
    for r in rows:
        gone = r["position"] is None
        def cell(key: str, fmt: str = "{}", r: dict[str, Any] = r) -> str:
            v = r[key]
            s = "-" if v is None else fmt.format(v)
            if "base" in r and r["base"].get(key) != v and r["base"].get(key) is not None:
                s = f"{fmt.format(r['base'][key])} &#8594; {s}"
            return s
        ids = ",".join(map(str, r["head_ids"]))
        if has_base and r.get("base"):
            removed = [h for h in r["base"]["head_ids"] if h not in r["head_ids"]]
            if removed:
                ids += f' <span class="removed">{",".join(map(str, removed))}</span>'
        table.append([str(r["id"]), "removed" if gone else str(r["position"]),
                      cell("heads"), ids or "-", cell("ffn"), cell("params", "{:,}"),
                      cell("density", "{:.3f}"),
                      cell("bits", "{:.0f}") + (f" ({_esc(r['precision'])})" if r.get("precision") else ""),
                      f"top-{r['hard']}" if r["hard"] else ("-" if gone else "softmax")])
    return _table(head, table) + layer_charts(rows, names)


def _pipeline_section(data: dict[str, Any]) -> str:
    m = data["model"]
    out = []
    if not m["pipeline"]:
        out.append("<p>pipeline: not present (the model was not compiled with passes)</p>")
    else:
        out.append("<ol>" + "".join(f"<li><code>{_esc(p)}</code></li>" for p in m["pipeline"]) + "</ol>")
    if m["pass_stats"]:
        rows = []
        for r in m["pass_stats"]:
            stats = ", ".join(f"{k}={v}" for k, v in (r.get("stats") or {}).items())
            secs = r.get("seconds")
            rows.append([f"<code>{_esc(r.get('pass'))}</code>", "yes" if r.get("modified") else "no",
                         "-" if secs is None else f"{secs * 1e3:.1f} ms", _esc(stats)])
        out.append(_table(["pass", "changed", "time", "stats"], rows))
    else:
        out.append('<p class="muted">pass statistics and times: not present (recorded by '
                   "<code>optc</code> compiles from this version on)</p>")
    return "".join(out)


def _specialize_section(data: dict[str, Any]) -> str:
    spec = data.get("specialization")
    if not spec:
        return "<p>not present (the model did not come from <code>optc specialize</code>)</p>"
    out = []
    if isinstance(spec, dict):
        rows = []
        ba = _before_after(spec)
        if ba:
            rows.append([f"dev {_esc(spec.get('metric') or 'metric')}", _num(ba[0]), _num(ba[1])])
        for label, a, b in (("validation loss", "baseline_loss", "best_loss"),
                            (f"validation {spec.get('metric') or 'metric'}",
                             "baseline_val_metric", "best_val_metric"),
                            ("GFLOPs (batch 1, seq 128)", "flops_before", "flops_after"),
                            ("parameters", "params_before", "params_after"),
                            ("latency ms (batch 1, seq 128)", "latency_ms_before", "latency_ms_after")):
            if spec.get(a) is not None or spec.get(b) is not None:
                scale = 1e9 if a == "flops_before" else 1
                rows.append([_esc(label), _num(spec.get(a), scale), _num(spec.get(b), scale)])
        if rows:
            out.append(_table(["", "before", "after"], rows))
        front = pareto_plot(spec)
        if front:
            out.append(front)
        record = spec.get("contract") if isinstance(spec.get("contract"), dict) else {}
        lines = [*(record.get("notes") or []), *([record["fallback"]] if record.get("fallback")
                                                 else [])]
        if lines:
            out.append("<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in lines) + "</ul>")
        plot = search_plot(spec)
        out.append(plot or "<p class=\"muted\">search history: no candidates with FLOPs and a "
                           "loss or metric recorded</p>")
    out.append("<details><summary>recorded history (JSON)</summary><pre>"
               + _esc(json.dumps(spec, indent=1, default=str)[:20000]) + "</pre></details>")
    return "".join(out)


def _num(v: Any, scale: float = 1) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else _esc(v)
    if scale != 1:
        v = v / scale
    return f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"


def _attributes_section(data: dict[str, Any]) -> str:
    attrs = data["model"]["weights"]["attributes"]
    dtypes = data["model"]["weights"]["dtypes"]
    prec = ", ".join(f"{k}: {v:,}" for k, v in dtypes.items())
    head = f"<p>weights by dtype: {_esc(prec)}; overall density {data['model']['weights']['density']:.3f}</p>"
    if not attrs:
        return head + "<p>sparsity and quantization attributes: not present</p>"
    rows = [[f"<code>{_esc(a['param'])}</code>", _esc(a["kind"]),
             _esc(", ".join(f"{k}={v}" for k, v in a.items() if k not in ("param", "attr", "kind")))]
            for a in attrs]
    return head + _table(["parameter", "attribute", "fields"], rows)


def _faster_section(data: dict[str, Any]) -> str:
    b = data["baseline"]
    if b is None:
        return "<p>not present (needs a BASELINE to compare with)</p>"
    dense = _ratio(data["model"]["flops"], b["model"]["flops"])
    flops = _ratio(data["nonzero_flops"], b["nonzero_flops"])
    sparse = flops is not None and dense is not None and abs(flops - dense) > 1e-3
    head = ["backend", "FLOPs ratio"] + (["nonzero FLOPs ratio"] if sparse else []) + ["latency ratio"]
    note = ('<p class="muted">nonzero FLOPs: linears scaled by their weights\' declared sparsity '
            "density (the work a sparse kernel would do)</p>") if sparse else ""
    lat = _latency(data)
    if not lat:
        return (_table(head, [["-", _fmt_ratio(dense)] + ([_fmt_ratio(flops)] if sparse else [])
                              + ["not measured"]])
                + note + '<p class="muted">latency: not measured (use <code>--bench</code>)</p>')
    rows, sentences = [], []
    what = "nonzero FLOPs" if sparse else "FLOPs"
    for backend, (mine, theirs) in lat.items():
        r = _ratio(mine, theirs)
        rows.append([backend, _fmt_ratio(dense)] + ([_fmt_ratio(flops)] if sparse else [])
                    + [_fmt_ratio(r)])
        if r is not None and flops and abs(math.log(r / flops)) > math.log(1.25):
            if r > flops:
                sentences.append(
                    f"On {backend} the model does {flops:.2f}&#215; the baseline's {what} but takes "
                    f"{r:.2f}&#215; its time: the saved work does not turn into speed here (for "
                    "example unstructured sparsity or int8 without fast kernels, or fixed "
                    "overheads that dominate small matrices).")
            else:
                sentences.append(
                    f"On {backend} the model takes {r:.2f}&#215; the baseline's time, less than its "
                    f"{what} ratio {flops:.2f}&#215; predicts (int8 kernels, or less memory traffic "
                    "and per-op overhead, save more than the FLOPs count shows).")
        elif r is not None:
            sentences.append(f"On {backend} time follows {what} ({r:.2f}&#215; vs {flops:.2f}&#215;).")
    return _table(head, rows) + note + "".join(f"<p>{s}</p>" for s in sentences)


def _graph_section(graph_svg: str | None, graph_dot: str) -> str:
    if graph_svg is None:
        return (f"<p>{_esc(graphs.DOT_MISSING_HINT)}: the picture is not drawn; its DOT source "
                "follows.</p><details><summary>DOT</summary><pre>" + _esc(graph_dot) + "</pre></details>")
    return f'<div class="graph">{graph_svg}</div>'


def render_html(data: dict[str, Any], graph_dot: str, graph_svg: str | None) -> str:
    """The page. ``graph_svg`` is None when Graphviz is missing (the DOT source is shown)."""
    b = data["baseline"]
    title = f"optc report: {data['name']}" + (f" vs {b['name']}" if b else "")
    warnings = "".join(f'<p class="warn">{_esc(w)}</p>' for w in data["warnings"])
    sections = [
        ("summary", "Summary", _summary(data)),
        ("layers", "Layers", _layers_section(data)),
        ("pipeline", "Pass pipeline", _pipeline_section(data)),
        ("specialization", "Specialization history", _specialize_section(data)),
        ("weights", "Sparsity and precision", _attributes_section(data)),
        ("faster", "Is it faster here?", _faster_section(data)),
        ("graph", "Graph" + (" (diff against the baseline)" if b and data.get("comparable") else ""),
         _graph_section(graph_svg, graph_dot)),
    ]
    body = "".join(f'<section id="{sid}"><h2>{_esc(h)}</h2>{content}</section>'
                   for sid, h, content in sections)
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>{warnings}{body}"
            f'<script type="application/json" id="optc-data">{payload}</script></body></html>\n')


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
    from optc.tools.bench import file_backend

    if file_backend(target) is not None:
        raise InputError(f"'{target}' is an exported {file_backend(target)} file: the report reads "
                         "an optc artifact or a model (give the artifact it was compiled from)")
    if Path(target).is_file():
        raise InputError(f"'{target}' is not a model: give an optc artifact directory, a Hugging "
                         "Face model directory or id, or 'embedded'")
    return load(None if target == "embedded" else target, "auto", progress)


def _bench(target: str, baseline: str | None, seq: int) -> list[dict[str, Any]]:
    """Median latency of the model (and the baseline) on eager and onnx, one thread."""
    from optc.tools.bench import fit_seq, make_runners, run_bench

    targets = [target] + ([baseline] if baseline else [])
    with tempfile.TemporaryDirectory(prefix="optc-report-") as tmp:
        runners = make_runners(targets, ["eager", "onnx"], 1, Path(tmp))
        fitted, _ = fit_seq(runners, None)
        seq = min(seq, fitted)
        rows = run_bench(runners, 1, seq, 1, rounds=6, block=5, warmup=3, memory=False)
    for row in rows:
        row["role"] = "model" if row["target"] == target else "baseline"
    return rows
