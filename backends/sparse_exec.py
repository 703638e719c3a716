"""Sparse execution: which kernel runs each sparse linear weight in eager and TorchScript.

    eager = to_eager(module, sparse_kernel="auto")  # measure, choose, record (cached)
    print(eager.sparse_plan.table())                # one row per sparse weight: kernel and why
    plan = plan_sparse_kernels(module, "auto", runner=lambda p: EagerModule(module, p))
    eager = to_eager(module, sparse_kernel=plan)    # a plan made once, lowered again

The choice is a lowering option (``to_eager(module, sparse_kernel=...)``,
``to_torchscript(...)``, ``optc ... --sparse-kernel=...``), never part of the IR: the IR says
which weights are sparse and in what pattern (their ``sparsity`` attribute); the plan says how
this machine runs them. Kernels (:data:`KERNELS`):

- ``dense``: the default; every weight runs through the dense ``F.linear``.
- ``csr``: every sparse weight stored as torch sparse CSR, computed with a sparse matmul.
- ``bsr``: block sparse rows. The block comes from the weight's ``sparsity`` attribute when it
  is square (torch's CPU BSR kernel, MKL, takes square blocks only); otherwise the largest
  square block up to :data:`DEFAULT_BSR_BLOCK` whose side divides the weight (``block=1x4``
  sparsity: 4x4 tiles, explicit zeros stored inside them).
- ``semi-structured``: ``torch.sparse.to_sparse_semi_structured`` for 2:4 weights, CUDA only
  (the eager module is built on CUDA; inputs must be CUDA tensors). On CPU, or with no 2:4
  weight, it is a :class:`~optc.errors.BackendError`; other weights stay dense. fp32 weights use
  torch's CUTLASS kernels, fp16/bf16 cuSPARSELt (each falls back to the other). TorchScript
  cannot script the tensor subclass: it falls back to dense with a warning.
- ``auto``: per weight, a sparse kernel only where it is measured faster here. A micro-benchmark
  at lowering time runs the layer's real weight (dense ``F.linear`` against each candidate
  kernel, interleaved blocks, medians) at each token count of :attr:`AutoOptions.tokens`
  (default 128 and 1024: batch 1 and 8 at sequence 128). A candidate counts as winning at a
  token count when it is at least ``margin`` (default 10%) faster than dense there. One that
  wins at every count runs every input; one that wins only at the smaller counts runs inputs up
  to the largest count it won at, and the layer keeps its dense weight too for larger inputs
  (the kernel switches on the input's rows, batch x sequence, at run time); otherwise the layer
  stays dense. Weights denser than :data:`MAX_AUTO_DENSITY` skip the measurement (no torch CPU
  sparse kernel beats dense there).

  **Whole-model check.** A layer that wins alone (one linear, warm caches) can lose inside the
  model: measured on MiniLM at 1024 rows, 1 thread, 90% unstructured, every csr layer won by
  >= 10% alone and the whole model ran 7% slower with all 36 on csr.
  So after the per-layer choices ``auto`` times the whole module lowered with them against
  the all-dense module (eager, interleaved medians, ``rounds`` x ``block`` forwards each) at
  each token count, smallest first, on generated inputs (:mod:`optc.backends.model_inputs`:
  token ids below the vocabulary, mask of ones, token types zero; batch ``rows / seq`` at
  ``AutoOptions.seq``, capped by the position table). Where the whole model is not at least
  ``margin`` faster, it retries with the better half of those weights by their per-layer ratio
  (weights of one ratio, such as one shape's, stay together), then the better half of that,
  down to one group; the weights left out (all of them when no try wins) run dense from that
  count up: ``max_tokens`` drops to the previous count, or the weight is dense when the
  smallest count lost. Their reasons say so (e.g. ``; whole model at 1024 rows 1.07x of dense
  with 36 sparse: dense above 128 rows``); the timings are :attr:`SparsePlan.model_checks`, the
  decision :attr:`SparsePlan.model_note`, both printed by ``table()`` and kept by
  ``to_json``. Because the sparse set at a count only shrinks from the smaller counts' sets,
  a count that wins with some weights is never given weights that lost there.
  The check needs a ``runner`` that builds the lowered module (``to_eager``,
  ``to_torchscript`` and ``optc --sparse-kernel=auto`` give the eager lowering;
  :func:`plan_sparse_kernels` called without one skips it) and a token-id input (an integer
  graph input indexing an embedding table); otherwise, or with
  ``AutoOptions(whole_model=False)``, it is skipped and ``model_note`` says why. So ``auto``
  keeps sparse kernels only where the whole model measured faster (the promise: never more
  than 5% slower than dense, up to the noise of the machine it measured on).

  Results are cached in memory and in ``~/.cache/optc/sparse_kernels.json`` (``$XDG_CACHE_HOME``
  honoured; ``AutoOptions(cache_dir=None)`` turns the file off): per layer by (shape, density,
  pattern, bias, threads, torch version, CPUs, token count), per whole-model try by the
  module's sparse weights (shape, pattern, density), which of them run sparse with which
  kernel, the module's size, the input shape, threads, torch version and CPUs. Plan with the
  thread count you will run at.

The kernels and the compressed storage they read live in :mod:`optc.backends.sparse_ops`. The
plan's records (:class:`SparsePlan`, :class:`AutoOptions`, ...) are in
:mod:`optc.backends.sparse_plan` and ``auto``'s measurements and their caches in
:mod:`optc.backends.sparse_auto`; this module makes plans and tells the lowerings which nodes
they change (their names are re-exported here).

int8 weights always run the int8 kernel; weights without a ``sparsity`` attribute stay dense.
Every choice is recorded in the :class:`SparsePlan` (kernel, block, row limit, reason, timings;
for ``auto`` also the whole-model timings and decision), which the eager module keeps as
``.sparse_plan`` and the TorchScript file as the extra file ``optc/sparse_plan.json``.

Written outputs: ``optc MODEL --sparse-kernel=K`` (eager or torchscript backend) prints the
plan and records ``K`` in the module's ``meta["sparse_kernel"]``; ``export_torchscript`` and
``optc.load(artifact)`` use the recorded kernel unless given one (an eager artifact is planned
again when loaded, on the machine that runs it). In-memory lowerings (``to_eager``,
``to_torchscript``) are dense unless asked, so passes and training that lower internally are
unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optc.backends.sparse_auto import (
    auto_choice,
    check_whole_model,
    clear_memory_cache,
    read_disk,
    write_disk,
)
from optc.backends.sparse_ops import (
    DEFAULT_BSR_BLOCK,
    SPARSE_SCRIPT,
    bsr_block,
    semi_structured_linear,
    semi_structured_weight,
    sparse_linear,
    sparse_parts,
)
from optc.backends.sparse_plan import (
    KERNELS,
    MAX_AUTO_DENSITY,
    AutoOptions,
    LayerChoice,
    ModelCheck,
    Runner,
    SparsePlan,
    default_cache_dir,
    pattern_name,
)
from optc.errors import BackendError, InputError
from optc.ir.attributes import Sparsity
from optc.ir.core import Module, Node, Parameter

__all__ = ["check_kernel_available", "KERNELS", "DEFAULT_BSR_BLOCK", "MAX_AUTO_DENSITY", "AutoOptions", "LayerChoice",
           "ModelCheck", "Runner", "SparsePlan", "plan_sparse_kernels", "resolve_plan", "sparse_parts",
           "semi_structured_weight", "default_cache_dir", "clear_memory_cache", "bsr_block",
           "lowered_nodes", "dense_unused", "sparse_linear", "semi_structured_linear",
           "SPARSE_SCRIPT"]


# -- which weights ----------------------------------------------------------------------------------
def _linear_weights(module: Module) -> list[tuple[Parameter, bool]]:
    """(weight, has a bias) of every linear node whose weight is a sparse parameter, each weight
    once, in graph order."""
    seen: dict[str, tuple[Parameter, bool]] = {}
    for node in module.graph:
        if node.op != "linear":
            continue
        w = node.arg(1)
        if isinstance(w, Parameter) and isinstance(w.attrs.get("sparsity"), Sparsity) and w.name not in seen:
            seen[w.name] = (w, node.arg(2) is not None)
    return list(seen.values())


def check_kernel_available(kernel: str) -> None:
    """Raise :class:`~optc.errors.BackendError` when ``kernel`` cannot run on this machine
    (``semi-structured`` without CUDA), so callers can fail before any slow work."""
    if kernel == "semi-structured" and not torch.cuda.is_available():
        raise BackendError("sparse kernel 'semi-structured' (2:4) needs CUDA, and this machine "
                           "has no CUDA device: use --sparse-kernel=auto, csr or bsr on CPU")


def plan_sparse_kernels(module: Module, kernel: str = "auto", options: AutoOptions | None = None,
                        *, runner: Runner | None = None) -> SparsePlan:
    """Choose a kernel for each sparse linear weight of ``module`` (see the module docstring).
    ``runner`` builds the module lowered with a plan, for ``auto``'s whole-model check
    (without one the check is skipped, and the plan says so).

    Raises :class:`~optc.errors.InputError` for an unknown kernel and
    :class:`~optc.errors.BackendError` for ``semi-structured`` without CUDA or without a 2:4
    weight. Never changes ``module``."""
    if kernel not in KERNELS:
        raise InputError(f"unknown sparse kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    options = options or AutoOptions()
    threads = torch.get_num_threads()
    check_kernel_available(kernel)
    disk = read_disk(options.cache_dir) if kernel == "auto" else {}
    fresh: dict[str, dict[str, float]] = {}
    layers = []
    for param, has_bias in _linear_weights(module):
        attr = param.attrs["sparsity"]
        w = param.data
        if w.is_meta:
            raise BackendError(f"parameter @{param.name} has no data (IR text was loaded without weights)")
        base = dict(param=param.name, shape=tuple(w.shape), pattern=pattern_name(attr))
        if not w.dtype.is_floating_point:
            layers.append(LayerChoice(**base, density=float((w != 0).float().mean()), kernel="int8",
                                      reason="int8 weight: the int8 kernel runs it"))
            continue
        density = float((w != 0).float().mean())
        if kernel == "dense":
            layers.append(LayerChoice(**base, density=density, kernel="dense", reason="requested"))
        elif kernel == "csr":
            layers.append(LayerChoice(**base, density=density, kernel="csr", reason="requested"))
        elif kernel == "bsr":
            layers.append(LayerChoice(**base, density=density, kernel="bsr",
                                      block=bsr_block(w, attr), reason="requested"))
        elif kernel == "semi-structured":
            ok = attr.pattern == "n:m" and (attr.n, attr.m) == (2, 4)
            layers.append(LayerChoice(**base, density=density,
                                      kernel="semi-structured" if ok else "dense",
                                      reason="requested" if ok else "not 2:4: dense"))
        else:
            layers.append(auto_choice(param, attr, has_bias, options, threads, disk, fresh))
    if kernel == "semi-structured" and not any(c.kernel == "semi-structured" for c in layers):
        raise BackendError("sparse kernel 'semi-structured' needs 2:4 sparse weights and this "
                           "module has none: run sparsify{pattern=2:4} first")
    checks: tuple[ModelCheck, ...] = ()
    note = ""
    if kernel == "auto":
        layers, checks, note = check_whole_model(module, layers, options, threads, runner, disk, fresh)
    write_disk(options.cache_dir, fresh)
    return SparsePlan(kernel, threads, tuple(layers), checks, note)


def resolve_plan(module: Module, sparse_kernel: str | SparsePlan | None,
                 options: AutoOptions | None = None, *, runner: Runner | None = None
                 ) -> SparsePlan | None:
    """A plan from a lowering's ``sparse_kernel`` argument (None and ``dense``: no plan);
    ``runner``: see :func:`plan_sparse_kernels`."""
    if sparse_kernel is None or sparse_kernel == "dense":
        return None
    if isinstance(sparse_kernel, SparsePlan):
        for c in sparse_kernel.layers:
            p = module.params.get(c.param)
            if p is None or tuple(p.data.shape) != c.shape:
                raise InputError(f"sparse plan names weight @{c.param} {list(c.shape)}, which this "
                                 "module does not have: plan the module you lower")
        return sparse_kernel
    if not isinstance(sparse_kernel, str):
        raise InputError(f"sparse_kernel must be one of {', '.join(KERNELS)} or a SparsePlan, "
                         f"got {type(sparse_kernel).__name__}")
    return plan_sparse_kernels(module, sparse_kernel, options, runner=runner)


def lowered_nodes(module: Module, plan: SparsePlan | None, kinds: tuple[str, ...]) -> dict[Node, LayerChoice]:
    """The linear nodes whose weight the plan runs with a kernel in ``kinds``."""
    if plan is None:
        return {}
    out = {}
    for node in module.graph:
        w = node.arg(1) if node.op == "linear" else None
        if isinstance(w, Parameter) and node.arg(3) is None:
            c = plan.choice(w.name)
            if c is not None and c.kernel in kinds:
                out[node] = c
    return out


def dense_unused(module: Module, lowered: Mapping[Node, LayerChoice | None]) -> set[str]:
    """Parameters read only as the weight of ``lowered`` nodes (their dense copy is not needed;
    a node mapped to None, e.g. a prepacked int8 linear, has no token limit)."""
    outputs = {id(v) for v in module.graph.outputs.values()}
    names = set()
    for node in lowered:
        w = node.arg(1)
        users = w.users()
        if id(w) not in outputs and getattr(lowered[node], "max_tokens", None) is None and \
                all(u in lowered for u in users) and \
                all(u.args.count(w) == 1 and u.arg(1) is w for u in users):
            names.add(w.name)
    return names
