"""Structure analysis: the transformer layers of a raised module, found from the graph alone.

An attention block is an ``attention`` node with the ``linear`` nodes that produce its query,
key and value (possibly through head-local ops: ``rotary``, per-head norms; see
:func:`is_head_local`) and the ``linear`` that consumes its result
(the output projection); with grouped-query attention the key/value projections have
``num_kv_heads`` heads. An FFN block is ``linear -> activation -> linear`` where the first
widens and the second narrows back to the same width, or the gated form
``down(act(gate(x)) * up(x))`` (SwiGLU, GeGLU) whose two up projections read the same input. Each attention block opens a layer; the first FFN block after it (before the next
attention) completes it. Residual adds and layer norms are found through the uses of the blocks'
outputs and inputs. Parameter names are never consulted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optc.ir.core import Module, Node, Value
from optc.ir.elementwise import activation_region, is_head_local, through_head_local
from optc.ir.ids import format_ids, ids_or_range
from optc.ir.ops import get_op, ops_with
from optc.ir.ops.attention import kv_index
from optc.ir.types import TensorType

__all__ = ["AttentionBlock", "FFNBlock", "Layer", "ParamSlice", "Structure", "analyze",
           "assign_layer_ids", "node_cost", "module_flops", "describe_layers", "is_head_local"]

_RESIDUAL_ADDS = ("aten.add.Tensor",)
_GATE_MUL = ("aten.mul.Tensor",)


def _producer(value: object, op: str) -> Node | None:
    node = value.producer if isinstance(value, Value) else None
    return node if node is not None and node.op == op else None


def module_output(node: Node) -> bool:
    """Whether one of ``node``'s results is a graph output."""
    return node.graph is not None and any(node.graph.is_output(o) for o in node.outputs)


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
    branch: Value | None = None
    """The block's result as the residual add reads it: its last projection's output, or that
    output moved back to the stream's [seq, batch, d] rows (``nn.MultiheadAttention`` without
    batch_first, whose attention op reads the rows as [batch, seq, d])."""
    branch_norms: list[Node] = field(default_factory=list)
    """Norms of the block's result before its residual add (the "sandwich" norm of Gemma 2 and
    OLMo 2: ``x + norm(f(x))``)."""
    parallel: bool = False
    """Whether the block reads the stream that enters the layer's attention, not the
    attention's output: a parallel layer ``x + attn(ln(x)) + ffn(ln(x))`` (GPT-J, GPT-NeoX,
    Falcon, Phi), whose sum raising wrote as ``(x + attn) + ffn`` so that each block still has
    a residual add of its own."""


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
    head_ops: tuple[tuple[Node, ...], ...] = ((), (), ())
    """The head-local ops (:func:`is_head_local`: ``rotary``, per-head norms) between each of
    the query/key/value projections and the attention, projection side first."""
    position: Node | None = None
    """A ``disentangled_bias`` (DeBERTa) computing the attention's mask from the same query
    and key and from relative-position tables projected per head (``pos_query``/``pos_key``)."""
    pos_query: Node | None = None
    """``linear`` producing the p2c position table (DeBERTa-v3 shares the query's weights)."""
    pos_key: Node | None = None
    """``linear`` producing the c2p position table (DeBERTa-v3 shares the key's weights)."""

    @property
    def num_heads(self) -> int:
        return int(self.node.attr("num_heads"))

    @property
    def rotary(self) -> tuple[Node | None, Node | None]:
        """The ``rotary`` ops on the query's and the key's way to the attention, if any."""
        found = [next((n for n in chain if n.op == "rotary"), None) for chain in self.head_ops[:2]]
        return found[0], found[1]

    @property
    def head_dim(self) -> int:
        return int(self.node.attr("head_dim"))

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads (equal to ``num_heads`` unless grouped-query attention)."""
        kv = self.node.attr("num_kv_heads")
        return self.num_heads if kv is None else int(kv)

    @property
    def kv_heads(self) -> list[int]:
        """The kv head each query head reads."""
        return kv_index(self.num_heads, self.node.attr("num_kv_heads"), self.node.attr("kv_heads"))

    @property
    def grouped(self) -> bool:
        """Whether key/value heads are shared by several query heads."""
        return self.num_kv_heads != self.num_heads or self.node.attr("kv_heads") is not None

    def kv_group(self, kv: int) -> list[int]:
        """The query heads that read kv head ``kv``."""
        return [h for h, k in enumerate(self.kv_heads) if k == kv]

    @property
    def head_ids(self) -> list[int]:
        """Stable id (index in the captured model) of each head, by current position."""
        return ids_or_range(self.node.attr("head_ids"), self.num_heads)

    @property
    def prunable(self) -> str | None:
        """Why heads cannot be removed from this block, or None when they can."""
        if None in (self.query, self.key, self.value):
            for i, name in enumerate(("query", "key", "value")):
                source = through_head_local(self.node.args[i])[0]
                norm = source.producer if isinstance(source, Value) else None
                opdef = get_op(norm.op) if norm is not None else None
                if opdef is not None and "norm" in opdef.traits and \
                        _producer(norm.args[0], "linear") is not None:
                    return (f"the {name} is normalized over every head together ({norm!r}), "
                                "so removing a head would change the other heads")
            return "query/key/value are not produced by their own linear projections"
        if self.output is None:
            return "the attention result does not feed a single output projection"
        for lin, chain in zip((self.query, self.key, self.value), self.head_ops, strict=True):
            if len([u for u in lin.outputs[0].users() if u is not self.position]) != 1:
                return f"the projection {lin!r} has other users besides the attention"
            for op in chain:
                if len(op.outputs[0].users()) != 1:
                    return f"the head-local op {op!r} has other users besides the attention"
        if len({id(self.key), id(self.value), id(self.query)}) != 3:
            return "query, key and value share a projection"
        return self._position_prunable()

    def _position_prunable(self) -> str | None:
        """Why the disentangled position bias cannot lose heads with the attention."""
        pos = self.position
        if pos is None:
            return None
        if pos.args[0] is not self.node.args[0] or pos.args[1] is not self.node.args[1] or \
                self.grouped or any(self.head_ops):
            return f"the position bias {pos!r} does not read the attention's own query and key"
        for i, lin in ((3, self.pos_key), (4, self.pos_query)):
            if pos.arg(i) is not None and (lin is None or lin.outputs[0].users() != [pos]):
                return f"the position table {pos.arg(i)!r} is not a projection read by {pos!r} alone"
        return None

    def head_slices(self, head: int) -> list[ParamSlice]:
        """The coupled parameter slices of one query head: its q rows (and bias) and output
        columns, plus the k/v rows of its kv head when no other query head reads it (always,
        without grouped-query attention)."""
        d = self.head_dim
        rows = tuple(range(head * d, (head + 1) * d))
        slices = []
        projections = [self.query]
        kv = self.kv_heads[head]
        if self.kv_group(kv) == [head]:
            projections += [self.key, self.value]
        projections += [p for p in (self.pos_query, self.pos_key) if p is not None]
        for lin in projections:
            index = rows if lin is self.query else tuple(range(kv * d, (kv + 1) * d))
            for weight in (lin.args[1], lin.arg(2)):
                if isinstance(weight, Value) and ParamSlice(weight.name, 0, index) not in slices:
                    slices.append(ParamSlice(weight.name, 0, index))
        slices.append(ParamSlice(self.output.args[1].name, 1, rows))
        return slices

    def kv_slices(self, kv: int) -> list[ParamSlice]:
        """The coupled slices of kv head ``kv``: its k/v rows and the slices of every query
        head of its group (removing a kv head removes its whole group)."""
        d = self.head_dim
        index = tuple(range(kv * d, (kv + 1) * d))
        slices = []
        for lin in (self.key, self.value):
            slices.append(ParamSlice(lin.args[1].name, 0, index))
            if isinstance(lin.arg(2), Value):
                slices.append(ParamSlice(lin.arg(2).name, 0, index))
        for h in self.kv_group(kv):
            slices += [s for s in self.head_slices(h) if s not in slices]
        return slices

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.query, self.key, self.value, self.pos_query, self.pos_key, self.output,
                  *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class FFNBlock(_Block):
    """A feed-forward block ``down(act(up(x)))``."""

    up: Node | None = None
    """The projection whose result goes through the activation (``gate_proj`` of a gated FFN)."""
    activation: Node | None = None
    """The activation op, or the last node of an activation written out in elementwise ATen ops
    (``relu(x)**2``, ``x * sigmoid(x)``; all of them in :attr:`pointwise`)."""
    pointwise: tuple[Node, ...] = ()
    """Every node of the activation, in dependency order (the activation op alone when raised)."""
    down: Node | None = None
    gated: Node | None = None
    """Gated FFNs: the second up projection (``up_proj``), multiplied with the activation."""
    product: Node | None = None
    """Gated FFNs: the ``mul`` of the activation and ``gated``, which feeds ``down``."""

    @property
    def width(self) -> int:
        """Number of intermediate neurons (rows of the up projection)."""
        return int(self.up.args[1].tensor_type.shape[0])

    @property
    def neuron_ids(self) -> list[int]:
        """Stable id (index in the captured model) of each neuron, by current position."""
        return ids_or_range(self.up.attr("unit_ids"), self.width)

    def neuron_slices(self, neuron: int) -> list[ParamSlice]:
        """The coupled parameter slices of one neuron (up row and bias, gated row and bias
        for a gated FFN, down column)."""
        slices = []
        for lin in (self.up, self.gated):
            if lin is None:
                continue
            slices.append(ParamSlice(lin.args[1].name, 0, (neuron,)))
            if isinstance(lin.arg(2), Value):
                slices.append(ParamSlice(lin.arg(2).name, 0, (neuron,)))
        slices.append(ParamSlice(self.down.args[1].name, 1, (neuron,)))
        return slices

    def param_names(self) -> list[str]:
        names: list[str] = []
        for n in (self.up, self.gated, self.down, *self.norms):
            names += [p for p in _params_of(n) if p not in names]
        return names


@dataclass
class Layer:
    """A transformer layer: an attention block and/or an FFN block (a decoder layer of an
    encoder-decoder also has a cross-attention block between them)."""

    index: int
    """Current position among the module's layers (shifts when layers are removed)."""
    attention: AttentionBlock | None
    ffn: FFNBlock | None
    cross_attention: AttentionBlock | None = None
    """Attention whose key/value read another stream (the encoder's output), on this layer's
    residual stream after ``attention`` (it stays this layer's cross-attention when every
    self-attention head is pruned). drop-layers removes it with its layer; prune-heads prunes
    its heads as units of their own (``cross_heads=``, stable ids in its ``head_ids``)."""

    @property
    def id(self) -> int:
        """Stable id: the layer's index in the captured model (its blocks' ``layer``
        attribute), or its position when the module predates stable ids."""
        for node in (self.attention.node if self.attention else None, self.ffn.up if self.ffn else None,
                     self.cross_attention.node if self.cross_attention else None):
            if node is not None and node.attr("layer") is not None:
                return int(node.attr("layer"))
        return self.index

    @property
    def parallel(self) -> bool:
        """Whether the attention and FFN blocks both read the layer's input (parallel
        attention+FFN); removing one leaves the other's input unchanged."""
        return self.attention is not None and self.ffn is not None and self.ffn.parallel

    @property
    def stream_in(self) -> Value | None:
        first = self.attention or self.cross_attention or self.ffn
        return first.stream_in if first else None

    @property
    def stream_out(self) -> Value | None:
        last = self.ffn or self.cross_attention or self.attention
        return last.stream_out if last else None

    def raised(self) -> str:
        """What the raising found in this layer, for reports: ``attention 4 heads (2 kv,
        rotary) + gated FFN 64 (silu), pre-norm rms_norm``; a missing block says so."""
        parts = []
        att, ffn = self.attention, self.ffn
        if att is not None:
            extra = ([f"{att.num_kv_heads} kv"] if att.grouped else []) + \
                (["rotary"] if any(att.rotary) else []) + \
                (["q/k norm"] if any("norm" in get_op(n.op).traits for c in att.head_ops for n in c)
                 else []) + \
                ([] if att.node.arg(3) is None else ["mask"]) + \
                (["disentangled"] if att.position is not None else []) + \
                (["causal"] if att.node.attr("causal") else []) + \
                ([f"softcap {att.node.attr('softcap'):g}"] if att.node.attr("softcap") else [])
            text = f"attention {att.num_heads} heads" + (f" ({', '.join(extra)})" if extra else "")
            if att.prunable:
                text += f" [not prunable: {att.prunable}]"
            parts.append(text)
        else:
            parts.append("no attention")
        if self.cross_attention is not None:
            parts.append(f"cross-attention {self.cross_attention.num_heads} heads")
        if ffn is not None:
            names = [n.op.split(".")[1] if n.op.startswith("aten.") else n.op for n in ffn.pointwise]
            act = "+".join(names) if len(names) <= 3 else f"{len(names)} elementwise ops"
            parts.append(f"{'gated ' if ffn.gated is not None else ''}FFN {ffn.width} ({act})")
        else:
            parts.append("no FFN")
        block = att or ffn
        text = " + ".join(parts)
        if self.parallel:
            text += ", parallel attention+FFN"
        if block is not None and block.norms:
            post = block.residual is not None and block.norms[0] in block.residual.outputs[0].users()
            text += f", {'post' if post else 'pre'}-norm {block.norms[0].op}"
        if block is not None and block.branch_norms:
            text += f", {block.branch_norms[0].op} on the branch"
        return text

    def param_names(self) -> list[str]:
        names = self.attention.param_names() if self.attention else []
        if self.cross_attention:
            names += [p for p in self.cross_attention.param_names() if p not in names]
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


