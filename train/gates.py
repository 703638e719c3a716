"""Hard-concrete L0 gates on attention heads and FFN neurons, trained toward a target size.

The gates of Louizos et al. ("Learning Sparse Neural Networks through L0 Regularization"), as
CoFi and the structured pruning of BERT QA models use them: each unit has a parameter
``log_alpha``; a training step samples ``u ~ U(0, 1)``,
``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)`` and the gate
``z = clamp(s * (r - l) + l, 0, 1)`` with stretch limits ``(l, r) = (-0.1, 1.1)`` and
temperature ``beta = 2/3``, so ``z`` is exactly 0 or 1 with positive probability and
differentiable in between. The probability that a gate is open is
``P(z > 0) = sigmoid(log_alpha - beta * log(-l / r))`` (:func:`open_probability`); at the end
deterministic gates decide: CoFi's form by default (as many gates of a block closed as are
expected to be, the lowest ``log_alpha`` first; :func:`expected_deterministic`) or Louizos'
``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)`` (:func:`deterministic`).

:class:`SizeModel` prices each unit (FLOPs at a sequence length, or parameters) from the
structure analysis and the ops' cost model, so the expected size of the encoder is a
differentiable function of the open probabilities. :class:`L0Gates` is the
:class:`~optc.train.hooks.TrainHooks` that trains them: ``edit`` gates each attention's heads
and each FFN's neurons with :mod:`optc.ir.gating` (one graph input of ``[count]`` values per
group, shared by every example); every step it samples the gates, feeds them through
``TrainableModule.extra_inputs`` and adds the Lagrangian term
``lambda1 * (E[size] - t) + lambda2 * (E[size] - t)^2``, with the gates' parameters minimizing
and the multipliers maximizing it (CoFi). The target ``t`` ramps linearly from 1 to the target
over the warm-up steps. Between steps (and for evaluations) the deterministic gates are fed.
With layer gates, each attention block and FFN block also has one gate that multiplies all of
its units' gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from optc.errors import InputError
from optc.ir.analysis import Structure, node_cost
from optc.ir.core import Module
from optc.ir.gating import gate_name, insert_gate, site
from optc.train.hooks import TrainHooks
from optc.train.module import TrainableModule

__all__ = ["BETA", "LIMITS", "sample", "deterministic", "expected_deterministic",
           "open_probability", "GateGroup",
           "SizeModel", "size_model", "encoder_cost", "L0Gates"]

BETA = 2.0 / 3.0
"""Temperature of the hard-concrete distribution."""
LIMITS = (-0.1, 1.1)
"""Stretch limits (l, r) of the hard-concrete distribution."""

ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
"""Bounds of log_alpha after each step (CoFi): far enough to close or open a gate for sure
(deterministic gate 0 or 1), near enough for its gradient not to vanish."""

Measure = Literal["flops", "params"]


def sample(log_alpha: torch.Tensor, generator: torch.Generator | None = None,
           beta: float = BETA, limits: tuple[float, float] = LIMITS) -> torch.Tensor:
    """One hard-concrete sample per entry of ``log_alpha`` (differentiable in it)."""
    low, high = limits
    u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def deterministic(log_alpha: torch.Tensor, limits: tuple[float, float] = LIMITS) -> torch.Tensor:
    """The gate used after training: ``clamp(sigmoid(log_alpha) * (r - l) + l, 0, 1)``."""
    low, high = limits
    return (torch.sigmoid(log_alpha) * (high - low) + low).clamp(0.0, 1.0)


def expected_deterministic(log_alpha: torch.Tensor, beta: float = BETA,
                           limits: tuple[float, float] = LIMITS) -> torch.Tensor:
    """CoFi's deterministic gates: the ``round(n - sum P(z > 0))`` gates with the lowest
    ``log_alpha`` are 0 (so as many units close as are expected to), the others
    ``sigmoid(0.8 * log_alpha / beta)``."""
    closed = int(round(float(log_alpha.numel() - open_probability(log_alpha.detach(), beta, limits).sum())))
    z = torch.sigmoid(0.8 * log_alpha / beta)
    if closed > 0:
        order = torch.argsort(log_alpha.detach(), stable=True)
        z = z.index_fill(0, order[:closed], 0.0)
    return z


def open_probability(log_alpha: torch.Tensor, beta: float = BETA,
                     limits: tuple[float, float] = LIMITS) -> torch.Tensor:
    """``P(z > 0)`` of each gate (the expected L0 norm is their sum)."""
    low, high = limits
    return torch.sigmoid(log_alpha - beta * math.log(-low / high))


@dataclass(frozen=True)
class GateGroup:
    """The gates of one block: the heads of an attention block or the neurons of an FFN."""

    kind: Literal["head", "neuron"]
    layer: int
    """Position of the layer (in the module the gates were made for)."""
    layer_id: int
    """Stable id of the layer."""
    unit_ids: tuple[int, ...]
    """Stable id of each unit, by position."""
    repeat: int
    """Width of one unit in the gated value (head_dim for heads, 1 for neurons)."""
    unit_cost: float
    """FLOPs or parameters one unit costs."""

    @property
    def count(self) -> int:
        return len(self.unit_ids)

    @property
    def input_name(self) -> str:
        """Graph input that carries this group's gates (``[count]``) in the trainable module."""
        return gate_name(self.kind, self.layer, prefix="__l0_")


