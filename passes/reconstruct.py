"""Layer-wise reconstruction: refit the output projections of pruned blocks by least squares so
that the residual stream again follows the unpruned model's, without gradient training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from optc.errors import InputError, PassError, PipelineSpecError
from optc.ir.analysis import AttentionBlock, FFNBlock, analyze
from optc.ir.core import Module, Node, Parameter, Value
from optc.passes.base import PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.registry import register_pass
from optc.passes.support.calibration import CalibrationOptions, tap
from optc.passes.support.reference import TakesReference

__all__ = ["Reconstruct", "refit_block"]


@dataclass
class _Site:
    """One block to refit: its output projection in the module being rewritten, and the
    values that the fit reads there and in the reference (unpruned) module."""

    label: str
    projection: Node
    """The ``linear`` whose weight and bias are refitted (down projection, or attention output)."""
    features: Value
    """Its input: the kept neurons' activations, or the kept heads' concatenated results."""
    stream_in: Value
    """The residual stream that the block's add puts the projection's result on."""
    target: Value
    """In the reference module: the same block's residual add result (the stream to follow)."""


def _projection(block: AttentionBlock | FFNBlock) -> Node | None:
    return block.output if isinstance(block, AttentionBlock) else block.down


def _site(label: str, block: AttentionBlock | FFNBlock, ref: AttentionBlock | FFNBlock) -> _Site | str:
    """The fit of ``block`` against ``ref``'s residual sum, or why it cannot be refitted."""
    lin, ref_lin = _projection(block), _projection(ref)
    if lin is None or ref_lin is None or block.residual is None or ref.residual is None \
            or block.stream_in is None:
        return "no output projection on a residual add"
    out = lin.outputs[0]
    if not any(a is out for a in block.residual.args) or lin.op != "linear":
        return "its projection does not feed the residual add directly"
    weight, bias = lin.arg(1), lin.arg(2)
    if not isinstance(weight, Parameter) or not weight.data.is_floating_point() or weight.attrs \
            or any(lin.arg(i) is not None for i in (3, 4, 5)):
        return ("its projection is quantized or sparse: run reconstruct before quantize and "
                "sparsify")
    if bias is not None and not isinstance(bias, Parameter):
        return "its projection's bias is computed, not a weight"
    if any(len(p.users()) > 1 for p in (weight, bias) if p is not None):
        return "its projection's weights are shared with other nodes (a refit would change them too)"
    if out.tensor_type.shape[-1] != ref_lin.outputs[0].tensor_type.shape[-1]:
        return "its width differs from the reference's"
    return _Site(label, lin, lin.args[0], block.stream_in, ref.residual.outputs[0])


@torch.no_grad()
def refit_block(module: Module, reference: Module, site: _Site, batches: list[Any],
                ridge: float) -> tuple[float, float]:
    """Refit ``site``'s projection in ``module`` (weight and bias replaced by new tensors) to
    the least-squares solution of ``stream_in + projection(features) = reference's residual
    sum`` over the real (unpadded) tokens of ``batches``, with ridge ``ridge`` times the mean
    feature energy on the weight (not the bias). Returns the relative error
    ``|module's residual sum - reference's| / |reference's|`` before and after."""
    run = tap(module, [site.features, site.stream_in], only=True)
    ref_run = tap(reference, [site.target], only=True)
    weight = site.projection.arg(1)
    bias = site.projection.arg(2)
    k = weight.data.shape[1]
    cols = k + (1 if bias is not None else 0)
    xtx = torch.zeros(cols, cols, dtype=torch.float64)
    xty = torch.zeros(cols, weight.data.shape[0], dtype=torch.float64)
    yty = target_energy = 0.0
    for batch in batches:
        inputs = batch.inputs
        got, want = run(**inputs), ref_run(**inputs)
        mask = inputs.get("attention_mask")
        keep = (mask != 0) if mask is not None else torch.ones(got["tap.0"].shape[:-1], dtype=torch.bool)
        x = got["tap.0"][keep].double()
        target = want["tap.0"][keep].double()
        y = target - got["tap.1"][keep].double()
        if bias is not None:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        xtx += x.T @ x
        xty += x.T @ y
        yty += float((y * y).sum())
        target_energy += float((target * target).sum())
    if target_energy == 0.0:
        raise PassError("reconstruct: the calibration data gave no tokens")

    def error(w: torch.Tensor) -> float:
        residual = yty - 2 * float((w * xty).sum()) + float((w * (xtx @ w)).sum())
        return max(residual, 0.0) ** 0.5 / target_energy ** 0.5

    old = weight.data.double().T
    if bias is not None:
        old = torch.cat([old, bias.data.double()[None]], dim=0)
    system = xtx.clone()
    scale = float(xtx.diagonal()[:k].mean()) or 1.0
    system.diagonal()[:k] += ridge * scale
    new = torch.linalg.lstsq(system, xty).solution if ridge == 0 else torch.linalg.solve(system, xty)
    before, after = error(old), error(new)
    if after >= before:  # the fit cannot do worse on its own data; keep what is there if equal
        return before, before
    weight.data = new[:k].T.contiguous().to(weight.data.dtype)
    if bias is not None:
        bias.data = new[k].contiguous().to(bias.data.dtype)
    return before, after


