"""Importance of layers, heads and neurons: weight magnitude, Taylor scores, contribution.

- ``magnitude``: the L2 norm of a head's or neuron's coupled parameter slices.
- ``taylor``: first-order Taylor importance of a multiplicative gate on each head's output /
  each neuron's activation ("Are Sixteen Heads Really Better than One?"): with task labels,
  the mean over examples of ``|dL/dg|`` at ``g = 1`` for the task loss. Without labels the
  loss is the KL divergence to the unpruned model's own outputs; its gradient is zero at
  ``g = 1``, so the score is its second-order Taylor term, the Fisher information
  ``E[(d log p(y|x)/dg)^2]`` with ``y`` sampled from the model's output distribution
  (categorical over ``logits``; unit-variance Gaussian around other outputs).
- layer contribution: the mean cosine similarity between a layer's input and output hidden
  states over non-padding tokens (Poor Man's BERT); the most similar layers change the
  representation least.

Gates (:mod:`optc.ir.gating`, one per example and block) and probes are inserted into a clone
of the module; the module itself is not changed.
"""

from __future__ import annotations

import torch

from optc.backends.eager import to_eager
from optc.ir.analysis import AttentionBlock, FFNBlock, Structure, analyze
from optc.ir.core import Module, Value
from optc.ir.gating import insert_gates, sites
from optc.tasks.batching import Batch

__all__ = ["head_magnitude", "neuron_magnitude", "taylor_scores", "layer_similarity",
           "normalize_per_layer"]


def _slice_norm(module: Module, slices: list) -> float:
    total = 0.0
    for s in slices:
        part = module.params[s.param].data.index_select(s.dim, torch.tensor(s.index))
        total += float(part.double().pow(2).sum())
    return total ** 0.5


def head_magnitude(module: Module, block: AttentionBlock) -> torch.Tensor:
    """L2 norm of each head's q/k/v rows (with biases) and output-projection columns."""
    return torch.tensor([_slice_norm(module, block.head_slices(h)) for h in range(block.num_heads)])


def neuron_magnitude(module: Module, block: FFNBlock) -> torch.Tensor:
    """L2 norm of each neuron's up row (with bias) and down column."""
    up = block.up.args[1].data.double().pow(2).sum(1)
    if isinstance(block.up.arg(2), Value):
        up = up + block.up.arg(2).data.double().pow(2)
    down = block.down.args[1].data.double().pow(2).sum(0)
    return (up + down).sqrt().float()


def normalize_per_layer(scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Divide each layer's scores by their L2 norm, so that global ranking compares layers
    fairly (as Michel et al. do for heads)."""
    return {i: s / s.norm().clamp_min(1e-12) for i, s in scores.items()}


def _loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor | None,
          mask: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    """The per-batch summed loss and whether it is a labelled (first-order) loss."""
    logits = outputs.get("logits")
    if logits is not None and labels is not None:
        if labels.is_floating_point():
            return torch.nn.functional.mse_loss(logits.squeeze(-1), labels, reduction="sum"), True
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), True
    if logits is not None:
        probs = torch.softmax(logits.detach().float(), -1)
        sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), sampled.view(-1), reduction="sum"), False
    out = next(iter(outputs.values()))
    target = out.detach() + torch.randn(out.shape, generator=generator)
    err = 0.5 * (target - out).pow(2)
    if mask is not None and err.dim() == 3 and mask.shape == err.shape[:2]:
        err = err * mask.unsqueeze(-1).to(err.dtype)
    return err.sum(), False


def taylor_scores(module: Module, batches: list[Batch], structure: Structure | None = None,
                  heads: bool = True, neurons: bool = True, seed: int = 0,
                  ) -> tuple[dict[int | tuple[int, str], torch.Tensor], dict[int, torch.Tensor]]:
    """Taylor importance per layer: ({layer: scores per head}, {layer: scores per neuron});
    a decoder layer's cross-attention heads are scored under ``(layer, "cross")``."""
    structure = structure or analyze(module)
    gated = module.clone()
    kinds = (("head", "cross_head") if heads else ()) + (("neuron",) if neurons else ())
    gates = insert_gates(gated, sites(analyze(gated), kinds), per_example=True)
    runner = to_eager(gated)
    totals = {g.name: torch.zeros(g.site.units, dtype=torch.float64) for g in gates}
    count = 0
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        size = next(iter(batch.inputs.values())).shape[0]
        values = {g.name: g.values(batch=size).requires_grad_() for g in gates}
        with torch.enable_grad():
            outputs = runner(**batch.inputs, **values)
            loss, labelled = _loss(outputs, batch.labels, batch.inputs.get("attention_mask"),
                                   generator)
            grads = torch.autograd.grad(loss, list(values.values()), allow_unused=True)
        for name, grad in zip(values, grads, strict=True):
            if grad is None:
                continue
            per_example = grad.double().abs() if labelled else grad.double().pow(2)
            totals[name] += per_example.sum(0)
        count += size
    head_scores: dict[int | tuple[int, str], torch.Tensor] = {}
    neuron_scores: dict[int, torch.Tensor] = {}
    for g in gates:
        score = (totals[g.name] / max(count, 1)).float()
        if g.site.kind == "neuron":
            neuron_scores[g.site.layer] = score
        else:
            head_scores[g.site.layer if g.site.kind == "head" else (g.site.layer, "cross")] = score
    return head_scores, neuron_scores


def layer_similarity(module: Module, batches: list[Batch], structure: Structure | None = None,
                     ) -> list[float]:
    """Mean cosine similarity between each layer's input and output hidden states."""
    structure = structure or analyze(module)
    probe = module.clone()
    probe_layers = analyze(probe).layers
    keys = []
    for layer in probe_layers:
        if layer.stream_in is None or layer.stream_out is None:
            keys.append(None)
            continue
        probe.graph.set_output(f"__in_{layer.index}", layer.stream_in)
        probe.graph.set_output(f"__out_{layer.index}", layer.stream_out)
        keys.append((f"__in_{layer.index}", f"__out_{layer.index}"))
    runner = to_eager(probe)
    sums = [0.0] * len(keys)
    counts = [0.0] * len(keys)  # non-padding tokens seen, per layer
    with torch.inference_mode():
        for batch in batches:
            outputs = runner(**batch.inputs)
            mask = batch.inputs.get("attention_mask")
            for i, key in enumerate(keys):
                if key is None:
                    continue
                cos = torch.nn.functional.cosine_similarity(outputs[key[0]], outputs[key[1]], dim=-1)
                weight = (mask.to(cos.dtype) if mask is not None and mask.shape == cos.shape
                          else torch.ones_like(cos))
                sums[i] += float((cos * weight).sum())
                counts[i] += float(weight.sum())
    return [s / max(c, 1.0) if k is not None else float("nan")
            for s, c, k in zip(sums, counts, keys, strict=True)]
