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

This module builds the pictures; :mod:`optc.tools.reports.graph_labels` holds what they say about
nodes and :mod:`optc.tools.reports.graph_render` renders and writes them (its names are re-exported
here).
"""

from __future__ import annotations

from typing import Any

import graphviz

from optc.errors import PipelineSpecError
from optc.ir.analysis import Layer, Structure, analyze
from optc.ir.core import Module, Node, Value
from optc.ir.ids import ids_or_range
from optc.tools.reports.graph_labels import (
    CHANGED,
    GREY,
    REMOVED_FILL,
    Place,
    attention_text,
    esc,
    fill_color,
    head_cells,
    html_label,
    is_drawn,
    layer_caption,
    linear_width,
    node_params,
    node_places,
    op_lines,
    param_count,
    param_notes,
    role_title,
)
from optc.tools.reports.graph_render import (
    DOT_MISSING_HINT,
    GRAPH_SUFFIXES,
    check_file_output,
    check_graph_output,
    dot_available,
    render,
    to_svg,
    write_file,
)

__all__ = ["overview_dot", "diff_dot", "detail_dot", "render", "to_svg", "dot_available",
           "GRAPH_SUFFIXES", "DOT_MISSING_HINT", "write_file", "check_graph_output",
           "pick_layer", "param_notes", "check_file_output"]


# -- graph building -----------------------------------------------------------------------------
class _Drawing:
    """Nodes and edges of one module's overview, with per-node annotations."""

    def __init__(self, module: Module, prefix: str = "") -> None:
        self.module = module
        self.prefix = prefix
        self.structure = analyze(module)
        self.places = node_places(self.structure)
        self.drawn = [n for n in module.graph if is_drawn(n)]
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
        g.attr(label=esc(title), labelloc="t", fontsize="14")
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
        g.node(d.ids[id(node)], html_label(role_title(None, node), op_lines(node, None)),
               fillcolor=fill_color(node))
    for layer in d.structure.layers:
        with g.subgraph(name=f"cluster_layer{layer.index}") as c:
            c.attr(label=layer_caption(layer, module), style="rounded", color="#4a78a8",
                   fontname="Helvetica")
            for node in by_layer.get(layer.index, []):
                place = d.places[id(node)]
                c.node(d.ids[id(node)], html_label(role_title(place, node), op_lines(node, place)),
                       fillcolor=fill_color(node))
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


def _counterpart(place: Place, other: Layer | None) -> Node | None:
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


