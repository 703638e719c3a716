"""A trainable ``torch.nn.Module`` generated from an IR module, and writing its values back.

:func:`trainable` lowers a module through the eager backend's torch.fx code generation
(:func:`optc.backends.eager.build_graph_module`) and turns every floating-point IR parameter
into an ``nn.Parameter`` holding a *copy* of the IR tensor (integer buffers such as position
ids stay buffers). In eval mode it computes exactly what the eager backend computes.

Capture removes eval-mode dropout, so training puts dropout back where BERT-style models have
it, found with :func:`optc.ir.analysis.analyze` (never by parameter names): after the
embeddings (on the first layer's input stream), on each attention and FFN block's output
before its residual add, and on the input of a ``logits`` classifier. The dropout lives only
in the trainable module; the IR is never changed.

Weights that a pass set to exactly zero on purpose stay zero: every parameter with a
:class:`~optc.ir.attributes.Sparsity` attribute (and any the caller names) gets a mask of its
nonzeros; :meth:`TrainableModule.mask_gradients` and :meth:`TrainableModule.apply_masks`
keep the zeros zero through optimizer steps.

:func:`write_back` replaces each IR parameter's tensor by a new one holding the trained
values; IR tensors are never edited in place (clones share them, copy-on-write).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx

from optc.backends.eager import bind_inputs, build_graph_module
from optc.errors import InputError
from optc.ir.analysis import Structure, analyze
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Value

__all__ = [
    "TrainableModule",
    "trainable",
    "write_back",
    "dropout_probability",
    "hidden_state_values",
    "DEFAULT_DROPOUT",
    "HIDDEN_PREFIX",
]

DEFAULT_DROPOUT = 0.1
"""Dropout probability when the module's source does not record one (BERT's default)."""

HIDDEN_PREFIX = "hidden_state."
"""Extra outputs ``hidden_state.<i>`` (layer ``i``'s residual-stream output) that
``trainable(..., hidden_states=True)`` adds, for distillation losses."""

_DROPOUT_KEYS = ("hidden_dropout_prob", "hidden_dropout", "dropout", "resid_pdrop")
"""Keys of a Hugging Face config (recorded in ``meta["source"]``) that give the dropout of
the residual stream."""

_MARK = "aten.dropout.default"


def dropout_probability(module: Module) -> float:
    """The source model's residual dropout, when ``meta["source"]`` (or its ``config``)
    records it, else :data:`DEFAULT_DROPOUT`."""
    source = module.meta.get("source") or {}
    for where in (source, source.get("config") or {}):
        if not isinstance(where, dict):
            continue
        for key in _DROPOUT_KEYS:
            value = where.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
                return float(value)
    return DEFAULT_DROPOUT


def hidden_state_values(module: Module, structure: Structure | None = None) -> list[Value]:
    """The residual-stream output of each layer of ``module``, in layer order."""
    structure = structure or analyze(module)
    values = []
    for layer in structure.layers:
        out = layer.stream_out
        if out is None:
            raise InputError(f"layer {layer.index} of module @{module.name} has no residual "
                             "stream output (its block is not followed by a residual add): "
                             "hidden-state losses need standard transformer layers")
        values.append(out)
    return values


def _insert_dropout(module: Module, value: Value, p: float, only: Any = None) -> None:
    """Insert a train-mode dropout marker on ``value`` (for the use by node ``only``, or for
    every use) in ``module``; :func:`trainable` turns markers into ``nn.Dropout``."""
    graph = module.graph
    after = value.producer
    anchor = {"after": after} if after is not None else {"before": graph.nodes[0]}
    node = graph.create_node(_MARK, (value, p, True), {}, [value.type], names="dropout",
                             **anchor)
    out = node.output
    if only is not None:
        only.replace_input(value, out)
        return
    for user in value.users():
        if user is not node:
            user.replace_input(value, out)
    for name, v in graph.outputs.items():
        if v is value:
            graph.set_output(name, out)


def _add_dropout(module: Module, structure: Structure, p: float) -> int:
    """Dropout markers where BERT has dropout; returns how many were inserted."""
    count = 0
    if structure.layers and structure.layers[0].stream_in is not None:
        _insert_dropout(module, structure.layers[0].stream_in, p)  # after the embeddings
        count += 1
    for layer in structure.layers:
        for block, proj in ((layer.attention, layer.attention and layer.attention.output),
                            (layer.ffn, layer.ffn and layer.ffn.down)):
            if block is None or proj is None or block.residual is None:
                continue
            _insert_dropout(module, block.branch if block.branch is not None else proj.output, p,
                            only=block.residual)
            count += 1
    logits = module.graph.outputs.get("logits")
    head = logits.producer if isinstance(logits, Value) else None
    if head is not None and head.op == "linear" and isinstance(head.args[0], Value):
        _insert_dropout(module, head.args[0], p, only=head)  # HF: dropout(pooled) -> classifier
        count += 1
    return count


class TrainableModule(torch.nn.Module):
    """The computation of an IR module with its floating-point weights as ``nn.Parameter``\\ s.

    ``forward`` takes the graph inputs by name (like :class:`optc.backends.eager.EagerModule`;
    inputs with a recorded default may be left out) and returns a dict of named outputs.
    """

    def __init__(self, graph_module: torch.fx.GraphModule, ir_names: dict[str, str],
                 input_names: list[str], output_names: list[str],
                 input_defaults: dict[str, str], masks: dict[str, torch.Tensor],
                 dropout: float, dropout_layers: int) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.ir_names = dict(ir_names)
        """IR parameter name of each attribute of ``graph_module`` that holds a weight."""
        self._attrs = {ir: attr for attr, ir in ir_names.items()}
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.input_defaults = dict(input_defaults)
        self.masks: dict[str, torch.Tensor] = dict(masks)
        """IR parameter name -> boolean mask of the entries allowed to be nonzero."""
        self.dropout = dropout
        """Dropout probability used in train mode."""
        self.dropout_layers = dropout_layers
        """How many dropout layers were inserted."""
        self.extra_inputs: dict[str, torch.Tensor] = {}
        """Values for graph inputs that callers do not pass (e.g. gates a training hook
        computes each step); explicit inputs take precedence."""

    # -- parameters -------------------------------------------------------------------------
    def tensor(self, ir_name: str) -> torch.Tensor:
        """The parameter or buffer standing for IR parameter ``@ir_name``."""
        attr = self._attrs.get(ir_name)
        if attr is None:
            raise InputError(f"the trainable module has no parameter @{ir_name}")
        return getattr(self.graph_module, attr)

    def named_ir_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """(IR name, ``nn.Parameter``) of every trainable weight, in IR order."""
        for attr, ir_name in self.ir_names.items():
            value = getattr(self.graph_module, attr)
            if isinstance(value, torch.nn.Parameter):
                yield ir_name, value

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of masked-out entries (call after ``backward``)."""
        for name, mask in self.masks.items():
            param = self.tensor(name)
            if isinstance(param, torch.nn.Parameter) and param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set masked-out entries back to exactly zero (call after each optimizer step)."""
        for name, mask in self.masks.items():
            self.tensor(name).mul_(mask)

    @property
    def device(self) -> torch.device:
        """Where the weights are (the first weight's device; the CPU without weights)."""
        for _, param in self.named_ir_parameters():
            return param.device
        return torch.device("cpu")

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of every trainable weight, by IR name (to restore with :meth:`load_state`)."""
        return {name: p.detach().clone() for name, p in self.named_ir_parameters()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights saved by :meth:`state` back into the parameters."""
        for name, value in state.items():
            self.tensor(name).copy_(value)

    # -- running ----------------------------------------------------------------------------
    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.extra_inputs:
            given = set(self.input_names[:len(args)]) | set(kwargs)
            kwargs = {**kwargs, **{k: v for k, v in self.extra_inputs.items() if k not in given}}
        return self.graph_module(*bind_inputs(self.input_names, self.input_defaults, args, kwargs))


def trainable(module: Module, *, dropout: float | None = None,
              masked: Iterable[str] = (), frozen: Iterable[str] = (),
              hidden_states: bool = False,
              edit: Callable[[Module, Structure], None] | None = None,
              device: torch.device | str | None = None) -> TrainableModule:
    """A :class:`TrainableModule` computing ``module`` (which is left unchanged).

    ``dropout``: train-mode dropout probability (default: :func:`dropout_probability`; 0
    inserts none). ``masked``: IR parameters whose zeros must stay zero, on top of those with
    a ``Sparsity`` attribute. ``frozen``: floating-point parameters to keep as buffers (no
    gradient). ``hidden_states``: also return each layer's output as ``hidden_state.<i>``.
    ``edit``: called with the working copy of the IR (tensors shared with ``module``) and its
    structure after dropout is inserted, to add what only training needs (gates as new graph
    inputs, fake quantization); it must not change ``module``'s parameters. ``device``: where
    the weights, buffers, masks and the tensors the graph creates (``arange``, ...) go (default:
    the CPU, where the IR is). The module starts in train mode.
    """
    names = set(module.params)
    masked, frozen = set(masked), set(frozen)
    for kind, listed in (("masked", masked), ("frozen", frozen)):
        unknown = sorted(set(listed) - names)
        if unknown:
            raise InputError(f"{kind} parameter @{unknown[0]} does not exist in module "
                             f"@{module.name}")
    p = dropout_probability(module) if dropout is None else float(dropout)
    if not 0 <= p < 1:
        raise InputError(f"dropout must be in [0, 1), got {dropout}")
    work = module.clone()  # markers and extra outputs go into a copy; tensors are shared
    structure = analyze(work)
    if hidden_states:
        for i, value in enumerate(hidden_state_values(work, structure)):
            work.graph.set_output(f"{HIDDEN_PREFIX}{i}", value)
    inserted = _add_dropout(work, structure, p) if p > 0 else 0
    if edit is not None:
        edit(work, structure)
    graph_module = build_graph_module(work)
    _swap_dropout(graph_module)

    by_tensor: dict[int, str] = {id(param.data): name for name, param in module.params.items()}
    ir_names: dict[str, str] = {}
    for attr, buffer in list(graph_module.named_buffers(recurse=False)):
        ir_name = by_tensor.get(id(buffer))
        if ir_name is None:
            continue
        ir_names[attr] = ir_name
        if buffer.is_floating_point() and ir_name not in frozen:
            del graph_module._buffers[attr]
            graph_module.register_parameter(attr, torch.nn.Parameter(buffer.detach().clone()))
        else:
            graph_module._buffers[attr] = buffer.detach().clone()
    if len(ir_names) != len(module.params):
        missing = sorted(set(module.params) - set(ir_names.values()))
        raise InputError(f"parameters {', '.join('@' + n for n in missing[:3])} of module "
                         f"@{module.name} share a tensor with another parameter; clone them "
                         "apart before training")
    masks = {}
    for name, param in module.params.items():
        if name in masked or any(isinstance(a, Sparsity) for a in param.attrs.values()):
            masks[name] = param.data != 0
    result = TrainableModule(graph_module, ir_names, [v.name for v in work.graph.inputs],
                             [n for n in work.graph.outputs], dict(module.meta.get("input_defaults", {})),
                             masks, p, inserted)
    if device is not None and torch.device(device) != torch.device("cpu"):
        _retarget(graph_module, torch.device(device))
        result.to(device)
        result.masks = {k: v.to(device) for k, v in result.masks.items()}
    result.train()
    return result


def _retarget(graph_module: torch.fx.GraphModule, device: torch.device) -> None:
    """Tensors the graph creates (``arange``, ``ones``, ... with a ``device=`` keyword) are
    created on ``device`` (as :func:`optc.backends.eager.build_graph_module` does)."""
    changed = False
    for node in graph_module.graph.nodes:
        if any(isinstance(v, torch.device) for v in node.kwargs.values()):
            node.kwargs = {k: device if isinstance(v, torch.device) else v
                           for k, v in node.kwargs.items()}
            changed = True
    if changed:
        graph_module.recompile()


def _swap_dropout(graph_module: torch.fx.GraphModule) -> None:
    """Replace the dropout markers by ``nn.Dropout`` submodules (active in train mode only)."""
    fx = graph_module.graph
    count = 0
    for node in list(fx.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.dropout.default:
            continue
        if len(node.args) < 3 or node.args[2] is not True:
            continue
        name = f"dropout_{count}"
        count += 1
        graph_module.add_submodule(name, torch.nn.Dropout(float(node.args[1])))
        with fx.inserting_before(node):
            call = fx.call_module(name, (node.args[0],))
        node.replace_all_uses_with(call)
        fx.erase_node(node)
    if count:
        fx.lint()
        graph_module.recompile()


def write_back(model: TrainableModule, module: Module,
               names: Iterable[str] | None = None) -> list[str]:
    """Write the trained weights of ``model`` into ``module``'s parameters.

    Each written parameter gets a new tensor (``param.data = new``, on the CPU whatever device
    ``model`` trained on): IR tensors are never edited in place. ``names`` limits the parameters written (default: every trainable one).
    Returns the names written. A parameter ``module`` lacks, or whose shape or dtype
    differs, is an :class:`InputError` (and nothing is written).
    """
    chosen = dict(model.named_ir_parameters())
    if names is not None:
        wanted = list(names)
        unknown = [n for n in wanted if n not in chosen]
        if unknown:
            raise InputError(f"@{unknown[0]} is not a trainable parameter of this model")
        chosen = {n: chosen[n] for n in wanted}
    for name, value in chosen.items():
        param = module.params.get(name)
        if param is None:
            raise InputError(f"cannot write back @{name}: module @{module.name} has no such "
                             "parameter (was it changed since the trainable module was made?)")
        if param.data.shape != value.shape or param.data.dtype != value.dtype:
            raise InputError(f"cannot write back @{name}: the module holds "
                             f"{param.data.dtype} {list(param.data.shape)}, the trained value is "
                             f"{value.dtype} {list(value.shape)}")
    for name, value in chosen.items():
        module.params[name].data = value.detach().to("cpu", copy=True)
    return list(chosen)