def _gate_of(act: Node, up: Node) -> tuple[Node, Node] | None:
    """``(gated linear, product)`` when ``act``'s result is multiplied with a linear of the
    same input and width as ``up`` (a gated FFN)."""
    product = _single_user(act.outputs[0], _GATE_MUL)
    if product is None or len(product.args) < 2:
        return None
    others = [a for a in product.args[:2] if a is not act.outputs[0]]
    gated = _producer(others[0], "linear") if len(others) == 1 else None
    if gated is None or gated is up or gated.args[0] is not up.args[0]:
        return None
    if gated.outputs[0].type != up.outputs[0].type or len(gated.outputs[0].users()) != 1:
        return None
    return gated, product


def _find_ffns(module: Module) -> list[FFNBlock]:
    ffns = []
    for node in module.graph:
        if node.op != "linear":
            continue
        region = activation_region(node)
        if region is None:
            continue
        act = region[-1]
        gate = _gate_of(act, node)
        mid = gate[1] if gate is not None else act
        down = _single_user(mid.outputs[0], ("linear",))
        if down is None:
            continue
        up_w, down_w = node.args[1], down.args[1]
        if not (isinstance(up_w, Value) and isinstance(down_w, Value)):
            continue
        if up_w.tensor_type.shape[1] != down_w.tensor_type.shape[0]:
            continue  # not width-preserving: a classifier head, not an FFN
        ffns.append(FFNBlock(up=node, activation=act, pointwise=region, down=down,
                             gated=gate[0] if gate else None, product=gate[1] if gate else None))
    return ffns


