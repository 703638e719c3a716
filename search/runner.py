"""Evaluating configurations without re-lowering: the module is interpreted node by node
with gates switched per call (head and neuron masks, removed blocks, hard attention), and the
hidden states entering a layer are computed once and reused for every candidate in it.

Gates are exact stand-ins for the physical edits of :func:`optc.search.candidates.commit`:
a zeroed head's slice of the attention result contributes nothing to the output projection
(as a sliced-out head), a zeroed neuron contributes nothing to the down projection, and a
removed block's residual add returns its other operand (the block's LayerNorm stays).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from optc.errors import BackendError, IRError
from optc.ir.analysis import analyze
from optc.ir.core import Module, Node, Value, map_values
from optc.ir.ops import get_op
from optc.ir.targets import resolve
from optc.search.candidates import Candidate, Config
from optc.tasks.batching import batches, feature_batches
from optc.tasks.squad import build_features
from optc.tasks.task import Task, model_output

__all__ = ["GatedRunner", "Outcome", "prepare_batches"]


@dataclass
class Outcome:
    """The result of evaluating one configuration on the validation batches."""

    losses: torch.Tensor
    """float32 loss of each validation example (per feature for QA), in input order."""
    predictions: list[Any]
    """Per example: class index or score (None for QA)."""

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())


@dataclass
class _LayerGates:
    index: int
    start: int
    """Position of the layer's first node in the node list."""
    attention: Node | None
    activation: Node | None
    attention_add: Node | None
    attention_in: Value | None
    ffn_add: Node | None
    ffn_in: Value | None
    head_dim: int
    num_heads: int
    width: int


