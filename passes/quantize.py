"""int8 quantization of linear layers (dynamic, static (calibrated), accuracy-aware, QAT), of
the embedding tables (per row) and, optionally, of the attention matmuls (dynamic or static)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from optc.backends.eager import to_eager
from optc.errors import PipelineSpecError
from optc.ir.analysis import analyze
from optc.ir.attributes import Quantization
from optc.ir.core import Module, Node, Parameter
from optc.ir.ops.quantized_embedding import TABLE_BITS
from optc.ir.ops.quantized_linear import quantize_weight
from optc.passes.base import PassResult
from optc.passes.context import EMPTY_CONTEXT, PassContext
from optc.passes.distill import Distill
from optc.passes.finetune import pass_task, pass_tokenizer, requires_task
from optc.passes.registry import register_pass
from optc.passes.sparsify import ROLES, linear_targets
from optc.passes.support.calibration import (
    OBSERVERS,
    RangeObserver,
    calibration_batches,
    linears_of,
    observe_inputs,
)
from optc.passes.support.qat import train_qat
from optc.tasks import evaluate
from optc.tasks.batching import Batch
from optc.tasks.registry import get_task

__all__ = ["Quantize", "QParams", "MATMULS", "apply_int8_embeddings", "int8_tables"]

MATMULS = "matmuls"
"""The target name of the attention ops' two matmuls (Q·Kᵀ and P·V)."""

QParams = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""Static activation ``(scale f32[], zero_point u8[])`` of each linear, by its weight's name."""