def _uncast(value: object) -> object:
    """``value`` without same-type casts (``x.to(torch.float32)`` of an f32 ``x``)."""
    while isinstance(value, Value) and value.producer is not None and value.producer.op in (
            "aten.to.dtype", "aten._to_copy.default", "aten.type_as.default") and isinstance(value.producer.args[0], Value) \
            and value.producer.args[0].type == value.type:
        value = value.producer.args[0]
    return value


def _place_on_stream(block: _Block, out: Node | None, block_input: Value | None) -> None:
    """Find the block's residual add, norms and stream values from its last projection."""
    if out is None:
        return
    branch = out.outputs[0]
    moved = _single_user(branch, ("aten.transpose.int",))
    if moved is not None and _swaps_rows(moved):  # back to the stream's [seq, batch] rows
        branch = moved.outputs[0]
    add = _single_user(branch, _RESIDUAL_ADDS)
    norm = _single_user(branch, ops_with("norm")) if add is None else None
    if norm is not None and not module_output(norm):  # a norm on the branch (Gemma 2, OLMo 2)
        add = _single_user(norm.outputs[0], _RESIDUAL_ADDS)
        if add is not None:
            block.branch_norms.append(norm)
            branch = norm.outputs[0]
    if add is None:
        return
    others = [a for a in add.args[:2] if a is not branch]
    if len(others) != 1 or not isinstance(others[0], Value):
        return
    block.residual = add
    block.branch = branch
    block.stream_in = others[0]
    block.stream_out = add.outputs[0]
    block_input = _uncast(block_input)
    if branch is not out.outputs[0] and isinstance(block_input, Value) and \
            block_input.producer is not None and _swaps_rows(block_input.producer):
        block_input = _uncast(block_input.producer.args[0])  # the stream's rows, moved
    if isinstance(block_input, Value) and block_input.producer is not None:
        norm = block_input.producer
        if norm.op in ops_with("norm") and _uncast(norm.args[0]) is _uncast(block.stream_in):  # pre-LN
            block.norms.append(norm)
            return  # a norm after the add belongs to the next block or the final output
    users = add.outputs[0].users()
    if len(users) == 1 and users[0].op in ops_with("norm"):  # post-LN
        block.norms.append(users[0])
        block.stream_out = users[0].outputs[0]


