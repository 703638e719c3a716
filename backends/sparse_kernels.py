"""Sparse-kernel annotations for ONNX models, and optional ``sparse_initializer`` storage.

ONNX has no standard way to say that a dense initializer is sparse in a pattern a kernel could
exploit. optc writes one JSON document into the model's ``metadata_props`` under the key
``optc.sparsity`` (ONNX Runtime reads and ignores it, so the model runs unchanged):

    {"version": 1,
     "initializers": [
       {"name": "val_7",                 # the initializer (or sparse_initializer) name
        "shape": [384, 1152],            # as stored in the ONNX file
        "transposed": true,              # stored as [in, out], the IR weight transposed
        "storage": "dense",              # or "sparse_initializer" (values + flat indices)
        "density": 0.1,                  # measured nonzero fraction of the whole tensor
        "parts": [                       # IR weights it holds, as row ranges of the
          {"param": "encoder.layer.0.attention.self.query.weight",  # [out, in] view:
           "rows": [0, 384],             #   stored.T[rows[0]:rows[1]] when transposed
           "pattern": "n:m", "density": 0.5, "n": 2, "m": 4, "block": null,
           "group_axis": 0,              # n:m groups run along this axis of the stored tensor
           "block_in_storage": null}]}]} # block shape in the stored orientation

A tensor stored transposed ([in, out], what MatMul and DynamicQuantizeMatMul read) has its
N:M groups along axis 0 and its ``RxC`` blocks as ``CxR``. Initializers are matched to IR
weights by content (as stored, transposed, or several weights packed along the output
dimension, as the fused attention's q/k/v weight), so the convention survives the exporter's
renaming and constant folding. :func:`read_annotations` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from optc.ir.attributes import Sparsity
from optc.ir.core import Module

__all__ = ["ANNOTATION_KEY", "annotate_sparsity", "read_annotations", "format_annotations"]

ANNOTATION_KEY = "optc.sparsity"
"""``metadata_props`` key of the annotation document."""


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def _sparse_params(module: Module) -> dict[tuple[int, str], list[tuple[str, Sparsity, np.ndarray]]]:
    """Sparse 2-D weights by (rows, digest of their [out, in] bytes)."""
    table: dict[tuple[int, str], list[tuple[str, Sparsity, np.ndarray]]] = {}
    for name, p in module.params.items():
        attr = p.attrs.get("sparsity")
        if isinstance(attr, Sparsity) and p.data.dim() == 2 and not p.data.is_meta:
            arr = p.data.detach().cpu().numpy()
            table.setdefault((arr.shape[0], _digest(arr)), []).append((name, attr, arr))
    return table


def _split(rows_view: np.ndarray, table: dict, heights: list[int]) -> list[tuple[int, int, str, Sparsity]] | None:
    """Cover ``rows_view`` (an [out, in] view) by consecutive sparse IR weights, or None."""
    parts, start = [], 0
    while start < rows_view.shape[0]:
        for h in heights:
            chunk = rows_view[start:start + h]
            if chunk.shape[0] != h:
                continue
            hit = next((e for e in table.get((h, _digest(chunk)), []) if e[2].dtype == chunk.dtype
                        and e[2].shape == chunk.shape), None)
            if hit is not None:
                parts.append((start, start + h, hit[0], hit[1]))
                start += h
                break
        else:
            return None
    return parts


def _part(start: int, end: int, name: str, attr: Sparsity, transposed: bool) -> dict[str, Any]:
    block = list(attr.block) if attr.block else None
    return {"param": name, "rows": [start, end], "pattern": attr.pattern, "density": attr.density,
            "n": attr.n, "m": attr.m, "block": block,
            "group_axis": (0 if transposed else 1) if attr.pattern == "n:m" else None,
            "block_in_storage": (block[::-1] if transposed else block) if block else None}


def annotate_sparsity(model: Any, module: Module, sparse_initializers: bool = False) -> int:
    """Add the ``optc.sparsity`` annotation to ``model`` (an ``onnx.ModelProto``) for every
    initializer holding sparse IR weights; with ``sparse_initializers``, also move those
    initializers to ``graph.sparse_initializer`` when that is smaller. Returns how many
    initializers were annotated."""
    from onnx import numpy_helper

    table = _sparse_params(module)
    if not table:
        return 0
    heights = sorted({h for h, _ in table}, reverse=True)
    entries, keep, moved = [], [], []
    for init in model.graph.initializer:
        if len(init.dims) != 2:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        found = None
        for transposed, view in ((False, arr), (True, arr.T)):
            parts = _split(view, table, heights)
            if parts:
                found = (transposed, parts)
                break
        if found is None:
            keep.append(init)
            continue
        transposed, parts = found
        nonzero = int(np.count_nonzero(arr))
        entry = {"name": init.name, "shape": list(arr.shape), "transposed": transposed,
                 "storage": "dense", "density": round(nonzero / arr.size, 6),
                 "parts": [_part(*p, transposed) for p in parts]}
        sparse_bytes = nonzero * (arr.itemsize + 8)
        if sparse_initializers and sparse_bytes < arr.nbytes:
            flat = arr.reshape(-1)
            idx = np.flatnonzero(flat).astype(np.int64)
            values = numpy_helper.from_array(flat[idx], init.name)
            indices = numpy_helper.from_array(idx, init.name + "_indices")
            sparse = model.graph.sparse_initializer.add()
            sparse.values.CopyFrom(values)
            sparse.indices.CopyFrom(indices)
            sparse.dims.extend(arr.shape)
            entry["storage"] = "sparse_initializer"
            moved.append(init.name)
        else:
            keep.append(init)
        entries.append(entry)
    if moved:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    if entries:
        prop = model.metadata_props.add()
        prop.key, prop.value = ANNOTATION_KEY, json.dumps({"version": 1, "initializers": entries})
    return len(entries)


def read_annotations(model: Any) -> dict[str, Any] | None:
    """The ``optc.sparsity`` document of an ``onnx.ModelProto``, or None without one."""
    for prop in model.metadata_props:
        if prop.key == ANNOTATION_KEY:
            return json.loads(prop.value)
    return None


def format_annotations(doc: dict[str, Any] | None) -> str:
    """The annotations as a table: one row per IR weight."""
    if not doc:
        return "sparsity   (no optc.sparsity annotation: no sparse weights)\n"
    rows = [("initializer", "weight", "pattern", "density", "storage")]
    for e in doc.get("initializers", []):
        for part in e.get("parts", []):
            pattern = part["pattern"]
            if pattern == "n:m":
                pattern = f"{part['n']}:{part['m']} (axis {part['group_axis']})"
            elif pattern == "block":
                pattern = "block " + "x".join(map(str, part["block_in_storage"]))
            rows.append((e["name"], part["param"], pattern, f"{part['density']:.3f}", e["storage"]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows) + "\n"
