"""The IR: values, parameters, nodes, graphs and modules.

A :class:`Module` owns one :class:`Graph` and the named :class:`Parameter` values (weights and
buffers) the graph reads. The graph is in SSA form: each :class:`Value` is defined once, by a
graph input, a parameter, or a node output, and knows the nodes that use it.

Node arguments are trees (tuples, lists, dicts) whose leaves are values or Python literals, as
in torch.fx, so that any ATen call torch.export captures is representable. High-level ops
(``linear``, ``attention``, ...) use the same form: tensor operands positionally, attributes as
keyword arguments.

Use-lists are maintained by every edit. ``Value.users()`` returns a snapshot, so a pass can
mutate the graph while iterating over it. A node's outputs never change after creation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from optc.errors import IRError
from optc.ir.types import TensorType, Type

__all__ = [
    "Value",
    "Parameter",
    "Node",
    "Graph",
    "Module",
    "DimRange",
    "map_values",
    "flatten_values",
]

_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")


def flatten_values(tree: Any) -> Iterator[Value]:
    """Yield the values found in an argument tree, in order, with repetition."""
    if isinstance(tree, Value):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from flatten_values(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from flatten_values(item)


def map_values(tree: Any, fn: Callable[[Value], Any]) -> Any:
    """Return ``tree`` with every value ``v`` replaced by ``fn(v)``; containers are rebuilt."""
    if isinstance(tree, Value):
        return fn(tree)
    if isinstance(tree, tuple):
        return tuple(map_values(item, fn) for item in tree)
    if isinstance(tree, list):
        return [map_values(item, fn) for item in tree]
    if isinstance(tree, dict):
        return {key: map_values(item, fn) for key, item in tree.items()}
    return tree


def _has_dict(tree: Any) -> bool:
    if isinstance(tree, dict):
        return True
    if isinstance(tree, (list, tuple)):
        return any(_has_dict(item) for item in tree)
    return False


class Value:
    """An SSA value: a graph input, a node output or (subclass) a parameter."""

    def __init__(self, name: str, type: Type) -> None:
        self.name = name
        """Unique name within the module; printed as ``%name``."""
        self.type: Type = type
        """Tensor or symbolic-scalar type."""
        self.producer: Node | None = None
        """The node that defines this value, or None for graph inputs and parameters."""
        self.index = 0
        """Position among the producer's outputs."""
        self._users: dict[Node, int] = {}

    def users(self) -> list[Node]:
        """The nodes using this value, each once, in first-use order (a snapshot)."""
        return list(self._users)

    @property
    def num_uses(self) -> int:
        """Number of argument slots that read this value (not counting graph outputs)."""
        return sum(self._users.values())

    @property
    def is_param(self) -> bool:
        return False

    @property
    def tensor_type(self) -> TensorType:
        """The type, which must be a tensor type."""
        if not isinstance(self.type, TensorType):
            raise IRError(f"%{self.name} is a {self.type}, not a tensor")
        return self.type

    def __repr__(self) -> str:
        return f"%{self.name}"


