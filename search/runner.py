"""Evaluating configurations without re-lowering: the module is interpreted node by node
with gates switched per call (head and neuron masks, removed blocks) and hard attention
switched by an attribute override, and the hidden states entering a layer are computed once
and reused for every candidate in it.

The gates are those of :mod:`optc.ir.gating`, inserted once into a copy of the module: one
shared input per layer for its heads, its FFN neurons, its attention block and its FFN block,
fed per call (zeros for the removed units). They are exact stand-ins for the physical edits of
:func:`optc.search.candidates.commit`: a zeroed head's slice of the attention result
contributes nothing to the output projection (as a sliced-out head), a zeroed neuron
contributes nothing to the down projection, and a removed block's residual add returns its
other operand (``x + 0``; the block's LayerNorm stays). A gate with nothing closed is the
identity: its multiply is skipped, so the unpruned configuration runs exactly the module's
own nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from optc.errors import BackendError, InputError, IRError
from optc.ir.analysis import analyze
from optc.ir.core import Module, Node, Value, map_values
from optc.ir.gating import Gate, Kind, insert_gates, sites
from optc.ir.ops import get_op
from optc.ir.targets import resolve
from optc.search.candidates import Candidate, Config
from optc.tasks.batching import batches, feature_batches
from optc.tasks.embedding import agreement_scores, similarity_scores
from optc.tasks.pooling import DEFAULT_POOLING, declared_pooling
from optc.tasks.records import Example
from optc.tasks.squad import build_features
from optc.tasks.task import EMBEDDING_KINDS, Task, model_output

__all__ = ["GatedRunner", "Outcome", "prepare_batches", "attach_reference"]


@dataclass
class Outcome:
    """The result of evaluating one configuration on the validation batches."""

    losses: torch.Tensor
    """float32 loss of each validation example (per feature for QA), in input order."""
    predictions: list[Any]
    """Per example: class index or score (None for QA); the embedding tasks: the cosine of a
    pair's embeddings (``sentence-similarity``) or ``{cosine, top10_agreement}`` to the
    reference (``embedding``)."""

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean())


_GATED: dict[str, Kind] = {"heads": "head", "ffn-groups": "neuron", "attention": "attention",
                           "ffn": "ffn"}
"""The gate each candidate kind closes (units for heads and neuron groups, the whole gate for
blocks)."""


@dataclass
class _Layer:
    start: int
    """Position of the layer's first node in the node list."""
    attention: Node | None
    """The attention node (hard attention overrides its attributes)."""
    gates: dict[Kind, Gate]