@register_pass
@dataclass(frozen=True)
class Quantize(Distill):
    """Quantize linear layers to int8: weights per output channel (symmetric), activations per
    tensor (affine uint8), at run time or calibrated.

    Rewrites: each target ``linear`` gets an ``i8`` weight (``round(W / scale)``, within
    ±(2**(bits-1) - 1): 7 bits by default, exact on every ONNX Runtime CPU kernel) with
    a ``quantization`` attribute and a new ``f32[out]`` scale parameter as its ``weight_scale``
    operand.

    - ``mode=dynamic``: activations are quantized per tensor when the layer runs (the scheme of
      ONNX Runtime's ``DynamicQuantizeMatMul``, which is the ONNX lowering; eager and
      TorchScript run ``torch._int_mm``).
    - ``mode=static``: activation ranges are observed on ``samples`` examples of ``data`` (a
      file, or a task directory's train split; ``observer=minmax|moving_average|percentile``); each linear also gets an ``f32[]``
      ``input_scale`` and a ``u8[]`` ``input_zero_point`` operand (affine uint8, shared by the
      linears that read the same value). ONNX: QuantizeLinear/DequantizeLinear around the
      MatMul (QDQ; ONNX Runtime fuses it into ``MatMulIntegerToFloat``); eager and TorchScript
      run the same integer arithmetic with ``torch._int_mm``.
    - ``mode=qat``: quantization-aware training (Q8BERT): the module trains with fake-quantized
      weights (per channel, symmetric) and activations (affine; min/max on the first batches,
      then a moving average) and distills from the teacher (the pipeline input by default, as
      ``distill``); the result is the static int8 form (``activations=false``: the dynamic
      form) of the trained weights. Training options as ``distill``.
    - ``max_drop=P`` (any mode but qat): accuracy-aware. Each target is quantized alone and
      scored on the validation split carved from ``task``'s training data (``val_samples``
      examples; never the dev set); then all are quantized and the most costly are put back in
      fp32 one by one until the metric is within ``P`` points of the fp32 model. The stats name
      the layers left in fp32 with their individual cost.

    ``embeddings`` (default ``auto``): the embedding tables (word, position, token type) become
    ``i8`` too, per row (symmetric, 8 bits: ``round(T / scale)``, ``|q| <= 127``), with an
    ``f32[rows]`` ``scale`` operand on each ``embedding`` node; rows are gathered first and
    dequantized after (ONNX: ``Gather`` on the int8 table, ``Cast``, ``Mul`` by the gathered
    scales; eager and TorchScript the same), which takes the tables to a quarter of their bytes
    (MiniLM's word table: 46.9 MB -> 11.8 MB). ``auto``: every float32 table that only
    ``embedding`` nodes read, whenever the pass quantizes linears (not for a second
    ``quantize{targets=matmuls}``); ``true``: every table, refusing one that is tied to another
    op (a language-model head reading the word table) or already int8; ``false``: none. With
    ``max_drop`` the scores of the int8 candidates include the int8 tables. Measured on MiniLM
    (872 SST-2 dev sentences, mean-pooled embeddings, cosine with the fp32 model; eager): int8
    linears with fp32 tables 0.99044 (min 0.9663), with int8 tables 0.99039 (min 0.9630): the
    tables' rounding is lost in the linears', hence the default. Gathering the int8 rows then
    scaling them was measured 0.13 ms against 22.7 ms for dequantizing the whole table first
    (ONNX ``DequantizeLinear(axis=0)`` then ``Gather``, which ONNX Runtime does not
    constant-fold; MiniLM's word table, batch 1 x 128 tokens, one thread).

    ``token_scales`` (dynamic mode; roles as ``targets``, e.g. ``token_scales=ffn``): those
    linears quantize their activations with one scale and zero point per token (row of the
    input) instead of one per tensor (the node attribute ``act_scales="token"``). Per-tensor
    scales flatten every token onto a few levels when one token has an outlier feature:
    all-mpnet-base-v2's FFN ``down`` inputs reach ~100 with a median of ~0.08, and int8
    everywhere keeps a mean cosine of 0.851 with the fp32 embeddings per tensor against 0.997
    with ``token_scales=attention,ffn`` (64 SST-2 dev sentences, eager; MiniLM keeps 0.990 per
    tensor). It costs time: ONNX Runtime has no fused kernel for it (``MatMulInteger`` and
    elementwise ops instead of ``DynamicQuantizeMatMul``; mpnet, batch 1 x 128 tokens, one
    thread, loaded machine: 236 ms per tensor, 269 ms with ``token_scales=ffn``), and eager and
    TorchScript keep the portable ``torch._int_mm`` kernel for them.

    Targets are chosen by role from the structure analysis (default: attention and FFN
    projections; the pooler and classifier only with ``targets=head``). A weight's sparsity
    attribute is kept: its zeros stay zero in int8.

    ``matmuls`` in ``targets`` (e.g. ``targets=attention,ffn,matmuls``; ``targets=matmuls``
    alone leaves the linears as they are) also makes each ``attention`` op's two matmuls int8:
    Q·Kᵀ and P·V become integer matmuls (eager/TorchScript: ``torch._int_mm``; ONNX:
    ``MatMulInteger``). ``mode=dynamic``: the node gets ``int8="dynamic"``, and Q, K, the
    softmax output P and V are quantized per tensor at run time (uint8, ONNX
    ``DynamicQuantizeLinear``'s scheme). ``mode=static``: ``int8="static"`` and two parameters
    per node, ``<stem>.int8_scale: f32[3]`` and ``<stem>.int8_zero_point: u8[3]``, the
    calibrated Q, K, V ranges (same observer as the linears; ONNX ``QuantizeLinear``); P uses
    the fixed scale 1/255. Not with QAT or ``max_drop`` (quantize the matmuls in a second
    ``quantize{targets=matmuls}``). Off by default: in eager and TorchScript it is slower than
    the fused float attention (one int8 GEMM per batch and head); see tools/bench/int8.py
    ``--attention`` for ONNX.

    Refuses: with ``embeddings=true``, a table that is tied to another op, already int8 or
    not float32, or a module without embedding tables; a weight that is already int8
    (quantizing twice), a weight shared with an op
    that is not a target linear, a module with no target; static mode without data, QAT or
    ``max_drop`` without a task; ``matmuls`` on a module with no ``attention`` op, on
    attention that is already int8, hard (top-k) or not f32.
    Guarantees: the IR is unchanged when it refuses; each output differs from the float model
    only by int8 rounding.
    """

    name = "quantize"

    mode: Literal["dynamic", "static", "qat"] = "dynamic"
    """``dynamic``: activations quantized at run time; ``static``: calibrated on ``data``;
    ``qat``: quantization-aware training on ``task``'s data."""
    targets: tuple[str, ...] = ("attention", "ffn")
    """Roles to quantize: attention, ffn, query, key, value, output, up, down, head; and
    ``matmuls``: the attention ops' Q·Kᵀ and P·V (not with QAT or max_drop)."""
    bits: int = 7
    """Weight bits stored in int8: 7 (-63..63; exact on ONNX Runtime's non-VNNI u8 x s8 kernels,
    which saturate with 8) or 8 (-127..127; for CPUs with VNNI/AMX)."""
    observer: Literal["minmax", "moving_average", "percentile"] = "minmax"
    """How static calibration turns activations into a range."""
    percentile: float = 99.99
    """Upper percentile kept by ``observer=percentile``."""
    averaging: float = 0.01
    """Weight of each batch in a moving-average range (``observer=moving_average``, QAT)."""
    samples: int = 128
    """Calibration examples read from ``data`` (static mode, QAT's initial ranges)."""
    max_drop: float | None = None
    """Accuracy-aware: largest allowed drop of the task metric (points) on the validation split."""
    val_samples: int = 512
    """Validation examples scored per candidate (``max_drop``)."""
    activations: bool = True
    """QAT: fake-quantize activations too and end in the static form (false: dynamic)."""
    epochs: float = 1.0
    """QAT: passes over the training data."""
    eval_split: Literal["dev", "val", "none"] = "none"
    """QAT: evaluate on dev, on a validation part of train, or not at all."""
    embeddings: bool | Literal["auto"] = "auto"
    """Embedding tables to int8 with per-row scales: true (all, or refuse), false, or auto
    (the untied float32 ones, when linears are quantized)."""
    token_scales: tuple[str, ...] = ()
    """Dynamic mode: roles (as ``targets``) whose linears quantize activations with one scale
    per token (row) instead of one per tensor; for outlier activations (e.g. ``down``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (7, 8):
            raise PipelineSpecError(f"quantize bits must be 7 or 8, got {self.bits}")
        bad = [t for t in self.targets if t not in ROLES and t != MATMULS]
        if bad or not self.targets:
            raise PipelineSpecError(f"unknown target {bad[0] if bad else '(none)'!r}; "
                                    f"choose from {', '.join((*ROLES, MATMULS))}")
        if MATMULS in self.targets and (self.mode == "qat" or self.max_drop is not None):
            why = "mode=qat" if self.mode == "qat" else "max_drop"
            raise PipelineSpecError(
                f"quantize targets={MATMULS} (int8 attention matmuls) is post-training only, "
                f"without {why}: drop {MATMULS} from targets here and add a second "
                f"quantize{{targets={MATMULS}}} (or mode=static) after this one")
        if self.embeddings not in (True, False, "auto"):
            raise PipelineSpecError(f"quantize embeddings must be true, false or auto, got "
                                    f"{self.embeddings!r}")
        bad = [t for t in self.token_scales if t not in ROLES]
        if bad:
            raise PipelineSpecError(f"unknown token_scales role {bad[0]!r}; choose from "
                                    f"{', '.join(ROLES)}")
        if self.token_scales and self.mode != "dynamic":
            raise PipelineSpecError(f"quantize token_scales is for mode=dynamic (per-token "
                                    f"scales are computed at run time); mode={self.mode} "
                                    "calibrates or learns one scale per tensor: drop token_scales")
        if self.observer not in OBSERVERS:
            raise PipelineSpecError(f"unknown observer {self.observer!r}; choose from "
                                    f"{', '.join(OBSERVERS)}")
        if not 50 < self.percentile <= 100:
            raise PipelineSpecError(f"quantize percentile must be in (50, 100], got "
                                    f"{self.percentile}")
        if not 0 < self.averaging <= 1:
            raise PipelineSpecError(f"quantize averaging must be in (0, 1], got {self.averaging}")
        if self.samples < 1 or self.val_samples < 1:
            raise PipelineSpecError("quantize samples and val_samples must be >= 1")
        if self.max_drop is not None and self.max_drop < 0:
            raise PipelineSpecError(f"quantize max_drop must be >= 0 (metric points), got "
                                    f"{self.max_drop}")
        if self.max_drop is not None and self.mode == "qat":
            raise PipelineSpecError("quantize max_drop chooses layers for post-training "
                                    "quantization; QAT trains them all: drop max_drop or use "
                                    "mode=dynamic|static")

    @property
    def uses_data(self) -> bool:
        """Static calibration, QAT and accuracy-aware selection read data (CLI: --data)."""
        return self.mode != "dynamic" or self.max_drop is not None

    @property
    def _roles(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t != MATMULS)

    def _targets(self, module: Module) -> list[tuple[str, Node]]:
        if not self._roles:
            return []
        return [(role, node) for _, role, node in linear_targets(module, self._roles)]

    def _token(self, module: Module) -> set[str]:
        """The weights of the linears whose activations get per-token scales."""
        if not self.token_scales:
            return set()
        return {node.args[1].name for _, _, node in linear_targets(module, self.token_scales)}

    def _attention_nodes(self, module: Module) -> list[Node]:
        if MATMULS not in self.targets:
            return []
        return [n for n in module.graph if n.op == "attention"]

    def _tables(self, module: Module) -> list[Node]:
        """The ``embedding`` nodes whose tables this pass makes int8 (``auto``: those that
        can be; ``true``: all of them, :meth:`_requires_tables` refuses the others)."""
        if self.embeddings is False or (self.embeddings == "auto" and not self._roles):
            return []
        if self.embeddings is True:
            return [n for n in module.graph if n.op == "embedding"]
        return int8_tables(module)

    def _requires_tables(self, module: Module) -> str | None:
        if self.embeddings is not True:
            return None
        nodes = self._tables(module)
        if not nodes:
            return ("embeddings=true quantizes embedding tables, and this module has no "
                    "embedding op: use embeddings=false (or auto)")
        for node in nodes:
            problem = _table_problem(node)
            if problem:
                return f"embeddings=true: {problem}; use embeddings=auto (skips it) or false"
        return None

    def requires(self, module: Module) -> str | None:
        reason = self._requires_matmuls(module) or self._requires_tables(module)
        if reason:
            return reason
        targets = self._targets(module)
        if not targets and self._roles:
            return (f"no linear layer has a role in targets={','.join(self._roles)} "
                    f"(the module has {analyze(module).describe()})")
        nodes = {id(n) for _, n in targets}
        for _, node in targets:
            w = node.arg(1)
            if not isinstance(w, Parameter):
                return f"{node!r} reads a computed weight, not a parameter; it cannot be quantized"
            if w.data.dtype == torch.int8 or "quantization" in w.attrs:
                return (f"weight @{w.name} is already quantized (int8): quantize runs once; "
                        "drop the second quantize")
            if w.data.dtype != torch.float32:
                return f"weight @{w.name} is {w.data.dtype}; int8 quantization starts from float32"
            if w.data.is_meta:
                return f"weight @{w.name} has no data (IR loaded without weights)"
            others = [u for u in w.users() if id(u) not in nodes]
            shared = [u for u in others if u.op == "linear" and u.arg(1) is w]
            if shared and self.mode != "dynamic":
                return (f"weight @{w.name} is also the weight of {shared[0]!r}, which reads "
                        f"another input (e.g. DeBERTa's position projections); mode={self.mode} "
                        "keeps one activation range per weight: use mode=dynamic")
            others = [u for u in others if u not in shared]  # dynamic: quantized with it
            if others:
                return (f"weight @{w.name} is also read by {others[0]!r}, which is not a target "
                        "linear; untie it or leave this layer out of targets")
        if self.mode == "static" and self.data is None:
            return ("quantize{mode=static} calibrates activation scales on data: pass --data "
                    "FILE (or data=FILE in the pass options), or use mode=dynamic")
        if self.mode == "qat" or self.max_drop is not None:
            why = "mode=qat" if self.mode == "qat" else "max_drop"
            reason = requires_task(self, module)
            if reason:
                return f"quantize {why} trains or scores on a task: {reason}"
        return None

    def _requires_matmuls(self, module: Module) -> str | None:
        if MATMULS not in self.targets:
            return None
        nodes = self._attention_nodes(module)
        if not nodes:
            return (f"targets={MATMULS} quantizes the matmuls of attention ops, and this module "
                    f"has none (it has {analyze(module).describe()}); drop {MATMULS} from "
                    "targets (raise-ops turns a captured scaled_dot_product_attention into one)")
        for node in nodes:
            if node.attr("int8") is not None:
                return (f"{node!r} already has int8 matmuls (int8={node.attr('int8')!r}): "
                        f"quantize runs once; drop {MATMULS} from targets")
            if node.attr("softcap") is not None:
                return (f"{node!r} soft-caps its scores (softcap={node.attr('softcap')}), which "
                        f"the int8 attention kernels do not: drop {MATMULS} from targets")
            if node.attr("kind", "softmax") != "softmax":
                return (f"{node!r} is hard attention (kind={node.attr('kind')}); its matmuls "
                        f"stay float: drop {MATMULS} from targets")
            dtype = node.args[0].tensor_type.dtype
            if dtype != torch.float32:
                return (f"{node!r} runs in {dtype}; int8 attention matmuls start from float32 "
                        f"operands: drop {MATMULS} from targets")
        return None

    # -- running --------------------------------------------------------------------------
    def run(self, module: Module, ctx: PassContext = EMPTY_CONTEXT) -> PassResult:
        matmuls = self._attention_nodes(module)
        names = [node.args[1].name for _, node in self._targets(module)]
        stats: dict[str, Any] = {}
        aparams = None
        if self.mode == "qat":
            qparams, stats = train_qat(self, module, names, ctx)
        elif self.mode == "static":
            task = get_task(self.task) if self.task is not None else ctx.task
            batches = calibration_batches(module, self.data, self.samples, self.batch_size,
                                          self.max_length or 128, self.tokenizer,
                                          f"quantize{{mode=static,observer={self.observer}}}",
                                          use_labels=False, split="train", task=task)
            qparams = self._calibrate(module, names, batches)
            aparams = self._calibrate_attention(module, matmuls, batches) if matmuls else None
        else:
            qparams = None
        chosen = names
        if self.max_drop is not None:
            chosen, extra = self._accuracy_aware(module, names, qparams)
            stats.update(extra)
        stats = {**apply_int8(module, chosen, self.bits, qparams, self._token(module)), **stats}
        tables = self._tables(module)
        if tables:
            stats.update(apply_int8_embeddings(module, tables))
        if MATMULS in self.targets:
            apply_int8_attention(module, matmuls, aparams)
            stats["attention_matmuls"] = len(matmuls)
        return PassResult(stats["linears"] > 0 or bool(matmuls) or bool(tables), stats)

    def _calibrate(self, module: Module, names: list[str], batches: list[Any]) -> QParams:
        """Static activation parameters of each target, from observed ranges."""
        nodes = linears_of(module, names)
        if not nodes:
            return {}
        observers = observe_inputs(module, nodes, batches, self._observer)
        return {n.args[1].name: observers[id(n.args[0])].qparams() for n in nodes}

    @torch.no_grad()
    def _calibrate_attention(self, module: Module, nodes: list[Node],
                             batches: list[Any]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Static ``(scale f32[3], zero point u8[3])`` of Q, K, V of each attention node (by
        ``id``), from the ranges observed on ``batches`` (the module is not changed)."""
        order = {id(n): i for i, n in enumerate(module.graph)}
        work = module.clone()
        copied = list(work.graph)
        observers: dict[str, RangeObserver] = {}
        for j, node in enumerate(nodes):
            for i in range(3):
                name = f"calibration.attention.{j}.{i}"
                observers[name] = self._observer()
                work.graph.set_output(name, copied[order[id(node)]].args[i])
        run = to_eager(work)
        for batch in batches:
            result = run(**(batch.inputs if isinstance(batch, Batch) else batch))
            for name, observer in observers.items():
                observer.observe(result[name])
        out = {}
        for j, node in enumerate(nodes):
            pairs = [observers[f"calibration.attention.{j}.{i}"].qparams() for i in range(3)]
            out[id(node)] = (torch.stack([p[0] for p in pairs]).reshape(3).float(),
                             torch.stack([p[1] for p in pairs]).reshape(3).to(torch.uint8))
        return out

    def _observer(self) -> RangeObserver:
        return RangeObserver(self.observer, self.averaging, self.percentile)

    def _accuracy_aware(self, module: Module, names: list[str],
                        qparams: QParams | None) -> tuple[list[str], dict[str, Any]]:
        """The weights to quantize so that the validation metric stays within max_drop."""
        task = pass_task(self, module)
        tokenizer = pass_tokenizer(self, module)
        examples = task.read("val", self.data, seed=self.seed, limit=self.val_samples)

        def score(chosen: list[str]) -> float:
            work = module.clone()
            if chosen:
                apply_int8(work, chosen, self.bits, qparams, self._token(work))
                apply_int8_embeddings(work, self._tables(work))
            result = evaluate(task, to_eager(work), examples, tokenizer,
                              batch_size=self.batch_size, max_length=self.max_length)
            return float(result.score)

        base = score([])
        cost = {p: base - score([p]) for p in names}
        kept: list[str] = []
        current = score(names)
        first = current
        for p in sorted(names, key=lambda q: -cost[q]):
            if base - current <= self.max_drop:
                break
            kept.append(p)
            current = score([q for q in names if q not in kept])
        return [p for p in names if p not in kept], {
            "metric": task.main_metric,
            "val_examples": len(examples),
            "fp32_score": round(base, 2),
            "all_int8_score": round(first, 2),
            "score": round(current, 2),
            "kept_fp32": ",".join(f"{p}(cost={cost[p]:.2f})" for p in kept) or "-",
            "worst_int8_cost": round(max((cost[p] for p in names if p not in kept),
                                         default=0.0), 2),
        }


