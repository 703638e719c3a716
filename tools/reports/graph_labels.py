"""What the graph pictures (:mod:`optc.tools.reports.graph`) say about nodes: where a node sits in
the transformer structure, which nodes are drawn, their HTML-like Graphviz labels (op, widths,
heads and head ids, parameter counts, sparsity and precision notes), layer captions and
colours."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from optc.ir.analysis import Layer, Structure
from optc.ir.attributes import Quantization, Sparsity
from optc.ir.core import Module, Node, Value
from optc.ir.ops import get_op, ops_with

__all__ = ["Place", "node_places", "esc", "short_op", "aten_name", "is_drawn", "param_notes",
           "node_params", "param_count", "linear_width", "attention_text", "role_title",
           "op_lines", "html_label", "head_cells", "layer_caption", "fill_color",
           "COMPUTE_ATEN", "GREY", "REMOVED_FILL", "CHANGED", "FILL"]

COMPUTE_ATEN = ("matmul", "bmm", "mm", "addmm", "baddbmm", "softmax", "_softmax",
                "scaled_dot_product_attention", "conv1d", "conv2d", "convolution", "einsum",
                "linear", "layer_norm", "native_layer_norm", "gelu", "relu", "silu", "tanh",
                "embedding")
"""ATen ops that do real work: drawn as nodes when they were not raised (glue is collapsed)."""

GREY, REMOVED_FILL, CHANGED = "#9a9a9a", "#eeeeee", "#d35400"
FILL = {"attention": "#dbe9f6", "projection": "#fdf2d0", "norm": "#e4f1e1",
        "embedding": "#efe1f3", "activation": "#f6e0e0"}
"""Fill colour of a raised op by its first trait found here (:attr:`OpDef.traits`)."""


@dataclass
class Place:
    """Where a node sits in the transformer structure."""

    layer: Layer
    role: str
    """q, k, v, attention, out, norm, up, act, down."""


def node_places(structure: Structure) -> dict[int, Place]:
    """Node id -> its :class:`Place`, for the projections, attention and norms of each layer."""
    places: dict[int, Place] = {}
    for layer in structure.layers:
        att, ffn = layer.attention, layer.ffn
        if att:
            for role, node in (("q", att.query), ("k", att.key), ("v", att.value),
                               ("attention", att.node), ("out", att.output)):
                if node is not None:
                    places[id(node)] = Place(layer, role)
            for norm in att.norms:
                places[id(norm)] = Place(layer, "norm")
        if ffn:
            for role, node in (("up", ffn.up), ("act", ffn.activation), ("down", ffn.down)):
                places[id(node)] = Place(layer, role)
            for norm in ffn.norms:
                places[id(norm)] = Place(layer, "norm")
    return places


def esc(text: Any) -> str:
    """``text`` escaped for a Graphviz HTML-like label."""
    return html.escape(str(text), quote=True)


def short_op(op: str) -> str:
    """``aten.matmul.default`` -> ``matmul``."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else op


def aten_name(op: str) -> str | None:
    """``aten.matmul.default`` -> ``matmul``; None for an op that is not ATen."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else None


def is_drawn(node: Node) -> bool:
    """High-level ops and unraised compute are nodes of the overview; the rest is glue."""
    return get_op(node.op) is not None or aten_name(node.op) in COMPUTE_ATEN


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


def node_params(node: Node) -> list[Any]:
    """The parameters among ``node``'s inputs."""
    return [v for v in node.inputs if v.is_param]


def param_count(node: Node) -> int:
    """Elements of ``node``'s parameters."""
    return sum(p.data.numel() for p in node_params(node))


def linear_width(node: Node) -> tuple[int, int] | None:
    """(in, out) features of a linear's weight."""
    w = node.arg(1)
    if isinstance(w, Value) and w.is_param and len(w.tensor_type.shape) == 2:
        out, inp = w.tensor_type.shape
        return int(inp), int(out)
    return None


def attention_text(node: Node) -> list[str]:
    """Label lines of an attention node: heads x head size, hard attention, causal."""
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    lines = [f"{heads} heads &#215; {dim}"]
    if node.attr("kind") == "topk":
        lines.append(f"hard attention, top-{node.attr('topk')}")
    if node.attr("causal"):
        lines.append("causal")
    return lines