def _swaps_rows(node: Node) -> bool:
    """``transpose(x, 0, 1)`` of a rank-3 ``x``: [seq, batch, d] <-> [batch, seq, d] rows."""
    x = node.args[0]
    return node.op == "aten.transpose.int" and isinstance(x, Value) and \
        isinstance(x.type, TensorType) and x.tensor_type.rank == 3 and \
        sorted(d % 3 for d in node.args[1:3]) == [0, 1]


def _reads_other_stream(block: AttentionBlock) -> bool:
    """Whether ``block``'s key/value projections read another value than its query (the
    encoder's output: a cross-attention)."""
    if None in (block.query, block.key, block.value, block.stream_in):
        return False
    kv = _uncast(block.key.args[0])
    return kv is not _uncast(block.query.args[0]) and kv is _uncast(block.value.args[0])


def _mark_parallel(att: AttentionBlock, ffn: FFNBlock) -> None:
    """Mark ``ffn`` parallel when it sits on the stream right after ``att`` but reads (through
    its own or a shared norm) the stream entering ``att``: its pre-norm is that norm, and a norm
    after its residual add belongs to what follows (the next layer or the final norm)."""
    if ffn.residual is None or att.stream_in is None or \
            _uncast(ffn.stream_in) is not _uncast(att.residual.outputs[0] if att.residual else None):
        return
    source = _uncast(ffn.up.args[0])
    norm = source.producer if isinstance(source, Value) and source.producer is not None and \
        source.producer.op in ops_with("norm") else None
    if _uncast(norm.args[0] if norm is not None else source) is not _uncast(att.stream_in):
        return
    ffn.parallel = True
    ffn.norms = [norm] if norm is not None else []
    ffn.stream_out = ffn.residual.outputs[0]