class Parameter(Value):
    """A named weight or buffer held by the module; its type is derived from its tensor."""

    def __init__(self, name: str, data: torch.Tensor, attrs: dict[str, Any] | None = None) -> None:
        self.data = data
        """The tensor. Passes replace it (``param.data = new``) and never edit it in place:
        clones share tensors (copy-on-write)."""
        self.attrs: dict[str, Any] = dict(attrs or {})
        """Typed facts about the weight (:mod:`optc.ir.attributes`: sparsity pattern and
        density, quantization scheme), printed, parsed and checked by the verifier."""
        super().__init__(name, TensorType.of(data))

    @property  # type: ignore[override]
    def type(self) -> TensorType:
        """Derived from the tensor: to change it, assign a new tensor to ``data``."""
        return TensorType.of(self.data)

    @type.setter
    def type(self, value: Type) -> None:
        if value != TensorType.of(self.data):
            raise IRError(
                f"cannot set the type of parameter @{self.name} to {value}: its type is its "
                f"tensor's ({TensorType.of(self.data)}); assign a new tensor to .data instead"
            )

    @property
    def is_param(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"@{self.name}"


class Node:
    """An operation: ``op`` applied to ``args``/``kwargs``, defining ``outputs``."""

    def __init__(
        self,
        op: str,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        outputs: Iterable[Value] = (),
    ) -> None:
        self.op = op
        """``namespace.name.overload`` for ATen ops (``aten.add.Tensor``), a bare name
        (``linear``, ``attention``) for optc's high-level ops, ``py.module.name`` for the few
        Python functions torch.export records on symbolic ints (``py.operator.mul``)."""
        self._args: tuple = ()
        self._kwargs: dict[str, Any] = {}
        self.outputs: tuple[Value, ...] = tuple(outputs)
        """Values this node defines; fixed at creation."""
        self.graph: Graph | None = None
        """The graph that holds this node, or None while detached."""
        self.loc: str | None = None
        """Where the node came from (e.g. the source module path); informational only."""
        for i, out in enumerate(self.outputs):
            if out.producer is not None:
                raise IRError(f"%{out.name} is already defined by {out.producer.op}")
            out.producer, out.index = self, i
        self._set(tuple(args), dict(kwargs or {}))

    # -- arguments -----------------------------------------------------------------------
    @property
    def args(self) -> tuple:
        return self._args

    @args.setter
    def args(self, args: tuple) -> None:
        self._set(tuple(args), self._kwargs)

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments (attributes of high-level ops); a copy: assign to change."""
        return dict(self._kwargs)

    @kwargs.setter
    def kwargs(self, kwargs: dict[str, Any]) -> None:
        self._set(self._args, dict(kwargs))

    def arg(self, index: int, default: Any = None) -> Any:
        return self._args[index] if index < len(self._args) else default

    def attr(self, key: str, default: Any = None) -> Any:
        return self._kwargs.get(key, default)

    def set_attr(self, key: str, value: Any) -> None:
        kwargs = dict(self._kwargs)
        kwargs[key] = value
        self._set(self._args, kwargs)

    @property
    def inputs(self) -> list[Value]:
        """All values read by this node, in argument order, with repetition."""
        return list(flatten_values((self._args, self._kwargs)))

    def replace_input(self, old: Value, new: Value) -> None:
        """Make every argument slot that reads ``old`` read ``new``."""
        self._set(
            map_values(self._args, lambda v: new if v is old else v),
            map_values(self._kwargs, lambda v: new if v is old else v),
        )

    def _set(self, args: tuple, kwargs: dict[str, Any]) -> None:
        if _has_dict((args, tuple(kwargs.values()))):
            raise IRError(f"{self.op}: dict arguments cannot be represented; pass lists or keywords")
        for value in flatten_values((self._args, self._kwargs)):
            count = value._users[self] - 1
            if count:
                value._users[self] = count
            else:
                del value._users[self]
        self._args, self._kwargs = args, kwargs
        for value in flatten_values((args, kwargs)):
            value._users[self] = value._users.get(self, 0) + 1

    def _drop_uses(self) -> None:
        self._set((), {})

    # -- convenience ---------------------------------------------------------------------
    @property
    def output(self) -> Value:
        """The single output; an error for nodes with zero or several."""
        if len(self.outputs) != 1:
            raise IRError(f"{self.op} node has {len(self.outputs)} outputs, not 1")
        return self.outputs[0]

    @property
    def name(self) -> str:
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"<Node {outs} = {self.op}>"


class Graph:
    """An ordered list of nodes in SSA form, with named inputs and outputs."""

    def __init__(self) -> None:
        self.inputs: list[Value] = []
        """Graph inputs, in calling order; their names are the input names."""
        self._nodes: list[Node] = []
        self._outputs: dict[str, Value] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- names ---------------------------------------------------------------------------
    def unique_name(self, hint: str = "v") -> str:
        """A value name not yet used in this graph, derived from ``hint``."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", hint) or "v"
        if base not in self._names:
            return base
        while True:
            name = f"{base}_{next(self._counter)}"
            if name not in self._names:
                return name

    def _claim(self, name: str) -> None:
        if not _NAME.match(name):
            raise IRError(f"invalid value name {name!r}: use letters, digits, '_' and '.'")
        if name in self._names:
            raise IRError(f"value name %{name} is already defined in this graph")
        self._names.add(name)

    # -- inputs and outputs --------------------------------------------------------------
    def add_input(self, name: str, type: Type) -> Value:
        self._claim(name)
        value = Value(name, type)
        self.inputs.append(value)
        return value

    @property
    def outputs(self) -> dict[str, Value]:
        """Named graph outputs (a copy; use :meth:`set_output` to change)."""
        return dict(self._outputs)

    def set_output(self, name: str, value: Value) -> None:
        self._outputs[name] = value

    def remove_output(self, name: str) -> None:
        del self._outputs[name]

    def set_outputs(self, outputs: dict[str, Value]) -> None:
        self._outputs = dict(outputs)

    def is_output(self, value: Value) -> bool:
        return any(v is value for v in self._outputs.values())

    # -- nodes ---------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in order (a snapshot: safe to mutate the graph while iterating)."""
        return list(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def create_node(
        self,
        op: str,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        output_types: Iterable[Type] = (),
        names: Iterable[str] | str | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh outputs of ``output_types`` and insert it.

        ``names`` are hints; they are made unique. Without ``before``/``after`` the node is
        appended at the end.
        """
        types = list(output_types)
        if names is None:
            hints = [op.split(".")[-2] if op.count(".") >= 2 else op.split(".")[-1]] * len(types)
        elif isinstance(names, str):
            hints = [names] * len(types)
        else:
            hints = list(names)
        outputs: list[Value] = []
        for hint, type_ in zip(hints, types, strict=True):
            name = self.unique_name(hint)
            while any(v.name == name for v in outputs):
                name = f"{name}_{next(self._counter)}"
            outputs.append(Value(name, type_))
        node = Node(op, args, kwargs, outputs)
        self.insert(node, before=before, after=after)
        return node

    def insert(self, node: Node, before: Node | None = None, after: Node | None = None) -> None:
        """Insert a detached node (at the end, or next to an anchor)."""
        if node.graph is not None:
            raise IRError(f"{node!r} is already in a graph; remove it first")
        names = [out.name for out in node.outputs]
        for name in names:
            if not _NAME.match(name):
                raise IRError(f"invalid value name {name!r}: use letters, digits, '_' and '.'")
            if name in self._names or names.count(name) > 1:
                raise IRError(f"value name %{name} is already defined in this graph")
        self._names.update(names)
        if before is not None:
            self._nodes.insert(self._position(before), node)
        elif after is not None:
            self._nodes.insert(self._position(after) + 1, node)
        else:
            self._nodes.append(node)
        node.graph = self

    def _position(self, node: Node) -> int:
        if node.graph is not self:
            raise IRError(f"anchor {node!r} is not in this graph")
        return self._nodes.index(node)

    def remove(self, node: Node, safe: bool = True) -> None:
        """Remove a node. With ``safe`` (default), refuse if any output is still used."""
        if node.graph is not self:
            raise IRError(f"{node!r} is not in this graph")
        if safe:
            for out in node.outputs:
                if out._users or self.is_output(out):
                    users = ", ".join(repr(u) for u in out.users()) or "the graph output"
                    raise IRError(
                        f"cannot remove {node!r}: %{out.name} is still used by {users}; "
                        "replace its uses first"
                    )
        self._nodes.remove(node)
        self._forget(node)

    def remove_many(self, nodes: Iterable[Node]) -> None:
        """Remove a set of nodes at once; their outputs must be used only among themselves."""
        doomed = set(nodes)
        for node in doomed:
            if node.graph is not self:
                raise IRError(f"{node!r} is not in this graph")
            for out in node.outputs:
                outside = [u for u in out.users() if u not in doomed]
                if outside or self.is_output(out):
                    raise IRError(
                        f"cannot remove {node!r}: %{out.name} is still used outside the set"
                    )
        self._nodes = [n for n in self._nodes if n not in doomed]
        for node in doomed:
            self._forget(node)

    def _forget(self, node: Node) -> None:
        node._drop_uses()
        node.graph = None
        for out in node.outputs:
            self._names.discard(out.name)

    def replace_all_uses(self, old: Value, new: Value) -> int:
        """Redirect every use of ``old`` (node arguments and graph outputs) to ``new``."""
        count = 0
        for user in old.users():
            user.replace_input(old, new)
            count += 1
        for key, value in self._outputs.items():
            if value is old:
                self._outputs[key] = new
                count += 1
        return count

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` (an input or node output of this graph) a new unique name."""
        if value.is_param:
            raise IRError(f"@{value.name} is a parameter; rename it through the module")
        if name == value.name:
            return
        self._claim(name)
        self._names.discard(value.name)
        value.name = name

    def index(self, node: Node) -> int:
        return self._position(node)


class DimRange:
    """The range of a symbolic dimension, ``min <= dim <= max`` (``max`` None: unbounded)."""

    def __init__(self, min: int = 1, max: int | None = None) -> None:
        self.min = min
        self.max = max

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DimRange) and (self.min, self.max) == (other.min, other.max)

    def __repr__(self) -> str:
        return f"DimRange({self.min}, {self.max})"


class Module:
    """A graph plus the parameters it reads, symbolic dims, and metadata."""

    def __init__(self, name: str = "module") -> None:
        self.name = name
        """Printed after ``module @``; usually the source model's class name."""
        self.graph = Graph()
        """The computation."""
        self.params: dict[str, Parameter] = {}
        """Named weights and buffers, in declaration order."""
        self.dims: dict[str, DimRange] = {}
        """Symbolic dimensions used in types, with their ranges."""
        self.meta: dict[str, Any] = {}
        """JSON-serializable facts about the module (source model, input defaults, ...)."""

    def add_param(self, name: str, data: torch.Tensor) -> Parameter:
        """Declare a new parameter; names must be unique."""
        if name in self.params:
            raise IRError(f"parameter @{name} already exists")
        param = Parameter(name, data)
        self.params[name] = param
        return param

    def unique_param_name(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.params:
            i += 1
            name = f"{hint}_{i}"
        return name

    def remove_param(self, name: str) -> None:
        """Remove a parameter no node uses."""
        param = self.params.get(name)
        if param is None:
            raise IRError(f"there is no parameter @{name} to remove")
        if param._users or self.graph.is_output(param):
            users = ", ".join(repr(u) for u in param.users())
            raise IRError(f"cannot remove @{name}: still used by {users or 'the output'}")
        del self.params[name]

    def value_by_name(self, name: str) -> Value:
        for value in self.graph.inputs:
            if value.name == name:
                return value
        for node in self.graph:
            for out in node.outputs:
                if out.name == name:
                    return out
        raise KeyError(name)

    def num_parameters(self) -> int:
        """Elements of every parameter (weights, int8 weights, scales, buffers alike)."""
        return sum(p.data.numel() for p in self.params.values())

    def parameter_bytes(self) -> int:
        """Bytes of every parameter's tensor at its dtype (what dense storage takes)."""
        return sum(p.data.numel() * p.data.element_size() for p in self.params.values())

    def restore(self, snapshot: Module) -> None:
        """Become ``snapshot`` (a :meth:`clone` taken earlier) in place: graph, parameters,
        dims and meta; used to undo a pass that failed half-way."""
        self.graph, self.params = snapshot.graph, snapshot.params
        self.dims, self.meta = snapshot.dims, snapshot.meta

    def clone(self) -> Module:
        """A structural copy sharing parameter tensors (copy-on-write: passes replace a
        parameter's tensor, never edit it in place, so sharing is safe).

        Nodes, values, use-lists, names, dims, parameter attributes and meta are copied; the
        copy can be edited without touching the original.
        """
        copy = Module(self.name)
        copy.dims = {k: DimRange(r.min, r.max) for k, r in self.dims.items()}
        copy.meta = _deep_copy_json(self.meta)
        mapping: dict[int, Value] = {}
        for name, param in self.params.items():
            fresh = Parameter(name, param.data, dict(param.attrs))
            copy.params[name] = fresh
            mapping[id(param)] = fresh
        graph, src = copy.graph, self.graph
        for value in src.inputs:
            fresh = Value(value.name, value.type)
            graph.inputs.append(fresh)
            mapping[id(value)] = fresh

        def lookup(v: Value) -> Value:
            return mapping[id(v)]

        nodes = []
        for node in src._nodes:
            outputs = []
            for out in node.outputs:
                fresh = Value(out.name, out.type)
                mapping[id(out)] = fresh
                outputs.append(fresh)
            fresh_node = Node.__new__(Node)  # the source is valid: skip re-checking args
            fresh_node.op, fresh_node.loc, fresh_node.graph = node.op, node.loc, graph
            fresh_node.outputs = tuple(outputs)
            for i, out in enumerate(outputs):
                out.producer, out.index = fresh_node, i
            fresh_node._args = map_values(node._args, lookup)
            fresh_node._kwargs = map_values(node._kwargs, lookup) if node._kwargs else {}
            for value, count in _use_counts(node).items():
                users = mapping[id(value)]._users
                users[fresh_node] = count
            nodes.append(fresh_node)
        graph._nodes = nodes
        graph._names = set(src._names)
        start = next(src._counter)  # the copy generates the fresh names the original would
        src._counter, graph._counter = itertools.count(start), itertools.count(start)
        graph._outputs = {k: mapping[id(v)] for k, v in src._outputs.items()}
        return copy


def _use_counts(node: Node) -> dict[Value, int]:
    counts: dict[Value, int] = {}
    for value in flatten_values((node._args, node._kwargs)):
        counts[value] = counts.get(value, 0) + 1
    return counts


def _deep_copy_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy_json(v) for v in obj]
    return obj
