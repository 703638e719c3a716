"""Graph pictures of IR modules: Graphviz DOT at the level of the raised ops, and rendering.

Three pictures, all built from the IR and its structure analysis (never from parameter names):

- :func:`overview_dot`: every high-level op (embedding, linear, attention, layer_norm,
  activations) and the ATen ops that compute (matmul, softmax, ... left unraised), each
  transformer layer a cluster; ATen glue (views, adds, masks) is collapsed into the edges
  (dashed where an edge passes through glue); attention masks are not drawn. Nodes say what matters: heads x head_dim and the
  stable head ids, FFN width, parameter count, sparsity pattern and density, int8, hard
  attention with its k.
- :func:`diff_dot`: the first module drawn with what the second removed or changed marked in
  place: removed layers and blocks greyed, removed heads struck out one by one, changed widths
  in orange ("1536 -> 681").
- :func:`detail_dot`: the full graph of one layer (every ATen op, parameters with their types
  and attributes); with two modules, the layer before and after side by side.

:func:`render` writes ``.dot``, ``.svg`` or ``.png`` through the ``dot`` program; without it the
``.dot`` source is written instead and a one-line note says how to get Graphviz.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz

from optc.errors import BackendError, OutputError, PipelineSpecError
from optc.ir.analysis import Layer, Structure, analyze
from optc.ir.attributes import Quantization, Sparsity
from optc.ir.core import Module, Node, Value
from optc.ir.ids import ids_or_range
from optc.ir.ops import get_op

__all__ = ["overview_dot", "diff_dot", "detail_dot", "render", "to_svg", "dot_available",
           "GRAPH_SUFFIXES", "DOT_MISSING_HINT", "write_file", "check_graph_output",
           "pick_layer", "param_notes", "check_file_output"]

GRAPH_SUFFIXES = (".svg", ".png", ".dot")
"""What ``--graph`` writes, chosen by the output's suffix."""

DOT_MISSING_HINT = ("Graphviz 'dot' not found (install it: apt-get install graphviz, "
                    "brew install graphviz or conda install graphviz)")

_COMPUTE_ATEN = ("matmul", "bmm", "mm", "addmm", "baddbmm", "softmax", "_softmax",
                 "scaled_dot_product_attention", "conv1d", "conv2d", "convolution", "einsum",
                 "linear", "layer_norm", "native_layer_norm", "gelu", "relu", "silu", "tanh",
                 "embedding")
"""ATen ops that do real work: drawn as nodes when they were not raised (glue is collapsed)."""