@register_pass
@dataclass(frozen=True)
class Reconstruct(CalibrationOptions, TakesReference):
    """Refit pruned blocks' output projections so each layer follows the unpruned model.

    After heads or FFN neurons are removed, a block's output projection still weighs the kept
    units as it did when the removed ones were there. This pass solves, block by block from
    the first layer to the last, a linear least-squares problem: the new weight and bias of the
    projection (FFN down projection, attention output projection) that make the block's
    residual sum (``stream + projection(kept units)``, before a post-LN norm) closest to the
    reference model's on calibration tokens (padding excluded), the kept units' activations
    computed by the module as refitted so far, so later blocks also correct the drift of
    earlier ones. No labels and no gradient steps (MiniLM, 2048 examples, 1 thread on
    a loaded 2-core machine: 3 min on SST-2's short sentences, 12 on RTE's long pairs), in the
    spirit of post-training pruning's mask tuning (Kwon et al.,
    2022), which rescales kept units where this refits whole projections.
    Reference: ``teacher=PATH`` (an optc artifact), else the module as it entered the pipeline
    (``ctx.reference``; ``optc specialize --then`` hands over the unpruned model).
    Layers are matched by stable layer id; blocks removed whole are left alone.
    Rewrites: new weight and bias tensors of the chosen projections; shapes and every other
    weight unchanged. A block whose fit does not lower its error keeps its weights.
    Stats: ``refitted`` (blocks whose weights changed), ``error`` (each block's relative error
    ``[before, after]`` on the calibration tokens), ``skipped`` (blocks that cannot be refitted,
    and why), ``teacher``.
    Refuses: no reference; a reference of another hidden size; quantized or sparse projections
    (run it before ``quantize``/``sparsify``); no calibration data. Projections whose weights
    other nodes also read (shared layers) are skipped, said in ``skipped``.
    """

    name = "reconstruct"

    teacher: str | None = None
    """Reference optc artifact (default: the module as it entered the pipeline)."""
    blocks: Literal["ffn", "attention", "both"] = "both"
    """Which blocks' output projections to refit."""
    layers: Literal["pruned", "all"] = "pruned"
    """pruned: blocks with fewer heads or neurons than the reference's; all: every block
    present in both (also corrects the drift that upstream removals leave in intact blocks)."""
    ridge: float = 1e-3
    """Ridge penalty on the weight, relative to the mean squared feature (0: plain least squares)."""
    samples: int = 2048
    """Calibration examples to read (on CoLA, 512 left the fit overfitted: dev MCC 25.4
    against 29.7 with 2048)."""
    batch_size: int = 32
    """Calibration batch size (the other calibration options are
    :class:`~optc.passes.support.calibration.CalibrationOptions`)."""
    def __post_init__(self) -> None:
        if self.ridge < 0:
            raise PipelineSpecError(f"reconstruct ridge must be >= 0, got {self.ridge}")
        self.check_calibration_options("reconstruct")

    @property
    def uses_data(self) -> bool:
        """Always reads calibration data (the CLI's --data fills it)."""
        return True

    def _reference(self, ctx: PassContext) -> tuple[Module, str]:
        found = self.reference(ctx)
        if found is None:
            raise InputError("reconstruct needs the unpruned model: run it in a pipeline after "
                             "the pruning passes, or pass teacher=PATH")
        return found

    def _sites(self, module: Module, reference: Module) -> tuple[list[_Site], dict[str, str]]:
        mine, theirs = analyze(module), analyze(reference)
        sites: list[_Site] = []
        skipped: dict[str, str] = {}
        kinds = ("attention", "ffn") if self.blocks == "both" else (self.blocks,)
        for layer in mine.layers:
            ref = theirs.by_id(layer.id)
            if ref is None:
                continue
            for kind in kinds:
                block, ref_block = getattr(layer, kind), getattr(ref, kind)
                if block is None or ref_block is None:
                    continue
                smaller = (block.num_heads < ref_block.num_heads if kind == "attention"
                           else block.width < ref_block.width)
                if self.layers == "pruned" and not smaller:
                    continue
                label = f"layer {layer.id} {kind}"
                site = _site(label, block, ref_block)
                if isinstance(site, str):
                    skipped[label] = site
                else:
                    sites.append(site)
        return sites, skipped

    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        reference, origin = self._reference(ctx)
        mine, theirs = _width(module), _width(reference)
        if None not in (mine, theirs) and mine != theirs:  # None: no block left to refit
            raise InputError(f"reconstruct: the reference's hidden size {theirs} differs from "
                             f"the model's {mine}")
        sites, skipped = self._sites(module, reference)
        compressed = [f"{label}: {why}" for label, why in skipped.items() if "quantized" in why]
        if compressed:
            raise InputError(f"reconstruct cannot refit {compressed[0]}")
        stats: dict[str, Any] = {"teacher": origin, "refitted": 0}
        if skipped:
            stats["skipped"] = skipped
        if not sites:
            return PassResult(False, stats)
        batches = self.calibration(module, ctx, "reconstruct", use_labels=False)
        errors = {}
        for site in sites:
            before, after = refit_block(module, reference, site, batches, self.ridge)
            errors[site.label] = [round(before, 6), round(after, 6)]
            stats["refitted"] += after < before
        stats["error"] = errors
        return PassResult(stats["refitted"] > 0, stats)


def _width(module: Module) -> int | None:
    """The residual stream's width (hidden size) of ``module``'s first layer."""
    for layer in analyze(module).layers:
        for block in (layer.attention, layer.ffn):
            if block is not None and block.stream_in is not None:
                return int(block.stream_in.tensor_type.shape[-1])
    return None
