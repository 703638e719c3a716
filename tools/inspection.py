"""Inspection of IR modules: per-layer shapes, parameters and FLOPs, as text or JSON."""

from __future__ import annotations

from typing import Any

from optc.ir.analysis import analyze, attention_flops, linear_flops, module_flops
from optc.ir.core import Module

__all__ = ["summarize", "format_summary"]


def summarize(module: Module, seq: int = 128) -> dict[str, Any]:
    """Facts about ``module``: source, totals, and one entry per transformer layer.

    FLOPs are estimated for batch 1 at sequence length ``seq`` (linears and attention).
    """
    dims = {"batch": 1, "seq": seq}
    structure = analyze(module)
    layers = []
    for layer in structure.layers:
        att, ffn = layer.attention, layer.ffn
        flops = 0
        if att is not None:
            flops += attention_flops(att.node, dims)
            flops += sum(linear_flops(n, dims) for n in (att.query, att.key, att.value, att.output) if n)
        if ffn is not None:
            flops += linear_flops(ffn.up, dims) + linear_flops(ffn.down, dims)
        layers.append({
            "layer": layer.index,
            "heads": att.num_heads if att else 0,
            "head_dim": att.head_dim if att else None,
            "ffn": ffn.width if ffn else 0,
            "params": sum(module.params[n].data.numel() for n in layer.param_names()),
            "flops": flops,
        })
    return {
        "name": module.name,
        "source": module.meta.get("source"),
        "pipeline": module.meta.get("pipeline", []),
        "inputs": {v.name: str(v.type) for v in module.graph.inputs},
        "outputs": {k: str(v.type) for k, v in module.graph.outputs.items()},
        "parameters": module.num_parameters(),
        "nodes": len(module.graph),
        "seq": seq,
        "flops": module_flops(module, seq),
        "layers": layers,
    }


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def format_summary(info: dict[str, Any]) -> str:
    """The summary as a human-readable block with a per-layer table."""
    src = info.get("source") or {}
    lines = [
        f"model      {info['name']}" + (f" from {src.get('model')}" if src.get("model") else ""),
        f"pipeline   {','.join(info['pipeline']) or '(none)'}",
        f"inputs     {', '.join(f'{k}: {v}' for k, v in info['inputs'].items())}",
        f"outputs    {', '.join(f'{k}: {v}' for k, v in info['outputs'].items())}",
        f"params     {_fmt_int(info['parameters'])}  nodes {info['nodes']}",
        f"GFLOPs     {info['flops'] / 1e9:.3f} (batch 1, seq {info['seq']})",
        "",
    ]
    rows = [("layer", "heads", "head_dim", "ffn", "params", f"GFLOPs@{info['seq']}")]
    for layer in info["layers"]:
        rows.append((
            str(layer["layer"]),
            str(layer["heads"]),
            "-" if layer["head_dim"] is None else str(layer["head_dim"]),
            str(layer["ffn"]),
            _fmt_int(layer["params"]),
            f"{layer['flops'] / 1e9:.3f}",
        ))
    if info["layers"]:
        rows.append((
            "total",
            str(sum(x["heads"] for x in info["layers"])),
            "",
            str(sum(x["ffn"] for x in info["layers"])),
            _fmt_int(sum(x["params"] for x in info["layers"])),
            f"{sum(x['flops'] for x in info['layers']) / 1e9:.3f}",
        ))
    else:
        rows.append(("(no transformer layers found)", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in enumerate(r[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