_GREY, _REMOVED_FILL, _CHANGED = "#9a9a9a", "#eeeeee", "#d35400"
_FILL = {"attention": "#dbe9f6", "linear": "#fdf2d0", "layer_norm": "#e4f1e1",
         "embedding": "#efe1f3", "gelu": "#f6e0e0", "relu": "#f6e0e0", "silu": "#f6e0e0",
         "tanh": "#f6e0e0"}


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` program is on the PATH."""
    return shutil.which("dot") is not None


# -- what to say about nodes ------------------------------------------------------------------
@dataclass
class _Place:
    """Where a node sits in the transformer structure."""

    layer: Layer
    role: str
    """q, k, v, attention, out, norm, up, act, down."""


def _places(structure: Structure) -> dict[int, _Place]:
    places: dict[int, _Place] = {}
    for layer in structure.layers:
        att, ffn = layer.attention, layer.ffn
        if att:
            for role, node in (("q", att.query), ("k", att.key), ("v", att.value),
                               ("attention", att.node), ("out", att.output)):
                if node is not None:
                    places[id(node)] = _Place(layer, role)
            for norm in att.norms:
                places[id(norm)] = _Place(layer, "norm")
        if ffn:
            for role, node in (("up", ffn.up), ("act", ffn.activation), ("down", ffn.down)):
                places[id(node)] = _Place(layer, role)
            for norm in ffn.norms:
                places[id(norm)] = _Place(layer, "norm")
    return places


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short_op(op: str) -> str:
    """``aten.matmul.default`` -> ``matmul``."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else op


def _aten_name(op: str) -> str | None:
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else None


def _drawn(node: Node) -> bool:
    """High-level ops and unraised compute are nodes of the overview; the rest is glue."""
    return get_op(node.op) is not None or _aten_name(node.op) in _COMPUTE_ATEN


def param_notes(param: Any) -> list[str]:
    """Sparsity and precision of a parameter, as short phrases (``2:4 sparse, density 0.50``)."""
    notes = []
    for attr in getattr(param, "attrs", {}).values():
        if isinstance(attr, Sparsity):
            pattern = {"n:m": f"{attr.n}:{attr.m}",
                       "block": f"block {attr.block[0]}x{attr.block[1]}" if attr.block else "block"
                       }.get(attr.pattern, attr.pattern)
            notes.append(f"{pattern} sparse, density {attr.density:.2f}")
        elif isinstance(attr, Quantization):
            notes.append(f"int{attr.bits} {attr.scheme}" + ("" if attr.axis is None else " per-channel"))
    data = getattr(param, "data", None)
    dtype = str(data.dtype).replace("torch.", "") if data is not None else ""
    if dtype in ("int8", "uint8") and not any(n.startswith("int") for n in notes):
        notes.append(dtype)
    return notes


def _node_params(node: Node) -> list[Any]:
    return [v for v in node.inputs if v.is_param]


def _numel(node: Node) -> int:
    return sum(p.data.numel() for p in _node_params(node))


def _width(node: Node) -> tuple[int, int] | None:
    """(in, out) features of a linear's weight."""
    w = node.arg(1)
    if isinstance(w, Value) and w.is_param and len(w.tensor_type.shape) == 2:
        out, inp = w.tensor_type.shape
        return int(inp), int(out)
    return None


def _attention_text(node: Node) -> list[str]:
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    lines = [f"{heads} heads &#215; {dim}"]
    if node.attr("kind") == "topk":
        lines.append(f"hard attention, top-{node.attr('topk')}")
    if node.attr("causal"):
        lines.append("causal")
    return lines


def _role_title(place: _Place | None, node: Node) -> str:
    names = {"q": "query", "k": "key", "v": "value", "out": "output proj", "up": "FFN up",
             "down": "FFN down"}
    op = _short_op(node.op)
    if place is not None and place.role in names:
        return f"{op} ({names[place.role]})"
    return op


def _op_lines(node: Node, place: _Place | None) -> list[str]:
    """Label lines (HTML-escaped) of a drawn node in the overview."""
    lines: list[str] = []
    if node.op == "attention":
        lines += _attention_text(node)
        ids = node.attr("head_ids")
        lines.append(f"head ids {ids}" if ids is not None else f"head ids 0-{node.attr('num_heads') - 1}")
    elif node.op == "linear":
        w = _width(node)
        if w:
            lines.append(f"{w[0]} &#8594; {w[1]}" + (" (FFN width)" if place and place.role == "up" else ""))
    elif node.op == "embedding":
        w = node.arg(1)
        if isinstance(w, Value):
            lines.append(" &#215; ".join(str(s) for s in w.tensor_type.shape))
    elif node.op == "layer_norm" and node.outputs:
        shape = node.outputs[0].tensor_type.shape
        lines.append(str(shape[-1]) if shape else "")
    n = _numel(node)
    if n:
        lines.append(f"{n:,} params")
    for p in _node_params(node):
        lines += [_esc(x) for x in param_notes(p)]
    return [x for x in lines if x]


def _html_label(title: str, lines: list[str], color: str = "black", strike: bool = False,
                extra_rows: str = "") -> str:
    s0, s1 = ("<S>", "</S>") if strike else ("", "")
    rows = [f'<TR><TD><FONT COLOR="{color}"><B>{s0}{_esc(title)}{s1}</B></FONT></TD></TR>']
    rows += [f'<TR><TD><FONT POINT-SIZE="10" COLOR="{color}">{s0}{line}{s1}</FONT></TD></TR>'
             for line in lines]
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
            + "".join(rows) + extra_rows + "</TABLE>>")


def _head_cells(layer_id: int, before: list[int], after: list[int] | None) -> str:
    """One cell per head of ``before``; heads missing from ``after`` are struck and greyed,
    each with a ``removed head L:H`` tooltip (tests and readers can find them)."""
    cells, row = [], []
    kept = set(before if after is None else after)
    for i, h in enumerate(before):
        if h in kept:
            row.append(f'<TD BORDER="1" COLOR="#4a78a8" BGCOLOR="#ffffff" HREF="#head-{layer_id}-{h}" '
                       f'TOOLTIP="head {layer_id}:{h}">'
                       f'<FONT POINT-SIZE="9">{h}</FONT></TD>')
        else:
            row.append(f'<TD BORDER="1" COLOR="{_GREY}" BGCOLOR="{_REMOVED_FILL}" '
                       f'HREF="#removed-head-{layer_id}-{h}" TOOLTIP="removed head {layer_id}:{h}"><FONT POINT-SIZE="9" '
                       f'COLOR="{_CHANGED}"><S>{h}</S></FONT></TD>')
        if len(row) == 16 or i == len(before) - 1:
            cells.append("<TR><TD><TABLE BORDER=\"0\" CELLSPACING=\"1\"><TR>" + "".join(row)
                         + "</TR></TABLE></TD></TR>")
            row = []
    return "".join(cells)


# -- graph building -----------------------------------------------------------------------------
class _Drawing:
    """Nodes and edges of one module's overview, with per-node annotations."""

    def __init__(self, module: Module, prefix: str = "") -> None:
        self.module = module
        self.prefix = prefix
        self.structure = analyze(module)
        self.places = _places(self.structure)
        self.drawn = [n for n in module.graph if _drawn(n)]
        self.ids = {id(n): f"{prefix}n{i}" for i, n in enumerate(self.drawn)}
        self._sources: dict[int, tuple[frozenset[str], bool]] = {}

    def sources(self, value: Value) -> tuple[frozenset[str], bool]:
        """The drawn nodes / graph inputs ``value`` comes from, and whether glue is between."""
        key = id(value)
        if key in self._sources:
            return self._sources[key]
        self._sources[key] = (frozenset(), False)  # cycles cannot happen in SSA; be safe
        producer = value.producer
        if value.is_param:
            result: tuple[frozenset[str], bool] = (frozenset(), False)
        elif producer is None:
            result = (frozenset({f"{self.prefix}in_{value.name}"}), False)
        elif id(producer) in self.ids:
            result = (frozenset({self.ids[id(producer)]}), False)
        else:
            found: set[str] = set()
            for v in producer.inputs:
                found |= self.sources(v)[0]
            result = (frozenset(found), True)
        self._sources[key] = result
        return result

    def edges(self) -> list[tuple[str, str, dict[str, str]]]:
        out = []
        for node in self.drawn:
            for pos, value in enumerate(node.args):
                if not isinstance(value, Value):
                    continue
                if node.op == "attention" and pos == 3:
                    continue  # the mask: one long edge into every layer would hide the rest
                srcs, glue = self.sources(value)
                for s in sorted(srcs):
                    out.append((s, self.ids[id(node)], {"style": "dashed"} if glue else {}))
        for name, value in self.module.graph.outputs.items():
            srcs, glue = self.sources(value)
            for s in sorted(srcs):
                out.append((s, f"{self.prefix}out_{name}", {"style": "dashed"} if glue else {}))
        seen, unique = set(), []
        for e in out:
            key = (e[0], e[1])
            if key not in seen:
                seen.add(key)
                unique.append(e)
        return unique


def _new_graph(title: str | None) -> graphviz.Digraph:
    g = graphviz.Digraph("optc", format="svg")
    g.attr(rankdir="TB", fontname="Helvetica", fontsize="11", newrank="true", nodesep="0.25",
           ranksep="0.3")
    if title:
        g.attr(label=_esc(title), labelloc="t", fontsize="14")
    g.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11",
           fillcolor="#ffffff", color="#555555", margin="0.05,0.02")
    g.attr("edge", color="#555555", arrowsize="0.6")
    return g


def _io_nodes(g: Any, d: _Drawing) -> None:
    used = {e[0] for e in d.edges()}
    for v in d.module.graph.inputs:
        nid = f"{d.prefix}in_{v.name}"
        if nid in used:
            g.node(nid, f"{v.name}\n{v.type}", shape="ellipse", style="filled", fillcolor="#f4f4f4")
    for name, v in d.module.graph.outputs.items():
        g.node(f"{d.prefix}out_{name}", f"{name}\n{v.type}", shape="ellipse", style="filled",
               fillcolor="#f4f4f4")


def _layer_caption(layer: Layer, module: Module) -> str:
    att, ffn = layer.attention, layer.ffn
    parts = [f"heads {att.num_heads}&#215;{att.head_dim}" if att else "no attention",
             f"FFN {ffn.width}" if ffn else "no FFN"]
    params = sum(module.params[n].data.numel() for n in layer.param_names())
    head = f"layer {layer.index}" + ("" if layer.id == layer.index else f" (id {layer.id})")
    return f"<<B>{head}</B><BR/><FONT POINT-SIZE=\"10\">{' &#183; '.join(parts)} &#183; {params:,} params</FONT>>"


def _fill(node: Node) -> str:
    return _FILL.get(node.op, "#f0f0f0" if _aten_name(node.op) else "#ffffff")


def overview_dot(module: Module, title: str | None = None) -> str:
    """DOT source of ``module`` at the level of the raised ops, one cluster per layer."""
    d = _Drawing(module)
    g = _new_graph(title)
    _io_nodes(g, d)
    by_layer: dict[int, list[Node]] = {}
    for node in d.drawn:
        place = d.places.get(id(node))
        if place is not None:
            by_layer.setdefault(place.layer.index, []).append(node)
            continue
        g.node(d.ids[id(node)], _html_label(_role_title(None, node), _op_lines(node, None)),
               fillcolor=_fill(node))
    for layer in d.structure.layers:
        with g.subgraph(name=f"cluster_layer{layer.index}") as c:
            c.attr(label=_layer_caption(layer, module), style="rounded", color="#4a78a8",
                   fontname="Helvetica")
            for node in by_layer.get(layer.index, []):
                place = d.places[id(node)]
                c.node(d.ids[id(node)], _html_label(_role_title(place, node), _op_lines(node, place)),
                       fillcolor=_fill(node))
    for a, b, style in d.edges():
        g.edge(a, b, **style)
    return g.source


# -- diff ---------------------------------------------------------------------------------------
def _match(a: Structure, b: Structure, ids: bool) -> dict[int, Layer]:
    """Layer position in ``a`` -> the same layer in ``b`` (by stable id, else by position of
    the parameters they share)."""
    if ids:
        by_id = {layer.id: layer for layer in b.layers}
        return {layer.index: by_id[layer.id] for layer in a.layers if layer.id in by_id}
    out = {}
    for la in a.layers:
        names = set(la.param_names())
        best = max(b.layers, key=lambda lb: len(names & set(lb.param_names())), default=None)
        if best is not None and names & set(best.param_names()):
            out[la.index] = best
    return out


def _has_ids(module: Module) -> bool:
    return any(n.attr("layer") is not None for n in module.graph if n.op in ("attention", "linear"))


def _counterpart(place: _Place, other: Layer | None) -> Node | None:
    if other is None:
        return None
    att, ffn = other.attention, other.ffn
    table = {"q": att and att.query, "k": att and att.key, "v": att and att.value,
             "attention": att and att.node, "out": att and att.output,
             "up": ffn and ffn.up, "act": ffn and ffn.activation, "down": ffn and ffn.down}
    if place.role == "norm":
        return None
    return table.get(place.role) or None


def _change(a: int, b: int) -> str:
    pct = f" ({(b - a) / a * 100:+.1f}%)" if a else ""
    return f"{a:,} &#8594; {b:,}{pct}"


def _diff_node(g: Any, nid: str, node: Node, place: _Place | None, after: Node | None,
               gone: bool, b: Module) -> None:
    """One node of the diff picture: greyed and struck when gone, changes in orange."""
    title = _role_title(place, node)
    if gone:
        extra = ""
        if node.op == "attention" and place is not None:  # every head goes with its block
            extra = _head_cells(place.layer.id, ids_or_range(node.attr("head_ids"),
                                                             node.attr("num_heads")), [])
        g.node(nid, _html_label(title, _op_lines(node, place), color=_GREY, strike=True,
                                extra_rows=extra),
               fillcolor=_REMOVED_FILL, color=_GREY, style="rounded,filled,dashed")
        return
    lines = _op_lines(after if after is not None else node, place)
    changed = False
    extra = ""
    if after is not None and node.op == "attention":
        ha, hb = node.attr("num_heads"), after.attr("num_heads")
        before_ids = ids_or_range(node.attr("head_ids"), ha)
        after_ids = ids_or_range(after.attr("head_ids"), hb)
        hard = (node.attr("kind"), node.attr("topk")) != (after.attr("kind"), after.attr("topk"))
        lines = [f'<FONT COLOR="{_CHANGED}">heads {ha} &#8594; {hb}</FONT>' if ha != hb
                 else f"{ha} heads"]
        lines += [f'<FONT COLOR="{_CHANGED}">{x}</FONT>' if hard and x.startswith("hard") else x
                  for x in _attention_text(after) if "heads" not in x]
        changed = ha != hb or before_ids != after_ids or hard
        layer_id = place.layer.id if place else 0
        extra = _head_cells(layer_id, before_ids, after_ids)
    elif after is not None and node.op == "linear":
        wa, wb = _width(node), _width(after)
        lines = []
        if wa and wb and wa != wb:
            changed = True
            for k, label in ((0, "in"), (1, "out")):
                if wa[k] != wb[k]:
                    lines.append(f'<FONT COLOR="{_CHANGED}">{label} {_change(wa[k], wb[k])}</FONT>')
        elif wb:
            lines.append(f"{wb[0]} &#8594; {wb[1]}")
        na, nb = _numel(node), _numel(after)
        lines.append(f'<FONT COLOR="{_CHANGED}">{_change(na, nb)} params</FONT>' if na != nb
                     else f"{nb:,} params")
        notes_a = [x for p in _node_params(node) for x in param_notes(p)]
        for p in _node_params(after):
            for note in param_notes(p):
                new = note not in notes_a
                changed |= new
                lines.append(f'<FONT COLOR="{_CHANGED}">{_esc(note)}{" (new)" if new else ""}</FONT>'
                             if new else _esc(note))
    g.node(nid, _html_label(title, lines, extra_rows=extra), fillcolor=_fill(node),
           color=_CHANGED if changed else "#555555", penwidth="2" if changed else "1")


def diff_dot(a: Module, b: Module, title: str | None = None) -> str:
    """DOT source of ``a`` with what ``b`` removed or changed marked in place.

    Layers are matched by stable id (or shared parameters); a layer missing from ``b`` is
    greyed with its label struck, a missing attention or FFN block greyed, each removed head
    struck in the attention node's head row, and changed widths and new sparsity/int8 shown in
    orange. Nodes outside the layers (embeddings, pooler) are matched by their weights' names.
    """
    d = _Drawing(a)
    sb = analyze(b)
    matched = _match(d.structure, sb, _has_ids(a) and _has_ids(b))
    if d.structure.layers and sb.layers and not matched:
        title = (f"{title}: " if title else "") + ("no layer in common (a different model or "
                                                   "architecture?): every layer shows as removed")
    g = _new_graph(title)
    _io_nodes(g, d)
    by_layer: dict[int, list[Node]] = {}
    for node in d.drawn:
        place = d.places.get(id(node))
        if place is not None:
            by_layer.setdefault(place.layer.index, []).append(node)
            continue
        names = [p.name for p in _node_params(node)]
        after = _by_params(b, names) if names else None
        gone = bool(names) and after is None
        _diff_node(g, d.ids[id(node)], node, None, after, gone, b)
    for layer in d.structure.layers:
        other = matched.get(layer.index)
        with g.subgraph(name=f"cluster_layer{layer.index}") as c:
            if other is None:
                c.attr(label=f"<<S><B>layer {layer.id}</B></S> <FONT COLOR=\"{_CHANGED}\">removed</FONT>>",
                       style="rounded,filled,dashed", color=_GREY, fillcolor="#f7f7f7",
                       fontcolor=_GREY, fontname="Helvetica")
            else:
                c.attr(label=_diff_caption(layer, other, a, b), style="rounded", color="#4a78a8",
                       fontname="Helvetica")
            for node in by_layer.get(layer.index, []):
                place = d.places[id(node)]
                after = _counterpart(place, other)
                block_gone = other is None or (
                    place.role in ("q", "k", "v", "attention", "out") and other.attention is None
                ) or (place.role in ("up", "act", "down") and other.ffn is None)
                if place.role == "norm" and other is not None:
                    block_gone = not any(p.name in b.params for p in _node_params(node))
                _diff_node(c, d.ids[id(node)], node, place, after, block_gone, b)
    for x, y, style in d.edges():
        g.edge(x, y, **style)
    return g.source


def _by_params(module: Module, names: list[str]) -> Node | None:
    for node in module.graph:
        if any(v.is_param and v.name in names for v in node.inputs):
            return node
    return None


def _diff_caption(la: Layer, lb: Layer, a: Module, b: Module) -> str:
    parts = []
    for what, x, y in (("heads", la.attention.num_heads if la.attention else 0,
                        lb.attention.num_heads if lb.attention else 0),
                       ("FFN", la.ffn.width if la.ffn else 0, lb.ffn.width if lb.ffn else 0)):
        if x == y:
            parts.append(f"{what} {x}")
        elif y == 0:
            parts.append(f'<FONT COLOR="{_CHANGED}">{what} block removed</FONT>')
        else:
            parts.append(f'<FONT COLOR="{_CHANGED}">{what} {x} &#8594; {y}</FONT>')
    pa = sum(a.params[n].data.numel() for n in la.param_names())
    pb = sum(b.params[n].data.numel() for n in lb.param_names())
    parts.append(f"params {_change(pa, pb)}" if pa != pb else f"{pa:,} params")
    now = "" if lb.index == la.id else f" (now {lb.index})"
    return (f"<<B>layer {la.id}{now}</B><BR/><FONT POINT-SIZE=\"10\">"
            + " &#183; ".join(parts) + "</FONT>>")


# -- detail of one layer ---------------------------------------------------------------------
def _layer_nodes(module: Module, layer: Layer) -> list[Node]:
    """Every node from the layer's first to its last (residual adds and norms included)."""
    mine: list[Node] = []
    for block in (layer.attention, layer.ffn):
        if block is None:
            continue
        mine += list(block.norms) + ([block.residual] if block.residual else [])
    if layer.attention:
        att = layer.attention
        mine += [n for n in (att.query, att.key, att.value, att.node, att.output) if n]
    if layer.ffn:
        mine += [layer.ffn.up, layer.ffn.activation, layer.ffn.down]
    index = {id(n): i for i, n in enumerate(module.graph)}
    lo, hi = min(index[id(n)] for n in mine), max(index[id(n)] for n in mine)
    return module.graph.nodes[lo:hi + 1]


def pick_layer(module: Module, layer: int, what: str = "the model") -> Layer:
    """The layer at position ``layer``; a position the model does not have is a bad option
    value (:class:`PipelineSpecError`, exit 2) that lists the valid positions."""
    structure = analyze(module)
    if not 0 <= layer < len(structure.layers):
        raise PipelineSpecError(f"--detail {layer}: {what} has {structure.describe()}")
    return structure.layers[layer]


def _detail_cluster(g: Any, module: Module, layer: Layer, prefix: str, label: str) -> None:
    nodes = _layer_nodes(module, layer)
    inside = {id(n) for n in nodes}
    places = _places(analyze(module))
    with g.subgraph(name=f"cluster_{prefix}") as c:
        c.attr(label=label, style="rounded", color="#4a78a8", fontname="Helvetica")
        external: dict[str, Value] = {}
        for i, node in enumerate(nodes):
            nid = f"{prefix}{i}"
            lines = [_esc(f"%{o.name} : {o.type}") for o in node.outputs]
            kw = {k: v for k, v in node.kwargs.items() if not isinstance(v, Value)}
            if kw:
                lines.append(_esc(", ".join(f"{k}={v}" for k, v in kw.items()))[:120])
            place = places.get(id(node))
            c.node(nid, _html_label(_role_title(place, node), lines), fillcolor=_fill(node))
        ids = {id(n): f"{prefix}{i}" for i, n in enumerate(nodes)}
        for node in nodes:
            for value in node.inputs:
                if value.producer is not None and id(value.producer) in inside:
                    g.edge(ids[id(value.producer)], ids[id(node)])
                    continue
                key = f"{prefix}x_{len(external)}"
                for k, v in external.items():
                    if v is value:
                        key = k
                        break
                else:
                    external[key] = value
                g.edge(key, ids[id(node)])
        for key, value in external.items():
            if value.is_param:
                notes = [_esc(x) for x in param_notes(value)]
                g.node(key, _html_label(f"@{value.name}", [_esc(value.type)] + notes),
                       shape="note", fillcolor="#fffbea", fontsize="9")
            else:
                g.node(key, f"%{value.name}\n{value.type}", shape="ellipse", style="filled",
                       fillcolor="#f4f4f4")


def detail_dot(module: Module, layer: int, other: Module | None = None,
               title: str | None = None, names: tuple[str, str] = ("before", "after")) -> str:
    """DOT source of the full graph of layer ``layer`` (current position) of ``module``; with
    ``other``, the same layer (matched by stable id) in ``other`` drawn beside it."""
    g = _new_graph(title)
    la = pick_layer(module, layer)
    head = f"layer {la.index}" + ("" if la.id == la.index else f" (id {la.id})")
    if other is None:
        _detail_cluster(g, module, la, "d", f"<<B>{_esc(head)}</B>>")
        return g.source
    matched = _match(analyze(module), analyze(other), _has_ids(module) and _has_ids(other))
    _detail_cluster(g, module, la, "a", f"<<B>{_esc(names[0])}: {_esc(head)}</B>>")
    lb = matched.get(la.index)
    if lb is None:
        g.node("b_removed", f"{names[1]}: layer {la.id} removed", shape="box",
               style="dashed", color=_GREY, fontcolor=_CHANGED)
    else:
        now = f"layer {lb.index}" + ("" if lb.id == lb.index else f" (id {lb.id})")
        _detail_cluster(g, other, lb, "b", f"<<B>{_esc(names[1])}: {_esc(now)}</B>>")
    return g.source


# -- rendering ----------------------------------------------------------------------------------
def to_svg(source: str) -> str | None:
    """The SVG text of a DOT source (without XML prolog, to inline in HTML), or None when
    ``dot`` is not installed."""
    if not dot_available():
        return None
    data = _pipe(source, "svg").decode("utf-8")
    start = data.find("<svg")
    return data[start:] if start >= 0 else data


def _pipe(source: str, fmt: str) -> bytes:
    try:
        return graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise BackendError(DOT_MISSING_HINT) from None
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BackendError(f"Graphviz dot failed: {detail[0] if detail else exc}") from None


def check_file_output(path: str | os.PathLike, force: bool, suffixes: tuple[str, ...],
                      inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output ``path`` optc may not write: an existing one is replaced only with
    ``force`` and only when it is a regular file with one of ``suffixes`` and not an input;
    its directory must exist and be writable."""
    out = Path(path)
    if out.is_symlink() or out.exists():
        if out.is_dir() or out.is_symlink() or out.suffix.lower() not in suffixes:
            raise OutputError(f"'{out}' exists and is not a {'/'.join(suffixes)} file optc "
                              "would replace; choose another name")
        if any(out.resolve() == Path(i).resolve() for i in inputs if Path(i).exists()):
            raise OutputError(f"'{out}' is an input; choose another output name")
        if not force:
            raise OutputError(f"'{out}' exists (use --force to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write '{out}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write '{out}': directory '{parent}' is not writable")
    return out


def write_file(path: Path, data: bytes, force: bool, suffixes: tuple[str, ...],
               inputs: tuple[Path, ...] = ()) -> None:
    """Write ``data`` to ``path`` atomically (a temporary sibling renamed into place), after
    :func:`check_file_output`."""
    parent = check_file_output(path, force, suffixes, inputs).parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{path}': {exc.strerror or exc}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_graph_output(path: str | os.PathLike, force: bool,
                       inputs: tuple[Path, ...] = ()) -> Path:
    """Validate a ``--graph`` output before any slow work (the ``.dot`` file written instead
    when Graphviz is missing); returns it as a Path."""
    out = Path(path)
    if out.suffix.lower() not in GRAPH_SUFFIXES:
        raise PipelineSpecError(f"--graph {path}: the picture's name must end in .svg, .png or .dot")
    written = out if dot_available() else out.with_suffix(".dot")
    check_file_output(written, force, GRAPH_SUFFIXES, inputs)
    return out


def render(source: str, path: str | os.PathLike, force: bool = False,
           inputs: tuple[Path, ...] = ()) -> tuple[Path, str | None]:
    """Write the picture ``path`` (.svg, .png or .dot by suffix).

    Returns the path written and a one-line note when something else was written: without
    Graphviz's ``dot`` an ``.svg``/``.png`` request writes the DOT source to ``path`` with
    suffix ``.dot`` instead.
    """
    out = check_graph_output(path, force, inputs)
    fmt = out.suffix.lower()[1:]
    if fmt == "dot":
        write_file(out, source.encode(), force, GRAPH_SUFFIXES, inputs)
        return out, None
    if not dot_available():
        alt = out.with_suffix(".dot")
        write_file(alt, source.encode(), force, GRAPH_SUFFIXES, inputs)
        return alt, f"{DOT_MISSING_HINT}; wrote the DOT source to {alt} instead of {out}"
    write_file(out, _pipe(source, fmt), force, GRAPH_SUFFIXES, inputs)
    return out, None