def _is_cross(block: AttentionBlock, layer: Layer) -> bool:
    """Whether ``block`` is the cross-attention of ``layer``: its key/value projections read
    another value than its query, and it sits on the stream right after the layer's attention."""
    if layer.attention is None or layer.ffn is not None or layer.cross_attention is not None:
        return False
    if not _reads_other_stream(block):
        return False
    return _uncast(block.stream_in) is _uncast(layer.attention.stream_out)


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
        (q_in, q_ops), (k_in, k_ops), (v_in, v_ops) = (through_head_local(a) for a in node.args[:3])
        q, k, v = (_producer(a, "linear") for a in (q_in, k_in, v_in))
        out = _single_user(node.outputs[0], ("linear",))
        pos = _producer(node.arg(3), "disentangled_bias")
        block = AttentionBlock(node=node, query=q, key=k, value=v, output=out,
                               head_ops=(q_ops, k_ops, v_ops),
                               position=pos, pos_query=_producer(pos.arg(4), "linear") if pos else None,
                               pos_key=_producer(pos.arg(3), "linear") if pos else None)
        _place_on_stream(block, out, q.args[0] if q else None)
        events.append((order[id(node)], block))
    for ffn in _find_ffns(module):
        _place_on_stream(ffn, ffn.down, ffn.up.args[0])
        events.append((order[id(ffn.up)], ffn))
    events.sort(key=lambda e: e[0])

    layers: list[Layer] = []
    for _, block in events:
        if isinstance(block, AttentionBlock) and layers and _is_cross(block, layers[-1]):
            layers[-1].cross_attention = block
        elif isinstance(block, AttentionBlock) and _reads_other_stream(block):
            layers.append(Layer(len(layers), None, None, block))  # its self-attention was pruned
        elif isinstance(block, AttentionBlock):
            layers.append(Layer(len(layers), block, None))
        elif layers and layers[-1].ffn is None:
            layers[-1].ffn = block
            if layers[-1].attention is not None:
                _mark_parallel(layers[-1].attention, block)
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
                             layer.ffn.up if layer.ffn else None,
                             layer.cross_attention.node if layer.cross_attention else None)
                 if n is not None]
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