def prepare_batches(task: Task, examples: Sequence[Any], tokenizer: Any, batch_size: int,
                    max_length: int | None, names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Tokenized validation batches, sorted by length (short rows share short batches)."""
    if task.kind == "extractive-qa":
        features = build_features(list(examples), tokenizer, max_length or 384, None)
        out = []
        for batch in feature_batches(features, tokenizer, batch_size, names):
            index = batch["index"].tolist()
            width = batch["input_ids"].shape[1]
            lengths = torch.tensor([len(features[i]) for i in index])
            left = getattr(tokenizer, "padding_side", "right") == "left"
            positions = torch.arange(width).expand(len(index), width)
            mask = positions >= (width - lengths)[:, None] if left else positions < lengths[:, None]
            batch["span_mask"] = mask.long()
            out.append(batch)
        return out
    return list(batches(list(examples), tokenizer, batch_size, max_length or 128, names))


class GatedRunner:
    """Runs ``module`` on fixed batches under any :class:`Config`, with prefix reuse."""

    def __init__(self, module: Module, task: Task, batches: list[dict[str, torch.Tensor]],
                 input_names: Sequence[str], prefix_reuse: bool = True) -> None:
        self.module = module
        self.task = task
        self.batches = batches
        self.input_names = [v.name for v in module.graph.inputs]
        self.feed = [n for n in self.input_names if n in input_names]
        self.prefix_reuse = prefix_reuse
        self.nodes = list(module.graph)
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self._compiled = [self._compile(n) for n in self.nodes]
        self.total = sum(len(b["index"]) for b in batches)
        self.layers: dict[int, _LayerGates] = {}
        for layer in analyze(module).layers:
            att, ffn = layer.attention, layer.ffn
            members = [n for n in (att.query, att.key, att.value, att.node, att.output,
                                   att.residual, *att.norms) if n is not None] if att else []
            members += [n for n in (ffn.up, ffn.activation, ffn.down, ffn.residual, *ffn.norms)
                        if n is not None] if ffn else []
            self.layers[layer.id] = _LayerGates(
                index=layer.index, start=min(self.position[id(n)] for n in members),
                attention=att.node if att else None,
                activation=ffn.activation if ffn else None,
                attention_add=att.residual if att else None,
                attention_in=att.stream_in if att else None,
                ffn_add=ffn.residual if ffn else None, ffn_in=ffn.stream_in if ffn else None,
                head_dim=att.head_dim if att else 0, num_heads=att.num_heads if att else 0,
                width=ffn.width if ffn else 0)
        self._live_after = self._liveness()
        self._prefix_key: Any = None
        self._prefix: list[dict[int, torch.Tensor]] | None = None
        self.evaluations = 0
        """Configurations evaluated (for the report)."""

    # -- compilation ------------------------------------------------------------------------
    def _compile(self, node: Node) -> tuple[Callable[..., Any], tuple, dict[str, Any]]:
        opdef = get_op(node.op)
        if opdef is not None:
            return opdef.kernel, tuple(opdef.operand_args(node)), opdef.kernel_attrs(node)
        try:
            target = resolve(node.op)
        except IRError as exc:
            raise BackendError(f"the search cannot run {node!r}: {exc}") from None
        return target, node.args, dict(node.kwargs)

    def _liveness(self) -> list[set[int]]:
        """For each position p: ids of non-parameter values made before p and read at or
        after p (or returned)."""
        last_use: dict[int, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if not v.is_param:
                    last_use[id(v)] = i
        end = len(self.nodes)
        for v in self.module.graph.outputs.values():
            if isinstance(v, Value):
                last_use[id(v)] = end
        made: dict[int, int] = {id(v): -1 for v in self.module.graph.inputs}
        for i, node in enumerate(self.nodes):
            for out in node.outputs:
                made[id(out)] = i
        live: list[set[int]] = []
        for p in range(end + 1):
            live.append({vid for vid, m in made.items() if m < p <= last_use.get(vid, -2)})
        return live

    # -- running ----------------------------------------------------------------------------
    def _gates(self, config: Config) -> tuple[dict[int, dict], dict[int, torch.Tensor],
                                              dict[int, Value]]:
        """(attention attribute overrides, output masks, residual-add bypasses) by node id."""
        overrides: dict[int, dict] = {}
        masks: dict[int, torch.Tensor] = {}
        bypass: dict[int, Value] = {}
        for lid, g in self.layers.items():
            if g.attention is not None:
                k = config.hard_k(lid)
                if k is not None:
                    overrides[id(g.attention)] = {"kind": "topk", "topk": k}
                heads = config.removed_units("heads", lid)
                if heads:
                    mask = torch.ones(g.num_heads, g.head_dim)
                    mask[sorted(heads)] = 0.0
                    masks[id(g.attention)] = mask.reshape(-1)
                if config.block_removed("attention", lid) and g.attention_add is not None:
                    bypass[id(g.attention_add)] = g.attention_in
            if g.activation is not None:
                neurons = config.removed_units("ffn-groups", lid)
                if neurons:
                    mask = torch.ones(g.width)
                    mask[sorted(neurons)] = 0.0
                    masks[id(g.activation)] = mask
                if config.block_removed("ffn", lid) and g.ffn_add is not None:
                    bypass[id(g.ffn_add)] = g.ffn_in
        return overrides, masks, bypass

    def _run(self, env: dict[int, Any], start: int, stop: int, config: Config) -> None:
        overrides, masks, bypass = self._gates(config)

        def lookup(v: Value) -> Any:
            return v.data if v.is_param else env[id(v)]

        for i in range(start, stop):
            node = self.nodes[i]
            nid = id(node)
            if nid in bypass:
                env[id(node.outputs[0])] = env[id(bypass[nid])]
                continue
            target, args, kwargs = self._compiled[i]
            if nid in overrides:
                kwargs = {**kwargs, **overrides[nid]}
            result = target(*map_values(args, lookup), **map_values(kwargs, lookup))
            if nid in masks:
                result = result * masks[nid].to(result.dtype)
            if len(node.outputs) == 1:
                env[id(node.outputs[0])] = result
            else:
                for j, out in enumerate(node.outputs):
                    env[id(out)] = result[j]

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[int, Any]:
        env: dict[int, Any] = {}
        defaults = self.module.meta.get("input_defaults", {})
        like = batch["input_ids"]
        for v in self.module.graph.inputs:
            if v.name in batch and v.name in self.feed:
                env[id(v)] = batch[v.name]
            elif defaults.get(v.name) == "ones":
                env[id(v)] = torch.ones_like(like)
            else:
                env[id(v)] = torch.zeros_like(like)
        return env

    def _start_for(self, candidate: Candidate | None) -> int:
        if candidate is None or not self.prefix_reuse or candidate.layer not in self.layers:
            return 0
        return self.layers[candidate.layer].start

    def _prefix_envs(self, start: int, config: Config) -> list[dict[int, Any]]:
        below = {lid for lid, g in self.layers.items() if g.start < start}
        key = (start, config.layer_signature(below))
        if self._prefix_key != key:
            self._prefix = None  # free the previous prefix before computing the next
            live = self._live_after[start]
            envs = []
            with torch.no_grad():
                for batch in self.batches:
                    env = self._inputs(batch)
                    self._run(env, 0, start, config)
                    envs.append({vid: env[vid] for vid in live if vid in env})
            self._prefix, self._prefix_key = envs, key
        assert self._prefix is not None
        return self._prefix

    def evaluate(self, config: Config, candidate: Candidate | None = None) -> Outcome:
        """Losses of ``config`` plus ``candidate`` (its layer's prefix reused when allowed)."""
        full = config.with_(candidate) if candidate is not None else config
        start = self._start_for(candidate)
        prefixes = self._prefix_envs(start, config) if start > 0 else None
        losses = torch.empty(self.total, dtype=torch.float32)
        predictions: list[Any] = [None] * self.total
        qa = self.task.kind == "extractive-qa"
        with torch.no_grad():
            for b, batch in enumerate(self.batches):
                env = dict(prefixes[b]) if prefixes is not None else self._inputs(batch)
                self._run(env, start, len(self.nodes), full)
                outputs = {name: env[id(v)] for name, v in self.module.graph.outputs.items()
                           if isinstance(v, Value)}
                index = batch["index"]
                if qa:
                    labels = {"start_positions": batch["start_positions"],
                              "end_positions": batch["end_positions"]}
                    losses[index] = self.task.loss(outputs, labels, reduction="none",
                                                   attention_mask=batch["span_mask"]).float()
                    continue
                logits = model_output(outputs, "logits").float()
                losses[index] = self.task.loss({"logits": logits}, batch["labels"],
                                               reduction="none").float()
                for i, p in zip(index.tolist(), self.task.predictions(logits), strict=True):
                    predictions[i] = p
        self.evaluations += 1
        return Outcome(losses, predictions)
