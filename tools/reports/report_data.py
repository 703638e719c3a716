"""The data of ``optc report`` (:mod:`optc.tools.reports.report`): everything the page shows, as
JSON-able data built from :func:`optc.tools.reports.inspection.summarize` of the model and its
baseline (sizes on disk, architecture family, warnings), and the per-layer rows of the layer table
and charts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from optc.ir.core import Module
from optc.tools.reports.inspection import summarize
from optc.train.heads import selection_warning

__all__ = ["build_report", "layer_rows", "family", "disk_size", "summarize_cached"]


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