def apply_int8(module: Module, names: list[str], bits: int,
               qparams: QParams | None = None, token: set[str] = frozenset()) -> dict[str, Any]:
    """Quantize the linears of ``module`` whose weights are ``names``: int8 weights with their
    scales, and with ``qparams`` (static) the activation scale and zero point of each, one
    parameter pair per distinct input value; the dynamic linears whose weights are in ``token``
    get per-token activation scales (``act_scales="token"``). Returns the pass stats."""
    done: dict[str, Parameter] = {}
    inputs: dict[int, tuple[Parameter, Parameter]] = {}
    by_role = analyze_roles(module)
    counts: dict[str, int] = {}
    before = after = per_token = 0
    for node in linears_of(module, names):
        w = node.args[1]
        if w.name not in done:
            before += w.data.numel() * w.data.element_size()
            done[w.name] = _to_int8_rows(module, w, bits)
            after += w.data.numel() + done[w.name].data.numel() * 4
        args = list(node.args) + [None] * (6 - len(node.args))
        args[3] = done[w.name]
        if qparams is not None:
            x = node.args[0]
            if id(x) not in inputs:
                s, zp = qparams[w.name]
                scale_p = module.add_param(module.unique_param_name(w.name + "_input_scale"), s)
                zp_p = module.add_param(module.unique_param_name(w.name + "_input_zero_point"), zp)
                inputs[id(x)] = (scale_p, zp_p)
            args[4], args[5] = inputs[id(x)]
        node.args = tuple(args[:6] if qparams is not None else args[:4])
        if qparams is None and w.name in token:
            node.set_attr("act_scales", "token")
            per_token += 1
        role = by_role.get(id(node), "linear")
        counts[role] = counts.get(role, 0) + 1
    stats: dict[str, Any] = {
        "linears": sum(counts.values()),
        "by_role": ",".join(f"{r}={n}" for r, n in counts.items()),
        "weight_bytes": f"{before}->{after}",
    }
    if qparams is not None:
        stats["activation_scales"] = len(inputs)
    if per_token:
        stats["per_token"] = per_token
    return stats


