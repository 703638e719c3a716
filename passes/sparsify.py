"""Magnitude sparsification of linear weights (unstructured, N:M, block)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch

from optc.errors import PassError
from optc.ir.analysis import analyze
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Node, Parameter
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["Sparsify", "ROLES", "linear_targets"]

ROLES = ("attention", "ffn", "query", "key", "value", "output", "up", "down", "head")
"""Target roles: ``attention`` = query/key/value/output projections, ``ffn`` = up/down
projections, or one projection by name; ``head`` = linear layers outside the transformer layers
(pooler, classifier). Embeddings are never sparsified."""

_NM = re.compile(r"(\d+):(\d+)\Z")
_BLOCK = re.compile(r"(\d+)x(\d+)\Z")


def linear_targets(module: Module, roles: tuple[str, ...]) -> list[tuple[int | None, str, Node]]:
    """``(layer position or None, role, linear node)`` for each linear whose role is in
    ``roles`` (found by the structure analysis, never by parameter names), in graph order."""
    wanted = set()
    for role in roles:
        wanted |= {"query", "key", "value", "output"} if role == "attention" else (
            {"up", "down"} if role == "ffn" else {role})
    found: list[tuple[int | None, str, Node]] = []
    in_layers: set[int] = set()
    for layer in analyze(module).layers:
        blocks = []
        if layer.attention is not None:
            a = layer.attention
            blocks += [("query", a.query), ("key", a.key), ("value", a.value), ("output", a.output)]
        if layer.ffn is not None:
            blocks += [("up", layer.ffn.up), ("down", layer.ffn.down)]
        for role, node in blocks:
            if node is None:
                continue
            in_layers.add(id(node))
            if role in wanted:
                found.append((layer.index, role, node))
    if "head" in wanted:
        found += [(None, "head", n) for n in module.graph
                  if n.op == "linear" and id(n) not in in_layers]
    order = {id(n): i for i, n in enumerate(module.graph)}
    return sorted(found, key=lambda t: order[id(t[2])])


def _ceil6(x: float) -> float:
    return min(1.0, math.ceil(x * 1e6 - 1e-6) / 1e6)


@register_pass
@dataclass(frozen=True)
class Sparsify(Pass):
    """Zero the smallest-magnitude weights of linear layers, in a pattern recorded in the IR.

    Rewrites: each target weight is replaced by a copy with its smallest entries (or N:M
    group members, or blocks by L2 norm) set to zero, and gets a ``sparsity`` attribute
    (pattern, density) that the verifier checks and training keeps. Targets are chosen by role
    from the structure analysis (default: attention and FFN projections; never embeddings; the
    pooler and classifier only with ``targets=head``).
    Refuses: sparsity outside [0, 1), an N:M or block shape that does not tile a weight, an
    int8 weight (sparsify before quantize), a weight already sparse in another pattern.
    Guarantees: the IR is unchanged when it refuses; running it twice is a no-op the second
    time; zeros already in a weight stay zero.
    """

    name = "sparsify"

    sparsity: float | None = None
    """Fraction of weights to zero, in [0, 1); for ``n:m`` it is ``1 - n/m`` (may be omitted)."""
    pattern: str = "unstructured"
    """``unstructured``, ``block`` or ``N:M`` (e.g. ``2:4``: at most N nonzeros in each group
    of M consecutive inputs)."""
    block: str = "1x4"
    """Block shape ``RxC`` (output rows x input columns) for ``pattern=block``."""
    scope: Literal["global", "per_layer", "per_tensor"] = "per_tensor"
    """Where the magnitude threshold is shared: across all targets, within each transformer
    layer, or per weight (every weight exactly at ``sparsity``). N:M is always per group."""
    targets: tuple[str, ...] = ("attention", "ffn")
    """Roles to sparsify: attention, ffn, query, key, value, output, up, down, head."""

    def __post_init__(self) -> None:
        bad = [t for t in self.targets if t not in ROLES]
        if bad or not self.targets:
            raise ValueError(f"unknown target {bad[0] if bad else '(none)'!r}; "
                             f"choose from {', '.join(ROLES)}")
        nm = _NM.match(self.pattern)
        if self.pattern not in ("unstructured", "block") and not nm:
            raise ValueError(f"pattern must be unstructured, block or N:M (e.g. 2:4), got {self.pattern!r}")
        if nm:
            n, m = int(nm[1]), int(nm[2])
            if not 0 < n < m:
                raise ValueError(f"pattern {self.pattern}: need 0 < N < M (N nonzeros kept per M)")
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(f"pattern {self.pattern} means sparsity={1 - n / m:g}, not "
                                 f"{self.sparsity:g}; drop the sparsity option")
        elif self.sparsity is None:
            raise ValueError(f"pattern {self.pattern} needs sparsity=FRACTION (e.g. sparsity=0.9)")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity:g}")
        if self.pattern == "block":
            b = _BLOCK.match(self.block)
            if not b or min(int(b[1]), int(b[2])) < 1:
                raise ValueError(f"block must be RxC with R, C >= 1 (e.g. 4x4), got {self.block!r}")

    # -- the pattern ------------------------------------------------------------------------------
    def _nm(self) -> tuple[int, int] | None:
        nm = _NM.match(self.pattern)
        return (int(nm[1]), int(nm[2])) if nm else None

    def _block(self) -> tuple[int, int]:
        b = _BLOCK.match(self.block)
        return int(b[1]), int(b[2])

    def _attribute(self, density: float) -> Sparsity:
        nm = self._nm()
        if nm:
            return Sparsity("n:m", _ceil6(nm[0] / nm[1]), n=nm[0], m=nm[1])
        if self.pattern == "block":
            return Sparsity("block", _ceil6(density), block=self._block())
        return Sparsity("unstructured", _ceil6(density))

    def _why_not(self, param: Parameter) -> str | None:
        w = param.data
        if not w.dtype.is_floating_point:
            return (f"weight @{param.name} is {w.dtype} (quantized): sparsify before quantize "
                    "(e.g. sparsify{...},quantize{...})")
        if w.is_meta:
            return f"weight @{param.name} has no data (IR loaded without weights)"
        old = param.attrs.get("sparsity")
        if isinstance(old, Sparsity):
            mine = "n:m" if self._nm() else self.pattern
            if old.pattern != mine or (mine == "n:m" and (old.n, old.m) != self._nm()) or (
                    mine == "block" and tuple(old.block) != self._block()):
                return (f"weight @{param.name} is already sparse with pattern {old.pattern}; "
                        "sparsify it again with the same pattern, or choose other targets")
        rows, cols = w.shape
        nm = self._nm()
        if nm and cols % nm[1]:
            return (f"pattern {self.pattern} does not divide weight @{param.name}: its input "
                    f"dimension {cols} is not a multiple of {nm[1]}; choose M dividing {cols}")
        if self.pattern == "block":
            r, c = self._block()
            if rows % r or cols % c:
                return (f"block {self.block} does not tile weight @{param.name} of shape "
                        f"[{rows}, {cols}]; choose a block whose sides divide it")
        return None

    def _targets(self, module: Module) -> list[tuple[int | None, str, Parameter]]:
        seen: set[str] = set()
        out = []
        for layer, role, node in linear_targets(module, self.targets):
            w = node.arg(1)
            if isinstance(w, Parameter) and w.name not in seen:
                seen.add(w.name)
                out.append((layer, role, w))
        return out

    def requires(self, module: Module) -> str | None:
        targets = self._targets(module)
        if not targets:
            return (f"no linear layer has a role in targets={','.join(self.targets)} "
                    f"(the module has {analyze(module).describe()})")
        for _, _, param in targets:
            reason = self._why_not(param)
            if reason:
                return reason
        return None

    # -- scores and masks ---------------------------------------------------------------------------
    def _scores(self, w: torch.Tensor) -> torch.Tensor:
        """Per-unit magnitudes: entries (unstructured) or block L2 norms (block)."""
        a = w.detach().float().abs()
        if self.pattern == "block":
            r, c = self._block()
            tiles = a.reshape(a.shape[0] // r, r, a.shape[1] // c, c)
            return tiles.pow(2).sum((1, 3)).sqrt()
        return a

    def _expand(self, keep: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.pattern == "block":
            r, c = self._block()
            return keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
        return keep

    def _nm_mask(self, w: torch.Tensor) -> torch.Tensor:
        n, m = self._nm()
        groups = w.detach().float().abs().reshape(-1, m)
        top = groups.topk(n, dim=1).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
        return keep.reshape(w.shape) & (w != 0)

    @staticmethod
    def _keep_top(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
        """Keep the largest ``1 - sparsity`` of the scores pooled together (ties broken by
        position, so exactly that many survive); zeros never survive."""
        flat = torch.cat([s.reshape(-1) for s in scores]) if len(scores) > 1 else scores[0].reshape(-1)
        prune = int(round(sparsity * flat.numel()))
        if not prune:
            keep = flat != 0
        else:
            threshold = flat.kthvalue(prune).values
            keep = flat > threshold
            extra = flat.numel() - int(keep.sum()) - prune  # ties at the threshold to keep
            if extra > 0 and threshold > 0:
                ties = (flat == threshold).nonzero().squeeze(1)
                keep[ties[-extra:]] = True  # the first ties go
        out, start = [], 0
        for s in scores:
            out.append(keep[start:start + s.numel()].reshape(s.shape))
            start += s.numel()
        return out

    def run(self, module: Module) -> PassResult:
        targets = self._targets(module)
        masks: dict[str, torch.Tensor] = {}
        if self._nm():
            for _, _, p in targets:
                masks[p.name] = self._nm_mask(p.data)
        else:
            groups: dict[object, list[Parameter]] = {}
            for layer, _, p in targets:
                key = {"global": 0, "per_layer": ("layer", layer), "per_tensor": p.name}[self.scope]
                groups.setdefault(key, []).append(p)
            for params in groups.values():
                scores = [self._scores(p.data) for p in params]
                for p, keep in zip(params, self._keep_top(scores, self.sparsity), strict=True):
                    masks[p.name] = self._expand(keep, p.data)
        changed, zeros, total = [], 0, 0
        per_role: dict[str, list[int]] = {}
        for _, role, p in targets:
            keep = masks[p.name]
            w = p.data
            pruned = torch.where(keep, w, torch.zeros((), dtype=w.dtype))
            nz = int(keep.sum())
            attr = self._attribute(nz / w.numel())
            if not torch.equal(pruned, w) or p.attrs.get("sparsity") != attr:
                p.data = pruned
                p.attrs["sparsity"] = attr
                changed.append(p.name)
            zeros += w.numel() - nz
            total += w.numel()
            acc = per_role.setdefault(role, [0, 0])
            acc[0] += w.numel() - nz
            acc[1] += w.numel()
        if total == 0:
            raise PassError("no weight to sparsify")
        return PassResult(bool(changed), {
            "weights": len(targets),
            "changed": len(set(changed)),
            "sparsity": round(zeros / total, 4),
            "by_role": ",".join(f"{r}={z / n:.3f}" for r, (z, n) in per_role.items()),
        })