@dataclass(frozen=True)
class SizeModel:
    """The encoder's size as a function of its gates: ``fixed + sum(unit_cost * open)``."""

    measure: Measure
    groups: tuple[GateGroup, ...]
    fixed: float
    """Cost of what no gate removes (norms, output-projection biases, ...)."""
    full: float
    """Cost of the whole encoder (every gate open)."""

    def fraction(self, open_units: dict[str, torch.Tensor]) -> torch.Tensor:
        """Size relative to the full encoder, given each group's (expected) open units."""
        total = torch.tensor(self.fixed, dtype=torch.float64)
        for g in self.groups:
            total = total + g.unit_cost * open_units[g.input_name].to(torch.float64).sum()
        return total / self.full


def _slice_numel(module: Module, slices: list) -> int:
    total = 0
    for s in slices:
        shape = module.params[s.param].data.shape
        total += len(s.index) * math.prod(shape) // shape[s.dim]
    return total


def _block_cost(module: Module, nodes: list, measure: Measure, dims: dict[str, int]) -> float:
    if measure == "flops":
        return float(sum(node_cost(n, dims)["flops"] for n in nodes if n is not None))
    return 0.0


def encoder_cost(module: Module, structure: Structure, measure: Measure, seq: int = 128) -> float:
    """FLOPs (one sequence of ``seq`` tokens) or parameters of the encoder's layers: every
    attention and FFN block with its norms (embeddings and heads not included)."""
    dims = {"batch": 1, "seq": seq}
    total = 0.0
    seen: set[str] = set()
    for layer in structure.layers:
        if measure == "params":
            for name in layer.param_names():
                if name not in seen:
                    seen.add(name)
                    total += module.params[name].data.numel()
            continue
        att, ffn = layer.attention, layer.ffn
        if att is not None:
            total += _block_cost(module, [att.query, att.key, att.value, att.node, att.output,
                                          *att.norms], measure, dims)
        if ffn is not None:
            total += _block_cost(module, [ffn.up, ffn.gated, ffn.activation, ffn.down,
                                          *ffn.norms], measure, dims)
    return total


def size_model(module: Module, structure: Structure, measure: Measure, *, heads: bool = True,
               neurons: bool = True, seq: int = 128) -> SizeModel:
    """Price every head and neuron of ``module`` in FLOPs (one sequence of ``seq`` tokens,
    from the ops' cost model) or in parameters; only the kinds asked for get gates."""
    dims = {"batch": 1, "seq": seq}
    groups: list[GateGroup] = []
    gated = 0.0
    for layer in structure.layers:
        att, ffn = layer.attention, layer.ffn
        if heads and att is not None and att.prunable is None:
            # grouped-query attention: shared key/value heads stay when one query head goes
            per_head = [att.query, att.node, att.output] + ([] if att.grouped else
                                                            [att.key, att.value])
            cost = (_slice_numel(module, att.head_slices(0)) if measure == "params" else
                    _block_cost(module, per_head, measure, dims) / att.num_heads)
            groups.append(GateGroup("head", layer.index, layer.id, tuple(att.head_ids),
                                    att.head_dim, float(cost)))
            gated += cost * att.num_heads
        if neurons and ffn is not None:
            cost = (_slice_numel(module, ffn.neuron_slices(0)) if measure == "params" else
                    _block_cost(module, [ffn.up, ffn.gated, ffn.activation, ffn.down], measure,
                                dims) / ffn.width)
            groups.append(GateGroup("neuron", layer.index, layer.id, tuple(ffn.neuron_ids),
                                    1, float(cost)))
            gated += cost * ffn.width
    full = encoder_cost(module, structure, measure, seq)
    if not groups or full <= 0:
        raise InputError("the module has no attention heads or FFN neurons to gate (no "
                         "transformer layers were found; `optc inspect` says why)")
    return SizeModel(measure, tuple(groups), max(full - gated, 0.0), full)