def _to_int8_rows(module: Module, param: Parameter, bits: int) -> Parameter:
    """Make ``param`` (a linear's weight or an embedding table) int8 per row, in place, and
    return its new ``f32[rows]`` scale parameter (``<name>_scale``)."""
    q, scale = quantize_weight(param.data, bits)
    param.data = q
    param.attrs["quantization"] = Quantization("symmetric", bits, axis=0)
    return module.add_param(module.unique_param_name(param.name + "_scale"), scale)


def _table_problem(node: Node) -> str | None:
    """Why the table of ``embedding`` ``node`` cannot be made int8 (None: it can)."""
    table = node.arg(1)
    if not isinstance(table, Parameter):
        return f"{node!r} reads a computed table, not a parameter"
    if node.arg(2) is not None or table.data.dtype == torch.int8 or "quantization" in table.attrs:
        return f"table @{table.name} is already int8 (quantize runs once)"
    if table.data.dtype != torch.float32:
        return f"table @{table.name} is {table.data.dtype}; int8 tables start from float32"
    if table.data.is_meta:
        return f"table @{table.name} has no data (IR loaded without weights)"
    others = [u for u in table.users() if not (u.op == "embedding" and u.arg(1) is table
                                                and u.arg(2) is None)]
    if others:
        return (f"table @{table.name} is also read by {others[0]!r} (tied weights, e.g. a "
                "language-model head), which would read the int8 values")
    return None


