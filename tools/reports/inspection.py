"""Inspection of IR modules: per-layer shapes, parameters and FLOPs, as text or JSON."""

from __future__ import annotations

from typing import Any

from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import Layer, analyze, module_flops, node_cost
from optc.ir.attributes import Attribute, Sparsity
from optc.ir.core import Module
from optc.ir.ids import format_ids
from optc.ir.ops import get_op
from optc.ir.types import dtype_name

__all__ = ["summarize", "format_summary", "diff_modules", "format_diff", "weight_facts",
           "summarize_onnx", "format_onnx_summary", "nonzero_flops"]


def summarize(module: Module, seq: int = 128) -> dict[str, Any]:
    """Facts about ``module``: source, totals, and one entry per transformer layer.

    FLOPs are estimated for batch 1 at sequence length ``seq`` (linears and attention).
    """
    dims = {"batch": 1, "seq": seq}
    structure = analyze(module)
    raising = raising_report(module)
    missed = any("not raised to attention" in m for m in raising["misses"])
    layers, facts = [], []
    for layer in structure.layers:
        att, ffn = layer.attention, layer.ffn
        layers.append({
            "layer": layer.index,
            "id": layer.id,
            "heads": att.num_heads if att else 0,
            "attention_raised": att is not None or not missed,
            "head_dim": att.head_dim if att else None,
            "head_ids": att.head_ids if att else [],
            "ffn": ffn.width if ffn else 0,
            "params": sum(module.params[n].data.numel() for n in layer.param_names()),
            "flops": _layer_flops(layer, dims),
            **_linear_weights(module, layer),
        })
        facts.append({
            "layer": layer.index,
            "id": layer.id,
            "attention_kind": att.node.attr("kind") or "softmax" if att else None,
            "topk": att.node.attr("topk") if att else None,
            "neuron_ids": format_ids(ffn.neuron_ids) if ffn else "",
            "raised": layer.raised(),
            "weights": weight_facts(module, layer.param_names()),
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
        "nonzero_flops": nonzero_flops(module, seq),
        "parameter_bytes": module.parameter_bytes(),
        "weights": weight_facts(module, list(module.params)),
        "pass_stats": module.meta.get("pass_stats", []),
        "specialization": module.meta.get("specialization"),
        "layers": layers,
        "layer_facts": facts,
        "raising": raising,
    }


def nonzero_flops(module: Module, seq: int = 128) -> int:
    """FLOPs (batch 1 at ``seq``) with each ``linear`` scaled by the density its weight
    declares (a ``Sparsity`` attribute): the work a sparse kernel would do."""
    dims = {"batch": 1, "seq": seq}
    total = 0.0
    for node in module.graph:
        flops = node_cost(node, dims)["flops"]
        weight = node.arg(1) if node.op == "linear" else None
        if getattr(weight, "is_param", False):
            flops *= min((a.density for a in weight.attrs.values() if isinstance(a, Sparsity)),
                         default=1.0)
        total += flops
    return int(total)


def weight_facts(module: Module, names: list[str]) -> dict[str, Any]:
    """Sparsity and precision of parameters ``names``: element and nonzero counts, elements
    by dtype, and the typed attributes (``sparsity``/``quantization``) each one declares."""
    elements = nonzero = 0
    dtypes: dict[str, int] = {}
    declared = []
    for name in names:
        param = module.params[name]
        data = param.data
        elements += data.numel()
        nonzero += int((data != 0).sum()) if not data.is_meta else data.numel()
        dtype = str(data.dtype).replace("torch.", "")
        dtypes[dtype] = dtypes.get(dtype, 0) + data.numel()
        for key, attr in param.attrs.items():
            if isinstance(attr, Attribute):
                declared.append({"param": name, "attr": key, "kind": attr.kind, **attr.fields()})
    return {"elements": elements, "nonzero": nonzero,
            "density": nonzero / elements if elements else 1.0,
            "dtypes": dict(sorted(dtypes.items())), "attributes": declared}


def raising_report(module: Module) -> dict[str, Any]:
    """High-level ops in the module by kind, and why the ATen patterns left in it were not
    raised (the raise-ops rules run again on a copy: what they would still miss)."""
    ops: dict[str, int] = {}
    for node in module.graph:
        if get_op(node.op) is not None:
            ops[node.op] = ops.get(node.op, 0) + 1
    return {"ops": dict(sorted(ops.items())),
            "misses": raise_high_level_ops(module.clone()).misses}


def _layer_flops(layer: Layer, dims: dict[str, int]) -> int:
    att, ffn = layer.attention, layer.ffn
    nodes = [att.node, att.query, att.key, att.value, att.output] if att else []
    nodes += [ffn.up, ffn.gated, ffn.activation, ffn.down] if ffn else []
    return sum(node_cost(n, dims)["flops"] for n in nodes if n is not None)


def _linear_weights(module: Module, layer: Layer) -> dict[str, Any]:
    """Density (nonzero fraction) and precision (dtypes) of a layer's projection weights."""
    att, ffn = layer.attention, layer.ffn
    nodes = [att.query, att.key, att.value, att.output] if att else []
    nodes += [ffn.up, ffn.gated, ffn.down] if ffn else []
    weights = {n.args[1].name: n.args[1].data for n in nodes
               if n is not None and getattr(n.args[1], "is_param", False)}
    total = sum(w.numel() for w in weights.values())
    nonzero = sum(int((w != 0).sum()) for w in weights.values() if not w.is_meta)
    kinds = sorted({dtype_name(w.dtype) for w in weights.values()})
    return {"density": nonzero / total if total else 1.0, "precision": "+".join(kinds) or "-"}


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
        f"raised     {', '.join(f'{k} {v}' for k, v in info['raising']['ops'].items()) or '(nothing)'}",
    ]
    for i, fact in enumerate(info.get("layer_facts") or []):  # what each layer was raised to
        lines.append(f"{'blocks' if i == 0 else '':<10} {fact['layer']}: {fact.get('raised', '')}")
    misses = info["raising"]["misses"]
    if misses:
        lines.append(f"not raised {len(misses)} pattern(s); structural passes do not see them:")
        lines += [f"  - {m}" for m in misses[:10]]
        if len(misses) > 10:
            lines.append(f"  ... {len(misses) - 10} more (--json lists all)")
    lines.append("")
    rows = [("layer", "heads", "head_dim", "ffn", "params", f"GFLOPs@{info['seq']}", "density",
             "precision")]
    for layer in info["layers"]:
        rows.append((
            str(layer["layer"]) + ("" if layer["id"] == layer["layer"] else f" (id {layer['id']})"),
            str(layer["heads"]) if layer.get("attention_raised", True) else "?",
            "-" if layer["head_dim"] is None else str(layer["head_dim"]),
            str(layer["ffn"]),
            _fmt_int(layer["params"]),
            f"{layer['flops'] / 1e9:.3f}",
            f"{layer['density']:.3f}",
            layer["precision"],
        ))
    if info["layers"]:
        rows.append((
            "total",
            str(sum(x["heads"] for x in info["layers"]))
            + ("+?" if not all(x.get("attention_raised", True) for x in info["layers"]) else ""),
            "",
            str(sum(x["ffn"] for x in info["layers"])),
            _fmt_int(sum(x["params"] for x in info["layers"])),
            f"{sum(x['flops'] for x in info['layers']) / 1e9:.3f}",
            "", "",
        ))
    else:
        rows.append(("(no transformer layers found)", "", "", "", "", "", "", ""))
    unknown = not all(x.get("attention_raised", True) for x in info["layers"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(widths[i + 1]) for i, c in enumerate(r[1:])]
        lines.append("  ".join(cells).rstrip())
    if unknown:
        lines.append("heads ?: attention that was not raised (listed above), not pruned heads")
    return "\n".join(lines) + "\n"


def _layer_keys(module: Module) -> list[set[str]]:
    return [set(layer.param_names()) for layer in analyze(module).layers]


def _has_ids(module: Module) -> bool:
    return any(n.attr("layer") is not None for n in module.graph if n.op in ("attention", "linear"))


def _match_layers(a: Module, b: Module) -> dict[int, int]:
    """Position in ``a`` -> position in ``b`` of the same layer: by stable layer id when both
    modules carry ids, else by the parameters they share (pruning keeps parameter names)."""
    if _has_ids(a) and _has_ids(b):
        ids_b = {layer.id: layer.index for layer in analyze(b).layers}
        return {layer.index: ids_b[layer.id] for layer in analyze(a).layers if layer.id in ids_b}
    keys_a, keys_b = _layer_keys(a), _layer_keys(b)
    matched: dict[int, int] = {}
    for j, kb in enumerate(keys_b):
        best, overlap = None, 0
        for i, ka in enumerate(keys_a):
            shared = len(ka & kb)
            if shared > overlap and i not in matched:
                best, overlap = i, shared
        if best is not None:
            matched[best] = j
    return matched


def diff_modules(a: Module, b: Module, seq: int = 128) -> dict[str, Any]:
    """What changed from ``a`` to ``b``: totals, and per layer heads, FFN width, params, FLOPs.

    Layers are matched by their stable ids (or, for modules without ids, by the parameters
    they share), so a dropped layer shows as removed rather than shifting the others.
    """
    sa, sb = summarize(a, seq), summarize(b, seq)
    matched = _match_layers(a, b)
    rows = []
    for i, la in enumerate(sa["layers"]):
        lb = sb["layers"][matched[i]] if i in matched else None
        rows.append({
            "layer": i,
            "id": la["id"],
            "new_index": matched.get(i),
            "heads": [la["heads"], lb["heads"] if lb else 0],
            "ffn": [la["ffn"], lb["ffn"] if lb else 0],
            "params": [la["params"], lb["params"] if lb else 0],
            "flops": [la["flops"], lb["flops"] if lb else 0],
            "density": [la["density"], lb["density"] if lb else 0.0],
            "precision": [la["precision"], lb["precision"] if lb else "-"],
            "heads_removed": sorted(set(la["head_ids"]) - set(lb["head_ids"] if lb else [])),
            "removed": lb is None,
        })
    added = [j for j in range(len(sb["layers"])) if j not in matched.values()]
    return {
        "seq": seq,
        "parameters": [sa["parameters"], sb["parameters"]],
        "flops": [sa["flops"], sb["flops"]],
        "nodes": [sa["nodes"], sb["nodes"]],
        "layers": rows,
        "added_layers": added,
        "pipeline": [sa["pipeline"], sb["pipeline"]],
    }


def _change(pair: list[int], fmt: str = "{:,}") -> str:
    a, b = pair
    if a == b:
        return fmt.format(a)
    pct = f" ({(b - a) / a * 100:+.1f}%)" if a else ""
    return f"{fmt.format(a)} -> {fmt.format(b)}{pct}"


def _same_or_arrow(pair: list[str]) -> str:
    return pair[0] if pair[0] == pair[1] else f"{pair[0]} -> {pair[1]}"


def format_diff(d: dict[str, Any], left: str, right: str) -> str:
    """The diff as text."""
    lines = [
        f"--- {left}",
        f"+++ {right}",
        f"parameters  {_change(d['parameters'])}",
        f"GFLOPs      {_change([x / 1e9 for x in d['flops']], '{:.3f}')}  (batch 1, seq {d['seq']})",
        f"nodes       {_change(d['nodes'])}",
        "",
    ]
    table = [("layer", "heads", "ffn", "params", "GFLOPs", "density", "precision")]
    for r in d["layers"]:
        label = str(r["id"]) + ("" if r["new_index"] in (None, r["id"]) else f" (now {r['new_index']})")
        if r["removed"]:
            table.append((label, f"{r['heads'][0]} -> removed", f"{r['ffn'][0]} -> removed",
                          f"{r['params'][0]:,} -> 0", f"{r['flops'][0] / 1e9:.3f} -> 0", "", ""))
            continue
        table.append((label, _change(r["heads"], "{}"), _change(r["ffn"], "{}"),
                      _change(r["params"]), _change([x / 1e9 for x in r["flops"]], "{:.3f}"),
                      _same_or_arrow([f"{x:.3f}" for x in r["density"]]),
                      _same_or_arrow(r["precision"])))
    for j in d["added_layers"]:
        table.append((f"new {j}", "added", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"


def summarize_onnx(path: str) -> dict[str, Any]:
    """Facts about an ONNX file written by optc: its ops, initializer bytes by dtype, metadata
    and the ``optc.sparsity`` annotations (:mod:`optc.backends.sparse_kernels`)."""
    import onnx

    from optc.backends.sparse_kernels import read_annotations

    model = onnx.load(path)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        ops[key] = ops.get(key, 0) + 1
    dtypes: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        dtypes[name] = dtypes.get(name, 0) + len(init.raw_data)
    return {"ops": dict(sorted(ops.items())), "initializer_bytes": dict(sorted(dtypes.items())),
            "sparse_initializers": len(model.graph.sparse_initializer),
            "metadata": {p.key: p.value for p in model.metadata_props if p.key != "optc.sparsity"},
            "sparsity": read_annotations(model)}


def format_onnx_summary(info: dict[str, Any]) -> str:
    """An ONNX summary as text, with one row per annotated sparse weight."""
    from optc.backends.sparse_kernels import format_annotations

    lines = [f"ops        {', '.join(f'{k} {v}' for k, v in info['ops'].items())}",
             f"weights    {', '.join(f'{k} {v:,} B' for k, v in info['initializer_bytes'].items())}"
             + (f"; {info['sparse_initializers']} sparse_initializer(s)" if info["sparse_initializers"] else ""),
             *(f"{k:<10} {v}" for k, v in info["metadata"].items()), ""]
    return "\n".join(lines) + "\n" + format_annotations(info["sparsity"])
