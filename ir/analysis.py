"""Structure analysis: the transformer layers of a raised module, found from the graph alone.

An attention block is an ``attention`` node with the ``linear`` nodes that produce its query,
key and value and the ``linear`` that consumes its result (the output projection). An FFN block
is ``linear -> activation -> linear`` where the first widens and the second narrows back to the
same width. Each attention block opens a layer; the first FFN block after it (before the next
attention) completes it. Residual adds and layer norms are found through the uses of the blocks'
outputs and inputs. Parameter names are never consulted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optc.ir.core import Module, Node, Value
from optc.ir.ids import format_ids, ids_or_range
from optc.ir.ops import get_op

__all__ = ["AttentionBlock", "FFNBlock", "Layer", "ParamSlice", "Structure", "analyze",
           "assign_layer_ids", "node_cost", "module_flops", "describe_layers"]

_FFN_ACTIVATIONS = ("gelu", "relu", "silu")
_RESIDUAL_ADDS = ("aten.add.Tensor",)


def _producer(value: object, op: str) -> Node | None:
    node = value.producer if isinstance(value, Value) else None
    return node if node is not None and node.op == op else None


def _single_user(value: Value, ops: tuple[str, ...]) -> Node | None:
    users = value.users()
    if len(users) == 1 and users[0].op in ops:
        return users[0]
    return None


def _params_of(node: Node | None) -> list[str]:
    if node is None:
        return []
    return [v.name for v in node.inputs if v.is_param]


@dataclass(frozen=True)
class ParamSlice:
    """Part of a parameter: indices ``index`` along dimension ``dim`` of ``@param``."""

    param: str
    dim: int
    index: tuple[int, ...]


@dataclass
class _Block:
    """What attention and FFN blocks share: their place on the residual stream."""

    residual: Node | None = None
    """The add that puts the block's result back on the residual stream."""
    norms: list[Node] = field(default_factory=list)
    """Layer norms of this block (pre-LN: before the projections; post-LN: after the add)."""
    stream_in: Value | None = None
    """The residual stream entering the block (the add's other operand)."""
    stream_out: Value | None = None
    """The residual stream leaving the block (after the post-LN norm, if any)."""


@dataclass
class AttentionBlock(_Block):
    """One multi-head attention with its projections."""

    node: Node | None = None
    """The ``attention`` node."""
    query: Node | None = None
    """``linear`` producing the query operand (None if it is not a linear)."""
    key: Node | None = None
    value: Node | None = None
    output: Node | None = None
    """``linear`` consuming the attention result (output projection)."""

    @property
    def num_heads(self) -> int:
        return int(self.node.attr("num_heads"))

    @property
    def head_dim(self) -> int:
        return int(self.node.attr("head_dim"))

    @property
    def head_ids(self) -> list[int]:
        """Stable id (index in the captured model) of each head, by current position."""
        return ids_or_range(self.node.attr("head_ids"), self.num_heads)

    @property
    def prunable(self) -> str | None:
        """Why heads cannot be removed from this block, or None when they can."""
        if None in (self.query, self.key, self.value):
            return "query/key/value are not produced by their own linear projections"
        if self.output is None:
            return "the attention result does not feed a single output projection"
        for lin in (self.query, self.key, self.value):
            if len(lin.outputs[0].users()) != 1:
                return f"the projection {lin!r} has other users besides the attention"
        return None

    def head_slices(self, head: int) -> list[ParamSlice]:
        """The coupled parameter slices of one head (q/k/v rows and biases, output columns)."""
        d = self.head_dim
        rows = tuple(range(head * d, (head + 1) * d))
        slices = []
        for lin in (self.query, self.key, self.value):
            slices.append(ParamSlice(lin.args[1].name, 0, rows))
            if isinstance(lin.arg(2), Value):
                slices.append(ParamSlice(lin.arg(2).name, 0, rows))
        slices.append(ParamSlice(self.output.args[1].name, 1, rows))
        return slices

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.query, self.key, self.value, self.output, *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class FFNBlock(_Block):
    """A feed-forward block ``down(act(up(x)))``."""

    up: Node | None = None
    activation: Node | None = None
    down: Node | None = None

    @property
    def width(self) -> int:
        """Number of intermediate neurons (rows of the up projection)."""
        return int(self.up.args[1].tensor_type.shape[0])

    @property
    def neuron_ids(self) -> list[int]:
        """Stable id (index in the captured model) of each neuron, by current position."""
        return ids_or_range(self.up.attr("unit_ids"), self.width)

    def neuron_slices(self, neuron: int) -> list[ParamSlice]:
        """The coupled parameter slices of one neuron (up row and bias, down column)."""
        slices = [ParamSlice(self.up.args[1].name, 0, (neuron,))]
        if isinstance(self.up.arg(2), Value):
            slices.append(ParamSlice(self.up.arg(2).name, 0, (neuron,)))
        slices.append(ParamSlice(self.down.args[1].name, 1, (neuron,)))
        return slices

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.up, self.down, *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class Layer:
    """A transformer layer: an attention block and/or an FFN block."""

    index: int
    """Current position among the module's layers (shifts when layers are removed)."""
    attention: AttentionBlock | None
    ffn: FFNBlock | None

    @property
    def id(self) -> int:
        """Stable id: the layer's index in the captured model (its blocks' ``layer``
        attribute), or its position when the module predates stable ids."""
        for node in (self.attention.node if self.attention else None, self.ffn.up if self.ffn else None):
            if node is not None and node.attr("layer") is not None:
                return int(node.attr("layer"))
        return self.index

    @property
    def stream_in(self) -> Value | None:
        first = self.attention or self.ffn
        return first.stream_in if first else None

    @property
    def stream_out(self) -> Value | None:
        last = self.ffn or self.attention
        return last.stream_out if last else None

    def param_names(self) -> list[str]:
        names = self.attention.param_names() if self.attention else []
        if self.ffn:
            names += [p for p in self.ffn.param_names() if p not in names]
        return names