def int8_tables(module: Module) -> list[Node]:
    """The ``embedding`` nodes whose tables can be made int8 (``embeddings=auto``'s choice:
    float32 parameter tables that only ``embedding`` nodes read)."""
    return [n for n in module.graph if n.op == "embedding" and _table_problem(n) is None]


def apply_int8_embeddings(module: Module, nodes: list[Node]) -> dict[str, Any]:
    """Make the tables of ``embedding`` ``nodes`` int8, per row, each with an ``f32[rows]``
    scale parameter (``<table>_scale``) as the node's ``scale`` operand. Returns the stats."""
    done: dict[str, Parameter] = {}
    before = after = 0
    for node in nodes:
        table = node.args[1]
        if table.name not in done:
            before += table.data.numel() * table.data.element_size()
            done[table.name] = _to_int8_rows(module, table, TABLE_BITS)
            after += table.data.numel() + done[table.name].data.numel() * 4
        node.args = (node.args[0], table, done[table.name])
    return {"embeddings": len(done), "embedding_bytes": f"{before}->{after}"}


def apply_int8_attention(module: Module, nodes: list[Node],
                         aparams: dict[int, tuple[torch.Tensor, torch.Tensor]] | None) -> None:
    """Make the matmuls of attention ``nodes`` int8: dynamic, or static with ``aparams`` (the
    Q, K, V scales and zero points of each node, added as parameters named after the query
    projection's weight)."""
    for i, node in enumerate(nodes):
        if aparams is None:
            node.set_attr("int8", "dynamic")
            continue
        scale, zero_point = aparams[id(node)]
        producer = node.args[0].producer
        weight = producer.arg(1) if producer is not None and producer.op == "linear" else None
        stem = (weight.name.rsplit(".", 2)[0] if isinstance(weight, Parameter)
                and weight.name.count(".") >= 2 else f"attention.{node.attr('layer', i)}")
        s = module.add_param(module.unique_param_name(stem + ".int8_scale"), scale)
        z = module.add_param(module.unique_param_name(stem + ".int8_zero_point"), zero_point)
        args = list(node.args) + [None] * (6 - len(node.args))
        args[4], args[5] = s, z
        node.args = tuple(args)
        node.set_attr("int8", "static")


def analyze_roles(module: Module) -> dict[int, str]:
    """Role of each linear node (by ``id``) that has one."""
    return {id(node): role for _, role, node in linear_targets(module, ROLES)}
