"""The charts of ``optc report`` (:mod:`optc.tools.reports.report`), as inline matplotlib SVG: the
per-layer bar charts (heads, FFN width, density, bits per weight), the specialization search's
trials and the operating points of its tolerance contract."""

from __future__ import annotations

import io
from typing import Any

import matplotlib
from matplotlib.figure import Figure

__all__ = ["layer_charts", "search_plot", "pareto_plot"]

_BLUE, _GREY, _ORANGE = "#4a78a8", "#b8b8b8", "#d35400"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "optc"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.find("<svg"):]


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