class L0Gates(TrainHooks):
    """Hard-concrete gates trained with a Lagrangian toward ``target`` (a size fraction).

    ``warmup_steps``: the target falls linearly from 1 to ``target`` over these steps (then
    stays); default: half of the steps planned. While it falls, ``lambda1`` is kept >= 0 (the
    constraint is ``E[size] <= t``): a model smaller than the moving target is not pushed
    open, which would wind the multiplier up and make the size lag, then overshoot. ``layers``: one more gate per block, multiplying all of its units' gates.
    ``init_drop``: initial drop rate (log_alpha starts at ``log(1 - d) - log(d)``, as CoFi;
    CoFi's 0.5 halves every gate at the start, 0.1 starts near the trained model).
    ``form``: the deterministic gates used for evaluation and at the end (``cofi`` or
    ``louizos``, see the module docstring).
    The gate parameters (``log_alpha``, per group) and the multipliers have their own Adam
    optimizers; the loop's optimizer never sees them. Deterministic with ``seed``.
    """

    def __init__(self, size: SizeModel, target: float, *, layers: bool = False,
                 warmup_steps: int | None = None, gate_lr: float = 0.1, lambda_lr: float = 0.1,
                 init_drop: float = 0.1, seed: int = 0,
                 form: Literal["cofi", "louizos"] = "cofi") -> None:
        if not 0 < target < 1:
            raise InputError(f"the target size must be a fraction in (0, 1), got {target}")
        if not 0 < init_drop < 1:
            raise InputError(f"init_drop must be in (0, 1), got {init_drop}")
        if form not in ("cofi", "louizos"):
            raise InputError(f"the deterministic form must be cofi or louizos, not {form!r}")
        self.size = size
        self.form = form
        self.target = float(target)
        self.layers = layers
        self.warmup_steps = int(warmup_steps or 0)
        self._warmup_default = warmup_steps is None
        self.generator = torch.Generator().manual_seed(seed)
        mean = math.log(1 - init_drop) - math.log(init_drop)
        init = torch.Generator().manual_seed(seed + 1)

        def param(n: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(mean + 0.01 * torch.randn(n, generator=init))

        self.log_alpha = {g.input_name: param(g.count) for g in size.groups}
        self.block_alpha = {g.input_name: param(1) for g in size.groups} if layers else {}
        self.lambdas = torch.nn.Parameter(torch.zeros(2))
        gates = [*self.log_alpha.values(), *self.block_alpha.values()]
        self.gate_optimizer = torch.optim.Adam(gates, lr=gate_lr)
        self.lambda_optimizer = torch.optim.Adam([self.lambdas], lr=lambda_lr, maximize=True)
        self.total = 0
        self.history: list[dict[str, float]] = []
        """Per step: expected size, target, deterministic size, Lagrangian, multipliers."""
        self._expected: torch.Tensor | None = None

    # -- the IR edit --------------------------------------------------------------------------
    def edit(self, work: Module, structure: Structure) -> None:
        """Insert one shared gate input per group (:mod:`optc.ir.gating`) into the trainable
        module's working IR copy."""
        for g in self.size.groups:
            where = site(structure.layers[g.layer], g.kind)
            if where is None or where.units != g.count:
                raise InputError(f"layer {g.layer} of the module being trained has no "
                                 f"{g.count} {g.kind}s to gate (the gates were sized for "
                                 "another module)")
            insert_gate(work, where, g.input_name)

    # -- gate values --------------------------------------------------------------------------
    def _open(self) -> dict[str, torch.Tensor]:
        probs = {}
        for name, alpha in self.log_alpha.items():
            p = open_probability(alpha)
            if self.layers:
                p = p * open_probability(self.block_alpha[name])
            probs[name] = p
        return probs

    def gates(self, training: bool) -> dict[str, torch.Tensor]:
        """Each group's per-unit gates (sampled when ``training``, else deterministic)."""
        out = {}
        for g in self.size.groups:
            draw = ((lambda a: sample(a, self.generator)) if training else
                    expected_deterministic if self.form == "cofi" else deterministic)
            z = draw(self.log_alpha[g.input_name])
            if self.layers:
                z = z * draw(self.block_alpha[g.input_name])
            out[g.input_name] = z
        return out

    def _feed(self, model: TrainableModule, training: bool) -> None:
        values = self.gates(training)  # on the CPU (its generator): the same on every device
        if not training:
            values = {k: v.detach() for k, v in values.items()}
        device = model.device
        model.extra_inputs = {g.input_name: values[g.input_name].to(device)
                              for g in self.size.groups}

    def expected_size(self) -> torch.Tensor:
        """E[size] as a fraction of the encoder (differentiable in the gate parameters)."""
        return self.size.fraction(self._open())

    @torch.no_grad()
    def hard_size(self) -> float:
        """Size fraction with the deterministic gates (units whose gate is > 0 count)."""
        return float(self.size.fraction({k: (v > 0).float() for k, v in self.gates(False).items()}))

    def target_at(self, step: int) -> float:
        """The target of step ``step``: a linear ramp from 1 over the warm-up, then fixed."""
        if self.warmup_steps <= 0 or step >= self.warmup_steps:
            return self.target
        return 1.0 - (1.0 - self.target) * step / self.warmup_steps

    # -- hooks --------------------------------------------------------------------------------
    def start(self, model: TrainableModule, total_steps: int) -> None:
        self.total = total_steps
        if self._warmup_default:
            self.warmup_steps = total_steps // 2
        self._feed(model, training=False)  # a resumed run may evaluate before its first step

    def before_step(self, model: TrainableModule, step: int) -> None:
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.lambda_optimizer.zero_grad(set_to_none=True)
        self._feed(model, training=True)

    def loss(self, model: TrainableModule, step: int) -> torch.Tensor:
        expected = self.expected_size()
        gap = expected - self.target_at(step)
        self._expected = expected.detach()
        return (self.lambdas[0] * gap + self.lambdas[1] * gap * gap).float()

    def after_step(self, model: TrainableModule, step: int) -> dict[str, float]:
        self.gate_optimizer.step()
        self.lambda_optimizer.step()
        with torch.no_grad():  # CoFi's bounds: a gate pushed far closed can still reopen
            for alpha in (*self.log_alpha.values(), *self.block_alpha.values()):
                alpha.clamp_(*ALPHA_RANGE)
            if step < self.warmup_steps:  # the falling target bounds the size from above only
                self.lambdas[0].clamp_(min=0.0)
        self._feed(model, training=False)  # evaluations see the deterministic gates
        expected = float(self._expected) if self._expected is not None else float("nan")
        target = self.target_at(step)
        lam = self.lambdas.detach()
        record = {"expected_size": expected, "target": target, "size": self.hard_size(),
                  "lagrangian": float(lam[0] * (expected - target)
                                      + lam[1] * (expected - target) ** 2),
                  "lambda1": float(lam[0]), "lambda2": float(lam[1])}
        self.history.append(record)
        return record

    def keep_best(self, step: int) -> bool:
        """Only the final weights match the final gates."""
        return step >= self.total

    def finish(self, model: TrainableModule) -> None:
        self._feed(model, training=False)

    def parameters(self) -> list[torch.Tensor]:
        """The gates' log-alpha and the multipliers (averaged over processes)."""
        return [*self.log_alpha.values(), *self.block_alpha.values(), self.lambdas]

    def state_dict(self) -> dict[str, Any]:
        """Gates, multipliers, their optimizers, the sampling generator and the history."""
        return {"log_alpha": {k: v.detach().clone() for k, v in self.log_alpha.items()},
                "block_alpha": {k: v.detach().clone() for k, v in self.block_alpha.items()},
                "lambdas": self.lambdas.detach().clone(),
                "gate_optimizer": self.gate_optimizer.state_dict(),
                "lambda_optimizer": self.lambda_optimizer.state_dict(),
                "generator": self.generator.get_state(), "warmup_steps": self.warmup_steps,
                "history": [dict(h) for h in self.history]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for mine, saved in ((self.log_alpha, state["log_alpha"]),
                            (self.block_alpha, state["block_alpha"])):
            if set(mine) != set(saved):
                raise InputError("resume: the checkpoint's L0 gates are not this run's (other "
                                 "gated units): resume with the interrupted run's options")
            for name, value in saved.items():
                mine[name].copy_(value)
        self.lambdas.copy_(state["lambdas"])
        self.gate_optimizer.load_state_dict(state["gate_optimizer"])
        self.lambda_optimizer.load_state_dict(state["lambda_optimizer"])
        self.generator.set_state(state["generator"])
        self.warmup_steps = int(state["warmup_steps"])
        self.history = [dict(h) for h in state["history"]]

    # -- results ------------------------------------------------------------------------------
    @torch.no_grad()
    def final_gates(self) -> dict[str, torch.Tensor]:
        """Deterministic per-unit gates of each group (block gates multiplied in)."""
        return {k: v.detach().clone() for k, v in self.gates(False).items()}

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        """Per-unit ranking score (log_alpha, plus the block's when layers are gated)."""
        out = {}
        for name, alpha in self.log_alpha.items():
            s = alpha.detach().clone()
            if self.layers:
                s = s + self.block_alpha[name].detach()
            out[name] = s
        return out