def prepare_batches(task: Task, examples: Sequence[Any], tokenizer: Any, batch_size: int,
                    max_length: int | None, names: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Tokenized validation batches, sorted by length (short rows share short batches).

    The embedding tasks embed every text on its own, with its attention mask (the pooling
    reads it): for ``sentence-similarity`` rows ``0..n-1`` are the pairs' first sentences and
    ``n..2n-1`` their second ones, each row labelled with its pair's score; ``embedding``
    needs the reference's embeddings attached (:func:`attach_reference`)."""
    if task.kind in EMBEDDING_KINDS:
        rows = [Example(e.text, label=e.label) for e in examples]
        if task.kind == "embedding-similarity":
            rows += [Example(e.text_pair, label=e.label) for e in examples]
        wanted = tuple(dict.fromkeys((*names, "attention_mask")))
        return list(batches(rows, tokenizer, batch_size, max_length or 128, wanted))
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


def attach_reference(batches: list[dict[str, torch.Tensor]], reference: torch.Tensor
                     ) -> list[dict[str, torch.Tensor]]:
    """``batches`` with each row's reference embedding (``reference``: [rows, width], as
    :meth:`GatedRunner.embeddings` of the reference model returns them) under ``reference``:
    what the label-free ``embedding`` task scores a configuration against."""
    return [{**b, "reference": reference[b["index"]]} for b in batches]


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
        gated = module.clone()
        structure = analyze(gated)
        gates = insert_gates(gated, sites(structure, tuple(_GATED.values())))
        self.graph = gated.graph
        """The graph the runner interprets: ``module``'s with the gates inserted."""
        self._gate_inputs = {id(g.input) for g in gates}
        self.nodes = list(self.graph)
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self._compiled = [self._compile(n) for n in self.nodes]
        self.rows = sum(len(b["index"]) for b in batches)
        self.embedding = task.kind in EMBEDDING_KINDS
        self.total = self.rows // 2 if task.kind == "embedding-similarity" else self.rows
        """Examples scored (a pair's two sentences are two rows)."""
        self.pooling = (task.pooling or declared_pooling(module.meta) or DEFAULT_POOLING
                        if self.embedding else None)
        self.layers: dict[int, _Layer] = {}
        for layer in structure.layers:
            att, ffn = layer.attention, layer.ffn
            members = [n for n in (att.query, att.key, att.value, att.node, att.output,
                                   att.residual, *att.norms) if n is not None] if att else []
            members += [n for n in (ffn.up, ffn.activation, ffn.down, ffn.residual, *ffn.norms)
                        if n is not None] if ffn else []
            self.layers[layer.id] = _Layer(
                start=min(self.position[id(n)] for n in members),
                attention=att.node if att else None,
                gates={g.site.kind: g for g in gates if g.site.layer == layer.index})
        self._open = {id(n): (g.site.value if n is g.mul else None)
                      for g in gates for n in g.nodes}
        """Every gate node, mapped to what an open gate passes through: the multiply to the
        gated value, the expansion of the gate input to nothing (it is not run)."""
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
        for v in self.graph.outputs.values():
            if isinstance(v, Value):
                last_use[id(v)] = end
        made: dict[int, int] = {id(v): -1 for v in self.graph.inputs}
        for i, node in enumerate(self.nodes):
            for out in node.outputs:
                made[id(out)] = i
        live: list[set[int]] = []
        for p in range(end + 1):
            live.append({vid for vid, m in made.items() if m < p <= last_use.get(vid, -2)})
        return live

    # -- running ----------------------------------------------------------------------------
    def _gates(self, config: Config) -> tuple[dict[int, dict], dict[int, torch.Tensor],
                                              dict[int, Value | None]]:
        """(attention attribute overrides by node id, values of the closed gates by input id,
        the open gates' nodes with what they pass through)."""
        overrides: dict[int, dict] = {}
        feeds: dict[int, torch.Tensor] = {}
        closed: set[int] = set()
        for lid, layer in self.layers.items():
            k = config.hard_k(lid)
            if layer.attention is not None and k is not None:
                overrides[id(layer.attention)] = {"kind": "topk", "topk": k}
            for candidate_kind, kind in _GATED.items():
                gate = layer.gates.get(kind)
                if gate is None:
                    continue
                if kind in ("attention", "ffn"):
                    units = {0} if config.block_removed(candidate_kind, lid) else set()
                else:
                    units = config.removed_units(candidate_kind, lid)
                if units:
                    feeds[id(gate.input)] = gate.values(closed=units)
                    closed.update(id(n) for n in gate.nodes)
        bypass = {nid: v for nid, v in self._open.items() if nid not in closed}
        return overrides, feeds, bypass

    def _run(self, env: dict[int, Any], start: int, stop: int, config: Config) -> None:
        overrides, feeds, bypass = self._gates(config)
        env.update(feeds)

        def lookup(v: Value) -> Any:
            return v.data if v.is_param else env[id(v)]

        for i in range(start, stop):
            node = self.nodes[i]
            nid = id(node)
            if nid in bypass:
                through = bypass[nid]
                if through is not None:
                    env[id(node.outputs[0])] = env[id(through)]
                continue
            target, args, kwargs = self._compiled[i]
            if nid in overrides:
                kwargs = {**kwargs, **overrides[nid]}
            result = target(*map_values(args, lookup), **map_values(kwargs, lookup))
            if len(node.outputs) == 1:
                env[id(node.outputs[0])] = result
            else:
                for j, out in enumerate(node.outputs):
                    env[id(out)] = result[j]

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[int, Any]:
        env: dict[int, Any] = {}
        defaults = self.module.meta.get("input_defaults", {})
        like = batch["input_ids"]
        for v in self.graph.inputs:
            if id(v) in self._gate_inputs:
                continue  # fed per configuration (_run)
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

    def _outputs(self, config: Config, candidate: Candidate | None
                 ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """(batch, the module's outputs) of ``config`` plus ``candidate`` for each batch (its
        layer's prefix reused when allowed)."""
        full = config.with_(candidate) if candidate is not None else config
        start = self._start_for(candidate)
        prefixes = self._prefix_envs(start, config) if start > 0 else None
        for b, batch in enumerate(self.batches):
            env = dict(prefixes[b]) if prefixes is not None else self._inputs(batch)
            with torch.no_grad():
                self._run(env, start, len(self.nodes), full)
            yield batch, {name: env[id(v)] for name, v in self.graph.outputs.items()
                          if isinstance(v, Value)}

    def embeddings(self, config: Config = Config(),  # noqa: B008
                   candidate: Candidate | None = None) -> torch.Tensor:
        """[rows, width] float32 pooled embeddings of every batch row under ``config`` (an
        embedding task's runner only)."""
        if self.pooling is None:
            raise InputError(f"task '{self.task.name}' ({self.task.kind}) scores no embeddings")
        vectors: torch.Tensor | None = None
        for batch, outputs in self._outputs(config, candidate):
            hidden = model_output(outputs, "last_hidden_state").float()
            pooled = self.pooling(hidden, batch["attention_mask"])
            if vectors is None:
                vectors = torch.empty(self.rows, pooled.shape[-1], dtype=torch.float32)
            vectors[batch["index"]] = pooled
        assert vectors is not None
        return vectors

    def _embedding_outcome(self, vectors: torch.Tensor) -> Outcome:
        if self.task.kind == "embedding-similarity":
            n = self.total
            scores = torch.empty(self.rows, dtype=torch.float32)
            for batch in self.batches:
                scores[batch["index"]] = batch["labels"].float()
            losses, predictions, _ = similarity_scores(self.task, vectors[:n], vectors[n:],
                                                       scores[:n].tolist())
            return Outcome(losses, predictions)
        if any("reference" not in b for b in self.batches):
            raise InputError(f"task '{self.task.name}' scores embeddings against a reference "
                             "model's: attach its embeddings to the batches (attach_reference)")
        reference = torch.empty_like(vectors)
        for batch in self.batches:
            reference[batch["index"]] = batch["reference"].float()
        losses, predictions, _ = agreement_scores(self.task, vectors, reference)
        return Outcome(losses, predictions)

    def evaluate(self, config: Config, candidate: Candidate | None = None) -> Outcome:
        """Losses of ``config`` plus ``candidate`` (its layer's prefix reused when allowed)."""
        if self.embedding:
            outcome = self._embedding_outcome(self.embeddings(config, candidate))
            self.evaluations += 1
            return outcome
        losses = torch.empty(self.total, dtype=torch.float32)
        predictions: list[Any] = [None] * self.total
        qa = self.task.kind == "extractive-qa"
        for batch, outputs in self._outputs(config, candidate):
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