def role_title(place: Place | None, node: Node) -> str:
    """A node's title: its op, with its role in the layer (``linear (query)``) when known."""
    names = {"q": "query", "k": "key", "v": "value", "out": "output proj", "up": "FFN up",
             "down": "FFN down"}
    op = short_op(node.op)
    if place is not None and place.role in names:
        return f"{op} ({names[place.role]})"
    return op


def op_lines(node: Node, place: Place | None) -> list[str]:
    """Label lines (HTML-escaped) of a drawn node in the overview."""
    lines: list[str] = []
    if node.op == "attention":
        lines += attention_text(node)
        ids = node.attr("head_ids")
        lines.append(f"head ids {ids}" if ids is not None else f"head ids 0-{node.attr('num_heads') - 1}")
    elif node.op == "linear":
        w = linear_width(node)
        if w:
            lines.append(f"{w[0]} &#8594; {w[1]}" + (" (FFN width)" if place and place.role == "up" else ""))
    elif node.op == "embedding":
        w = node.arg(1)
        if isinstance(w, Value):
            lines.append(" &#215; ".join(str(s) for s in w.tensor_type.shape))
    elif node.op in ops_with("norm") and node.outputs:
        shape = node.outputs[0].tensor_type.shape
        lines.append(str(shape[-1]) if shape else "")
    n = param_count(node)
    if n:
        lines.append(f"{n:,} params")
    for p in node_params(node):
        lines += [esc(x) for x in param_notes(p)]
    return [x for x in lines if x]


def html_label(title: str, lines: list[str], color: str = "black", strike: bool = False,
               extra_rows: str = "") -> str:
    """A Graphviz HTML-like table label: the title in bold, then the (escaped) ``lines``
    small; ``strike`` strikes them all, ``extra_rows`` (table rows) are appended."""
    s0, s1 = ("<S>", "</S>") if strike else ("", "")
    rows = [f'<TR><TD><FONT COLOR="{color}"><B>{s0}{esc(title)}{s1}</B></FONT></TD></TR>']
    rows += [f'<TR><TD><FONT POINT-SIZE="10" COLOR="{color}">{s0}{line}{s1}</FONT></TD></TR>'
             for line in lines]
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
            + "".join(rows) + extra_rows + "</TABLE>>")


def head_cells(layer_id: int, before: list[int], after: list[int] | None) -> str:
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
            row.append(f'<TD BORDER="1" COLOR="{GREY}" BGCOLOR="{REMOVED_FILL}" '
                       f'HREF="#removed-head-{layer_id}-{h}" TOOLTIP="removed head {layer_id}:{h}"><FONT POINT-SIZE="9" '
                       f'COLOR="{CHANGED}"><S>{h}</S></FONT></TD>')
        if len(row) == 16 or i == len(before) - 1:
            cells.append("<TR><TD><TABLE BORDER=\"0\" CELLSPACING=\"1\"><TR>" + "".join(row)
                         + "</TR></TABLE></TD></TR>")
            row = []
    return "".join(cells)


def layer_caption(layer: Layer, module: Module) -> str:
    """A layer cluster's label: position (and stable id), heads, FFN width, parameters."""
    att, ffn = layer.attention, layer.ffn
    parts = [f"heads {att.num_heads}&#215;{att.head_dim}" if att else "no attention",
             f"FFN {ffn.width}" if ffn else "no FFN"]
    params = sum(module.params[n].data.numel() for n in layer.param_names())
    head = f"layer {layer.index}" + ("" if layer.id == layer.index else f" (id {layer.id})")
    return f"<<B>{head}</B><BR/><FONT POINT-SIZE=\"10\">{' &#183; '.join(parts)} &#183; {params:,} params</FONT>>"


def fill_color(node: Node) -> str:
    """A node's fill colour by its op's traits (unraised ATen compute grey)."""
    opdef = get_op(node.op)
    traits = opdef.traits if opdef is not None else frozenset()
    return next((color for trait, color in FILL.items() if trait in traits),
                "#f0f0f0" if aten_name(node.op) else "#ffffff")