def _diff_node(g: Any, nid: str, node: Node, place: Place | None, after: Node | None,
               gone: bool, b: Module) -> None:
    """One node of the diff picture: greyed and struck when gone, changes in orange."""
    title = role_title(place, node)
    if gone:
        extra = ""
        if node.op == "attention" and place is not None:  # every head goes with its block
            extra = head_cells(place.layer.id, ids_or_range(node.attr("head_ids"),
                                                            node.attr("num_heads")), [])
        g.node(nid, html_label(title, op_lines(node, place), color=GREY, strike=True,
                               extra_rows=extra),
               fillcolor=REMOVED_FILL, color=GREY, style="rounded,filled,dashed")
        return
    lines = op_lines(after if after is not None else node, place)
    changed = False
    extra = ""
    if after is not None and node.op == "attention":
        ha, hb = node.attr("num_heads"), after.attr("num_heads")
        before_ids = ids_or_range(node.attr("head_ids"), ha)
        after_ids = ids_or_range(after.attr("head_ids"), hb)
        hard = (node.attr("kind"), node.attr("topk")) != (after.attr("kind"), after.attr("topk"))
        lines = [f'<FONT COLOR="{CHANGED}">heads {ha} &#8594; {hb}</FONT>' if ha != hb
                 else f"{ha} heads"]
        lines += [f'<FONT COLOR="{CHANGED}">{x}</FONT>' if hard and x.startswith("hard") else x
                  for x in attention_text(after) if "heads" not in x]
        changed = ha != hb or before_ids != after_ids or hard
        layer_id = place.layer.id if place else 0
        extra = head_cells(layer_id, before_ids, after_ids)
    elif after is not None and node.op == "linear":
        wa, wb = linear_width(node), linear_width(after)
        lines = []
        if wa and wb and wa != wb:
            changed = True
            for k, label in ((0, "in"), (1, "out")):
                if wa[k] != wb[k]:
                    lines.append(f'<FONT COLOR="{CHANGED}">{label} {_change(wa[k], wb[k])}</FONT>')
        elif wb:
            lines.append(f"{wb[0]} &#8594; {wb[1]}")
        na, nb = param_count(node), param_count(after)
        lines.append(f'<FONT COLOR="{CHANGED}">{_change(na, nb)} params</FONT>' if na != nb
                     else f"{nb:,} params")
        notes_a = [x for p in node_params(node) for x in param_notes(p)]
        for p in node_params(after):
            for note in param_notes(p):
                new = note not in notes_a
                changed |= new
                lines.append(f'<FONT COLOR="{CHANGED}">{esc(note)}{" (new)" if new else ""}</FONT>'
                             if new else esc(note))
    g.node(nid, html_label(title, lines, extra_rows=extra), fillcolor=fill_color(node),
           color=CHANGED if changed else "#555555", penwidth="2" if changed else "1")


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
        names = [p.name for p in node_params(node)]
        after = _by_params(b, names) if names else None
        gone = bool(names) and after is None
        _diff_node(g, d.ids[id(node)], node, None, after, gone, b)
    for layer in d.structure.layers:
        other = matched.get(layer.index)
        with g.subgraph(name=f"cluster_layer{layer.index}") as c:
            if other is None:
                c.attr(label=f"<<S><B>layer {layer.id}</B></S> <FONT COLOR=\"{CHANGED}\">removed</FONT>>",
                       style="rounded,filled,dashed", color=GREY, fillcolor="#f7f7f7",
                       fontcolor=GREY, fontname="Helvetica")
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
                    block_gone = not any(p.name in b.params for p in node_params(node))
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
            parts.append(f'<FONT COLOR="{CHANGED}">{what} block removed</FONT>')
        else:
            parts.append(f'<FONT COLOR="{CHANGED}">{what} {x} &#8594; {y}</FONT>')
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
    places = node_places(analyze(module))
    with g.subgraph(name=f"cluster_{prefix}") as c:
        c.attr(label=label, style="rounded", color="#4a78a8", fontname="Helvetica")
        external: dict[str, Value] = {}
        for i, node in enumerate(nodes):
            nid = f"{prefix}{i}"
            lines = [esc(f"%{o.name} : {o.type}") for o in node.outputs]
            kw = {k: v for k, v in node.kwargs.items() if not isinstance(v, Value)}
            if kw:
                lines.append(esc(", ".join(f"{k}={v}" for k, v in kw.items()))[:120])
            place = places.get(id(node))
            c.node(nid, html_label(role_title(place, node), lines), fillcolor=fill_color(node))
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
                notes = [esc(x) for x in param_notes(value)]
                g.node(key, html_label(f"@{value.name}", [esc(value.type)] + notes),
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
        _detail_cluster(g, module, la, "d", f"<<B>{esc(head)}</B>>")
        return g.source
    matched = _match(analyze(module), analyze(other), _has_ids(module) and _has_ids(other))
    _detail_cluster(g, module, la, "a", f"<<B>{esc(names[0])}: {esc(head)}</B>>")
    lb = matched.get(la.index)
    if lb is None:
        g.node("b_removed", f"{names[1]}: layer {la.id} removed", shape="box",
               style="dashed", color=GREY, fontcolor=CHANGED)
    else:
        now = f"layer {lb.index}" + ("" if lb.id == lb.index else f" (id {lb.id})")
        _detail_cluster(g, other, lb, "b", f"<<B>{esc(names[1])}: {esc(now)}</B>>")
    return g.source
