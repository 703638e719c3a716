"""What the specialization search tries: candidates, configurations of accepted ones, the
published trial order, and how a configuration is committed physically.

Units are addressed by the layer's stable id and by positions in the module the search
started from (heads, neuron groups), so a configuration means the same thing on every worker
and at commit time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from optc.errors import PassError
from optc.ir.analysis import AttentionBlock, FFNBlock, Structure, analyze
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.ir.surgery import remove_heads, remove_neurons
from optc.passes.hard_attention import set_hard_attention

__all__ = ["Candidate", "Config", "Trial", "KINDS", "DEFAULT_ORDER", "Importance", "plan_trials",
           "neuron_groups", "commit", "remove_block_keep_norm"]

KINDS = ("hard-attention", "ffn", "ffn-groups", "attention", "heads")
"""Candidate kinds: hard attention in a layer, a whole FFN block, one group of FFN neurons,
a whole attention block, one attention head."""

DEFAULT_ORDER = KINDS
"""The published order: hard attention first to last layer; then, last to first layer, the
FFN block (then its neuron groups) and the attention block (then its heads)."""


@dataclass(frozen=True, order=True)
class Candidate:
    """One removal (or hard-attention substitution) in one layer."""

    kind: str
    """One of :data:`KINDS`."""
    layer: int
    """Stable id of the layer."""
    units: tuple[int, ...] = ()
    """Head positions (heads) or neuron positions (ffn-groups) in the starting module; (k,)
    for hard-attention."""
    label: str = field(default="", compare=False)
    """Short description for the history (``head 3``, ``ffn group 2/12``)."""

    def describe(self) -> str:
        return f"layer {self.layer} {self.label or self.kind}"


@dataclass(frozen=True)
class Config:
    """A set of accepted candidates (hashable: the key of cached evaluations)."""

    accepted: frozenset[Candidate] = frozenset()

    def with_(self, candidate: Candidate) -> Config:
        return Config(self.accepted | {candidate})

    def layer_signature(self, layers: set[int]) -> tuple[Candidate, ...]:
        """The accepted candidates in ``layers``, sorted (a prefix cache key)."""
        return tuple(sorted(c for c in self.accepted if c.layer in layers))

    def hard_k(self, layer: int) -> int | None:
        """k of the hard attention accepted in ``layer``, or None."""
        return next((c.units[0] for c in self.accepted
                     if c.kind == "hard-attention" and c.layer == layer), None)

    def block_removed(self, kind: str, layer: int) -> bool:
        return any(c.kind == kind and c.layer == layer for c in self.accepted)

    def removed_units(self, kind: str, layer: int) -> set[int]:
        return {u for c in self.accepted if c.kind == kind and c.layer == layer for u in c.units}


@dataclass(frozen=True)
class Trial:
    """A candidate in the search order, tried only when its condition holds."""

    candidate: Candidate
    after_block: Candidate | None = None
    """Tried only if this block candidate was rejected with a loss below the fine-grained
    threshold (1.1x the best loss so far, as published)."""


Importance = tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]
"""(head scores, neuron scores), each by layer id: one score per head / neuron position."""


def neuron_groups(width: int, groups: int,
                  scores: torch.Tensor | None = None) -> list[tuple[int, ...]]:
    """``width`` neuron positions split into ``groups`` groups (sizes differ by at most one):
    contiguous positions, or with ``scores`` consecutive ranks from the lowest score up
    (each group's positions sorted)."""
    groups = max(1, min(groups, width))
    bounds = [i * width // groups for i in range(groups + 1)]
    order = _ranked(width, scores)
    return [tuple(sorted(order[bounds[i]:bounds[i + 1]])) for i in range(groups)]


def _ranked(count: int, scores: torch.Tensor | None) -> list[int]:
    """Positions 0..count-1, by ascending score when scores are given (ties by position)."""
    if scores is None:
        return list(range(count))
    if scores.numel() != count:
        raise PassError(f"importance has {scores.numel()} scores for {count} units")
    return sorted(range(count), key=lambda i: (float(scores[i]), i))


def plan_trials(structure: Structure, kinds: tuple[str, ...] = DEFAULT_ORDER,
                neuron_group_count: int = 12, k: int = 30,
                importance: Importance | None = None) -> list[Trial]:
    """The trials in published order, restricted to ``kinds``.

    Hard attention runs over layers first to last; then, from the last layer to the first,
    the kinds of each layer in the order of ``kinds`` (a group or head kind follows its
    block's trial when both are chosen and is conditional on that block's rejection).

    With ``importance`` (scores by layer id, beyond the published search), a layer's heads
    are tried least important first and its neuron groups are formed by rank instead of
    position: group 1 holds the least important neurons, the last group the most important.
    """
    head_scores, neuron_scores = importance if importance is not None else ({}, {})
    trials: list[Trial] = []
    if "hard-attention" in kinds:
        for layer in structure.layers:
            if layer.attention is not None:
                trials.append(Trial(Candidate("hard-attention", layer.id, (k,),
                                              f"hard attention k={k}")))
    per_layer = [k for k in kinds if k != "hard-attention"]
    for layer in reversed(structure.layers):
        done: set[str] = set()
        for kind in per_layer:
            family = "ffn" if kind in ("ffn", "ffn-groups") else "attention"
            if family in done:
                continue
            done.add(family)
            whole = family in per_layer
            units = "ffn-groups" if family == "ffn" else "heads"
            block = layer.ffn if family == "ffn" else layer.attention
            if block is None:
                continue
            block_candidate = Candidate(family, layer.id, label=f"{family} block")
            if whole:
                trials.append(Trial(block_candidate))
            if units in per_layer and _unit_block_ok(block):
                gate = block_candidate if whole else None
                if family == "ffn":
                    parts = neuron_groups(block.width, neuron_group_count,
                                          neuron_scores.get(layer.id))
                    for i, part in enumerate(parts):
                        trials.append(Trial(Candidate("ffn-groups", layer.id, part,
                                                      f"ffn group {i + 1}/{len(parts)}"), gate))
                else:
                    for h in _ranked(block.num_heads, head_scores.get(layer.id)):
                        trials.append(Trial(Candidate("heads", layer.id, (h,),
                                                      f"head {block.head_ids[h]}"), gate))
    return trials


def _unit_block_ok(block: AttentionBlock | FFNBlock) -> bool:
    if isinstance(block, AttentionBlock):
        return block.prunable is None
    return block.up is not None and block.down is not None


def remove_block_keep_norm(module: Module, block: AttentionBlock | FFNBlock) -> None:
    """Remove a block's sublayer (its contribution to the residual add becomes zero), keeping
    the residual path and the block's post-LN LayerNorm (for pre-LN models this is the same
    as bypassing the block)."""
    if block.residual is None or block.stream_in is None:
        raise PassError("the block's residual add was not found, so it cannot be removed")
    module.graph.replace_all_uses(block.residual.outputs[0], block.stream_in)


def commit(module: Module, config: Config) -> dict[str, int]:
    """Apply ``config`` to ``module`` (the module the search started from, or an identical
    clone) with the structural edits, then DCE. Returns counts of what was removed."""
    structure = analyze(module)
    counts = {"hard_attention_layers": 0, "ffn_blocks": 0, "attention_blocks": 0,
              "heads": 0, "neurons": 0}
    for layer in structure.layers:
        lid = layer.id
        k = config.hard_k(lid)
        if layer.attention is not None and k is not None:
            set_hard_attention(layer.attention.node, k)
            counts["hard_attention_layers"] += 1
    for layer in structure.layers:
        lid = layer.id
        if layer.attention is not None and not config.block_removed("attention", lid):
            heads = config.removed_units("heads", lid)
            if heads:
                remove_heads(module, layer.attention, heads)
                counts["heads"] += len(heads)
        if layer.ffn is not None and not config.block_removed("ffn", lid):
            neurons = config.removed_units("ffn-groups", lid)
            if neurons:
                remove_neurons(module, layer.ffn, neurons)
                counts["neurons"] += len(neurons)
    for layer in reversed(structure.layers):
        lid = layer.id
        if layer.ffn is not None and config.block_removed("ffn", lid):
            remove_block_keep_norm(module, layer.ffn)
            counts["ffn_blocks"] += 1
        if layer.attention is not None and config.block_removed("attention", lid):
            remove_block_keep_norm(module, layer.attention)
            counts["attention_blocks"] += 1
    eliminate_dead_code(module)
    return counts

