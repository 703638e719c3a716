"""The page of ``optc report`` (:mod:`optc.tools.reports.report`): its HTML sections (summary,
layers, pass pipeline, specialization history, sparsity and precision, "is it faster here?", graph)
rendered from the report's data, with the data embedded as JSON."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from optc.tools.reports.graph_render import DOT_MISSING_HINT
from optc.tools.reports.report_data import layer_rows
from optc.tools.reports.report_plots import layer_charts, pareto_plot, search_plot

__all__ = ["render_html"]


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}&#215;"


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
        return (f"<p>{_esc(DOT_MISSING_HINT)}: the picture is not drawn; its DOT source "
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
