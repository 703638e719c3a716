"""Gates: multiplicative graph inputs on a transformer's heads, FFN neurons and blocks.

The one place that says where the gate of a head, a neuron or a whole block goes and how a
gate value reaches the tensor it scales. Taylor importance (gradients of per-example gates,
:mod:`optc.passes.support.importance`), the hard-concrete L0 gates of training (one shared vector per
block, :mod:`optc.train.gates`) and the search's runner (masks switched per call,
:mod:`optc.search.runner`) all gate through it. A gate multiplies

- the heads of an attention block (self- or cross-attention): the attention result
  ``[..., H*D]`` before the output projection, each head's ``D`` columns by its gate;
- the neurons of an FFN block: the down projection's input ``[..., I]`` (the activation, or
  ``act(gate) * up`` in a gated FFN);
- a whole attention or FFN block: its branch, the value its residual add reads (after a norm
  on the branch, if any).

So gates of ones compute exactly what the ungated module computes (``x * 1 == x``); a zero head
gate computes what removing that head (``prune-heads``) computes, a zero neuron gate what
``prune-neurons`` computes, and a zero block gate what removing the block while keeping its
residual path and norms computes (the add returns the stream: ``x + 0 == x`` for a finite
branch).

A gate input holds one value per unit of its block, shared by every example (``[units]``) or
per example (``[batch, units]``, ``batch`` being the gated value's leading dimension); the graph
expands it to the gated columns (``repeat_interleave`` over a head's ``D`` columns, ``unsqueeze``
over the middle dimensions). Sites are found from :func:`~optc.ir.analysis.analyze`'s structure,
so a module must be analysed before it is gated (a gate's multiply between an attention and
its output projection hides the block from a later analysis).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from optc.errors import IRError
from optc.ir.analysis import Layer, Structure
from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["Kind", "KINDS", "Site", "Gate", "site", "sites", "gate_name", "insert_gate",
           "insert_gates"]

Kind = Literal["head", "cross_head", "neuron", "attention", "ffn"]
KINDS: tuple[Kind, ...] = ("head", "cross_head", "neuron", "attention", "ffn")
"""What a gate covers: the heads of a layer's self-attention, the heads of its
cross-attention, the neurons of its FFN, its whole attention block, its whole FFN block."""


@dataclass(frozen=True, eq=False)
class Site:
    """Where one gate goes: the value it multiplies and the units that value is made of."""

    kind: Kind
    layer: int
    """Position of the layer in the structure the site was found in."""
    layer_id: int
    """Stable id of the layer."""
    value: Value
    """The gated value (its last dimension holds ``units * columns`` entries)."""
    units: int
    """Gate values per example: heads, neurons, or 1 for a whole block."""
    columns: int
    """Entries of the gated value's last dimension that one unit covers (``head_dim`` for a
    head, 1 for a neuron, the model width for a block)."""
    unit_ids: tuple[int, ...] = ()
    """Stable id of each head or neuron, by position (empty for a block)."""


def site(layer: Layer, kind: Kind) -> Site | None:
    """The site of ``kind`` in ``layer``, or None when the layer has no such block (or, for
    a whole block, when its residual add was not found)."""
    if kind in ("head", "cross_head"):
        att = layer.attention if kind == "head" else layer.cross_attention
        if att is None:
            return None
        return Site(kind, layer.index, layer.id, att.node.outputs[0], att.num_heads,
                    att.head_dim, tuple(att.head_ids))
    if kind == "neuron":
        ffn = layer.ffn
        if ffn is None or ffn.down is None or not isinstance(ffn.down.args[0], Value):
            return None
        return Site(kind, layer.index, layer.id, ffn.down.args[0], ffn.width, 1,
                    tuple(ffn.neuron_ids))
    if kind in ("attention", "ffn"):
        block = layer.attention if kind == "attention" else layer.ffn
        if block is None or block.residual is None or block.branch is None:
            return None
        width = block.branch.tensor_type.shape[-1]
        return Site(kind, layer.index, layer.id, block.branch, 1,
                    width if isinstance(width, int) else 1)
    raise IRError(f"unknown gate kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def sites(structure: Structure, kinds: Iterable[Kind] = ("head", "neuron")) -> list[Site]:
    """Every site of ``kinds`` in ``structure``, layer by layer (in ``kinds``' order within a
    layer)."""
    kinds = tuple(kinds)
    found = []
    for layer in structure.layers:
        for kind in kinds:
            s = site(layer, kind)
            if s is not None:
                found.append(s)
    return found


def gate_name(kind: Kind, layer: int, prefix: str = "__") -> str:
    """The graph input name of a gate: ``__head_gate_3`` (``prefix`` + kind + layer)."""
    return f"{prefix}{kind}_gate_{layer}"


@dataclass(frozen=True, eq=False)
class Gate:
    """A gate inserted into a module: its site, its graph input and the nodes that apply it."""

    site: Site
    input: Value
    """The graph input holding the gate values."""
    nodes: tuple[Node, ...]
    """The nodes computing the gated value (the expansion of the input, then the multiply)."""
    per_example: bool

    @property
    def name(self) -> str:
        """The graph input's name (what the gate values are fed under)."""
        return self.input.name

    @property
    def mul(self) -> Node:
        """The multiply whose result replaced the site's value for all of its users."""
        return self.nodes[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.input.tensor_type.dtype

    def values(self, closed: Iterable[int] = (), batch: int | None = None) -> torch.Tensor:
        """Gate values to feed: ones (``[units]``, or ``[batch, units]`` for a per-example
        gate), with the units in ``closed`` set to zero."""
        shape = (batch, self.site.units) if self.per_example else (self.site.units,)
        if self.per_example and batch is None:
            raise IRError(f"gate {self.name} is per example: its values need the batch size")
        out = torch.ones(shape, dtype=self.dtype)
        closed = sorted(closed)
        if closed:
            out[..., closed] = 0.0
        return out


def insert_gate(module: Module, where: Site, name: str, per_example: bool = False) -> Gate:
    """Multiply ``where.value`` by a new graph input ``name`` (``[units]``, or ``[batch,
    units]`` when ``per_example``) for all of the value's users (graph outputs included)."""
    graph = module.graph
    value = where.value
    t = value.tensor_type
    if t.rank < (2 if per_example else 1) or \
            (where.units > 1 and t.shape[-1] != where.units * where.columns):
        raise IRError(f"cannot gate {value!r} of type {t} by {where.units} units of "
                      f"{where.columns} columns" + (" per example" if per_example else ""))
    anchor = value.producer
    if anchor is None:
        raise IRError(f"cannot gate {value!r}: it is not computed by a node")
    users = value.users()
    batch = t.shape[0] if per_example else None
    gate = graph.add_input(name, TensorType(t.dtype, (batch, where.units) if per_example
                                            else (where.units,)))
    nodes: list[Node] = []
    g: Value = gate
    lead = [batch] if per_example else []

    def add(op: str, args: tuple, shape: list) -> None:
        nonlocal g, anchor
        node = graph.create_node(op, args, {}, [TensorType(t.dtype, tuple(shape))], after=anchor)
        nodes.append(node)
        g, anchor = node.outputs[0], node

    width = where.units
    if where.units > 1 and where.columns > 1:  # one gate value per head: over its columns
        width = where.units * where.columns
        add("aten.repeat_interleave.self_int", (g, where.columns, len(lead)), [*lead, width])
    if per_example:  # [batch, width] -> [batch, 1, ..., width]
        for dim in range(1, t.rank - 1):
            add("aten.unsqueeze.default", (g, dim), [batch, *([1] * dim), width])
    mul = graph.create_node("aten.mul.Tensor", (value, g), {}, [t], after=anchor)
    nodes.append(mul)
    for user in users:
        user.replace_input(value, mul.outputs[0])
    for key, v in graph.outputs.items():
        if v is value:
            graph.set_output(key, mul.outputs[0])
    return Gate(where, gate, tuple(nodes), per_example)


def insert_gates(module: Module, where: Iterable[Site], per_example: bool = False,
                 prefix: str = "__") -> list[Gate]:
    """Insert a gate at every site of ``where`` (from :func:`sites` on ``module``'s structure),
    each named by :func:`gate_name`; returns them in the same order."""
    return [insert_gate(module, s, gate_name(s.kind, s.layer, prefix), per_example)
            for s in where]