@dataclass
class Structure:
    """The layers of a module, in order."""

    layers: list[Layer]

    def by_id(self, layer_id: int) -> Layer | None:
        """The layer whose stable id is ``layer_id``, if it is still there."""
        return next((layer for layer in self.layers if layer.id == layer_id), None)

    def describe(self) -> str:
        """``layers 0..5`` / ``no transformer layers``, for messages."""
        return describe_layers(len(self.layers))


def describe_layers(count: int) -> str:
    """How many layers a model has, for error messages."""
    if count == 0:
        return ("no transformer layers (no attention or FFN block was raised; `optc inspect` "
                "says why)")
    return f"layers 0..{count - 1}"


def _find_ffns(module: Module) -> list[FFNBlock]:
    ffns = []
    for node in module.graph:
        if node.op != "linear":
            continue
        act = _single_user(node.outputs[0], _FFN_ACTIVATIONS)
        if act is None:
            continue
        down = _single_user(act.outputs[0], ("linear",))
        if down is None:
            continue
        up_w, down_w = node.args[1], down.args[1]
        if not (isinstance(up_w, Value) and isinstance(down_w, Value)):
            continue
        if up_w.tensor_type.shape[1] != down_w.tensor_type.shape[0]:
            continue  # not width-preserving: a classifier head, not an FFN
        ffns.append(FFNBlock(up=node, activation=act, down=down))
    return ffns


def _place_on_stream(block: _Block, out: Node | None, block_input: Value | None) -> None:
    """Find the block's residual add, norms and stream values from its last projection."""
    if out is None:
        return
    add = _single_user(out.outputs[0], _RESIDUAL_ADDS)
    if add is None:
        return
    others = [a for a in add.args[:2] if a is not out.outputs[0]]
    if len(others) != 1 or not isinstance(others[0], Value):
        return
    block.residual = add
    block.stream_in = others[0]
    block.stream_out = add.outputs[0]
    if block_input is not None and block_input.producer is not None:
        norm = block_input.producer
        if norm.op == "layer_norm" and norm.args[0] is block.stream_in:  # pre-LN
            block.norms.append(norm)
            return  # a norm after the add belongs to the next block or the final output
    users = add.outputs[0].users()
    if len(users) == 1 and users[0].op == "layer_norm":  # post-LN
        block.norms.append(users[0])
        block.stream_out = users[0].outputs[0]


def analyze(module: Module) -> Structure:
    """Find the transformer layers of ``module`` (which must have raised ops).

    Each attention block opens a layer; an FFN block joins the current layer if it has none
    yet, otherwise it forms a layer of its own (e.g. after the attention was dropped).
    """
    order = {id(n): i for i, n in enumerate(module.graph)}
    events: list[tuple[int, AttentionBlock | FFNBlock]] = []
    for node in module.graph:
        if node.op != "attention":
            continue
        q = _producer(node.args[0], "linear")
        k = _producer(node.args[1], "linear")
        v = _producer(node.args[2], "linear")
        out = _single_user(node.outputs[0], ("linear",))
        block = AttentionBlock(node=node, query=q, key=k, value=v, output=out)
        _place_on_stream(block, out, q.args[0] if q else None)
        events.append((order[id(node)], block))
    for ffn in _find_ffns(module):
        _place_on_stream(ffn, ffn.down, ffn.up.args[0])
        events.append((order[id(ffn.up)], ffn))
    events.sort(key=lambda e: e[0])

    layers: list[Layer] = []
    for _, block in events:
        if isinstance(block, AttentionBlock):
            layers.append(Layer(len(layers), block, None))
        elif layers and layers[-1].ffn is None:
            layers[-1].ffn = block
        else:
            layers.append(Layer(len(layers), None, block))
    return Structure(layers)


# -- layer ids ---------------------------------------------------------------------------------
def assign_layer_ids(module: Module) -> int:
    """Record each layer's current position as its stable id on the blocks that lack one
    (the attention node and the FFN's up projection). Returns how many layers got an id."""
    count = 0
    for layer in analyze(module).layers:
        nodes = [n for n in (layer.attention.node if layer.attention else None,
                             layer.ffn.up if layer.ffn else None) if n is not None]
        if all(n.attr("layer") is None for n in nodes):
            for n in nodes:
                n.set_attr("layer", layer.index)
            count += 1
    return count


def set_unit_ids(node: Node, key: str, ids: list[int], count: int) -> None:
    """Record the stable ids of the units that remain (absent when they are 0..count-1)."""
    node.set_attr(key, None if ids == list(range(count)) and node.attr(key) is None
                  else format_ids(ids))
    if node.attr(key) is None:
        kwargs = node.kwargs
        kwargs.pop(key, None)
        node.kwargs = kwargs


# -- cost model ------------------------------------------------------------------------------
def node_cost(node: Node, dims: dict[str, int]) -> dict[str, int]:
    """FLOPs and bytes moved by a high-level op node (zeros for ATen glue)."""
    opdef = get_op(node.op)
    return opdef.cost(node, dims) if opdef is not None else {"flops": 0, "bytes": 0}


def module_flops(module: Module, seq: int, batch: int = 1) -> int:
    """Estimated FLOPs of one forward pass (every high-level op) at ``batch`` x ``seq``."""
    dims = {"batch": batch, "seq": seq}
    return sum(node_cost(node, dims)["flops"] for node in module.graph)
