"""Calibration data for passes that measure the model on real inputs.

Such passes take the options ``data`` (a file or task directory, read as
:mod:`optc.tasks.detect` finds its columns; the CLI's ``--data`` fills it in), ``samples``,
``batch_size``, ``max_length`` and ``tokenizer`` (default: the tokenizer recorded with the
captured model). A module captured for one sequence length gets every batch padded to it.

:func:`calibration_batches` refuses, before anything runs, with one line each:

- a model whose directory has no tokenizer files (transformers would build a placeholder that
  maps every word to ``[UNK]``): pass ``tokenizer=``;
- a tokenizer whose vocabulary is larger than the model's embedding table;
- labels that do not fit the model's head: scores (STS-B) for a classifier with several
  labels, class indices out of range, one label per example for a per-token head.

Activation ranges for static int8 (:class:`RangeObserver`, :func:`observe_inputs`): the
inputs of chosen nodes are recorded on calibration batches by a copy of the module with them
as extra outputs, and each observer turns what it saw into an affine uint8 scale and zero
point (``minmax``: the extremes seen; ``moving_average``: an exponential average of each
batch's extremes; ``percentile``: the mean over batches of the ``p``-th and ``100-p``-th
percentiles, which ignores rare outliers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from optc.backends.eager import to_eager
from optc.backends.model_inputs import check_vocabulary as refuse_larger_vocabulary
from optc.backends.model_inputs import fixed_length, token_vocabulary
from optc.errors import InputError, PipelineSpecError
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module, Node, Parameter, Value
from optc.passes.context import PassContext
from optc.tasks.batching import Batch, example_batches
from optc.tasks.detect import first_split, read_examples
from optc.tasks.records import Example
from optc.tasks.task import Task

__all__ = ["calibration_batches", "calibration_examples", "check_labels", "check_vocabulary", "CALIBRATION_OPTIONS",
           "CalibrationOptions",
           "OBSERVERS", "RangeObserver", "affine_qparams", "observe_inputs", "linears_of",
           "tap"]

CALIBRATION_OPTIONS = ("data", "samples", "batch_size", "max_length", "tokenizer")
"""Option names shared by every pass that reads calibration data."""


@dataclass(frozen=True)
class CalibrationOptions:
    """The options of a pass that measures the model on calibration data, defined and
    documented once: a pass lists this class among its bases (and may give ``samples`` or
    ``batch_size`` another default by declaring the field again)."""

    data: str | None = None
    """Calibration data: a file or task directory (CLI: --data; with --task, read as that task
    reads it, else its columns found from its header); its train split by default."""
    samples: int = 128
    """Calibration examples to read."""
    batch_size: int = 16
    """Calibration batch size."""
    max_length: int = 128
    """Calibration sequence length limit (tokens)."""
    tokenizer: str | None = None
    """Tokenizer directory or id (default: the one recorded with the model)."""

    def check_calibration_options(self, name: str) -> None:
        """Refuse sizes that cannot be read (a bad option, exit 2)."""
        if self.samples < 1 or self.batch_size < 1 or self.max_length < 2:
            raise PipelineSpecError(f"{name} needs samples >= 1, batch_size >= 1 and "
                                    "max_length >= 2")

    def calibration(self, module: Module, ctx: PassContext, why: str, use_labels: bool = True,
                    split: str | None = None) -> list[Batch]:
        """This pass's calibration batches for ``module`` (see :func:`calibration_batches`),
        read as the pipeline's task (``ctx.task``) reads them when it has one."""
        return calibration_batches(module, self.data, self.samples, self.batch_size,
                                   self.max_length, self.tokenizer, why, use_labels=use_labels,
                                   split=split, task=ctx.task)


def calibration_batches(module: Module, data: str | None, samples: int, batch_size: int,
                        max_length: int, tokenizer: str | None, why: str,
                        use_labels: bool = True, split: str | None = None,
                        task: Task | None = None) -> list[Batch]:
    """Tokenized batches of ``samples`` examples from ``data`` for ``module``'s inputs.

    ``why`` names the pass and criterion in the errors; ``split`` is the file read from a task
    directory (a single file is read whole); by default its train file, or its dev file when it
    has none (SQuAD here), so that what a pass measures to decide a removal is not the dev set
    that results are reported on. ``task`` (the pipeline's ``--task``, ``ctx.task``): the data
    is read as that task reads it (its columns, its labels; with no ``data``, from the task's
    own data directory); without one, the columns are found from the file
    (:mod:`optc.tasks.detect`). With ``use_labels`` (the caller's loss reads them) labels that
    do not fit the model's head are refused; without, they are dropped.
    """
    from optc.frontends.huggingface import load_tokenizer

    if data is None and (task is None or task.data_path is None):
        raise InputError(
            f"{why} needs calibration data: pass --data FILE (or data=FILE in the pass options), "
            "e.g. --data glue/SST-2/dev.tsv with OPTC_DATA_DIR set"
        )
    ref = tokenizer or (module.meta.get("source") or {}).get("tokenizer")
    if ref is None:
        raise InputError(f"{why}: no tokenizer is recorded with this model; pass tokenizer=PATH")
    try:
        tok: Any = load_tokenizer(ref)
    except InputError as exc:
        raise InputError(f"{why}: {exc}") from None
    check_vocabulary(module, tok, why)
    names = [v.name for v in module.graph.inputs]
    examples = calibration_examples(data, samples, split, task)
    length = fixed_length(module)
    if length is not None and max_length > length:
        max_length = length  # a module captured for one length: cut to it and pad every batch
    batches = example_batches(examples, tok, names, batch_size=batch_size,
                              max_length=max_length, pad_to=length)
    if use_labels:
        check_labels(module, batches, f"{why}: '{data or task.data_path}'")
    else:
        for batch in batches:
            batch.labels = None
    return batches


def calibration_examples(data: str | None, samples: int, split: str | None = None,
                         task: Task | None = None) -> list[Example]:
    """The first ``samples`` examples :func:`calibration_batches` measures on (what the CLI
    reads before it loads the model, so that bad data fails first): with ``task``, its
    ``split`` (default: its train split less the validation part, or its dev split when it has
    no train file) as plain examples; without, the file's own columns, its train (else dev)
    file in a task directory."""
    if task is None:
        return read_examples(data, split=split or first_split(data, ("train", "dev")),
                             limit=samples)
    if split is None:
        try:
            task.data_file("train", data)
            split = "train"
        except InputError:
            split = "dev"
    rows = task.read(split, data, limit=samples)
    return [r if isinstance(r, Example) else Example(r.question, r.context) for r in rows]


def check_vocabulary(module: Module, tokenizer: Any, why: str) -> None:
    """Refuse a tokenizer that can produce ids past the model's token embedding table."""
    refuse_larger_vocabulary(token_vocabulary(module), len(tokenizer), why)


def check_labels(module: Module, batches: list[Batch], where: str) -> None:
    """Refuse labels that the model's ``logits`` head cannot be scored against."""
    logits = module.graph.outputs.get("logits")
    labelled = [b.labels for b in batches if b.labels is not None]
    if logits is None or not labelled or not isinstance(logits, Value):
        return  # no classification head, or no labels: the losses do not read labels
    shape = logits.tensor_type.shape
    classes = shape[-1] if isinstance(shape[-1], int) else None
    if len(shape) == 3:
        raise InputError(
            f"{where} has one label per example, but the model's head labels every token "
            f"(logits {_shape(shape)}, token classification): use data without labels or a "
            "sequence-classification model"
        )
    if len(shape) != 2 or classes is None:
        return
    for labels in labelled:
        if labels.is_floating_point():
            if classes != 1:
                raise InputError(
                    f"{where} has scores (float labels, e.g. STS-B) but the model's head has "
                    f"{classes} labels: use class-labelled data, or a regression model "
                    "(num_labels=1)"
                )
        else:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= classes:
                bad = high if high >= classes else low
                raise InputError(
                    f"{where} has class label {bad} but the model's head has {classes} "
                    f"label{'s' if classes != 1 else ''} (0..{classes - 1}): use data of the "
                    "task the model was made for"
                )


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# -- activation ranges ---------------------------------------------------------------------

OBSERVERS = ("minmax", "moving_average", "percentile")
"""Ways a :class:`RangeObserver` turns observed values into a range."""


def affine_qparams(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale: f32[], zero_point: u8[])`` of affine uint8 covering ``[lo, hi]`` widened to
    hold 0 (so that zero, e.g. padding, is exact): ``scale = (hi - lo) / 255``, zero point
    ``round(-lo / scale)``; the scheme of ONNX Runtime's ``DynamicQuantizeLinear``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = torch.tensor((hi - lo) / 255.0, dtype=torch.float32)
    if float(scale) == 0.0:
        scale = torch.tensor(1.0)
    zp = torch.clamp(torch.round(torch.tensor(-lo, dtype=torch.float32) / scale), 0, 255)
    return scale, zp.to(torch.uint8)


class RangeObserver:
    """Range of the values a tensor takes, seen batch by batch."""

    def __init__(self, kind: str = "minmax", averaging: float = 0.01,
                 percentile: float = 99.99) -> None:
        if kind not in OBSERVERS:
            raise InputError(f"unknown observer {kind!r}; choose from {', '.join(OBSERVERS)}")
        self.kind = kind
        """``minmax``, ``moving_average`` or ``percentile``."""
        self.averaging = averaging
        """Weight of each new batch in the moving average."""
        self.percentile = percentile
        """Upper percentile kept by ``percentile`` (the lower one is ``100 - percentile``)."""
        self.lo: float | None = None
        self.hi: float | None = None
        self.batches = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Account for the values of ``x``."""
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        if self.kind == "percentile":
            k_hi = max(1, min(x.numel(), round(x.numel() * self.percentile / 100)))
            k_lo = max(1, x.numel() + 1 - k_hi)
            lo, hi = float(x.kthvalue(k_lo).values), float(x.kthvalue(k_hi).values)
        else:
            lo, hi = float(x.min()), float(x.max())
        self.batches += 1
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        elif self.kind == "minmax":
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        elif self.kind == "moving_average":
            self.lo += self.averaging * (lo - self.lo)
            self.hi += self.averaging * (hi - self.hi)
        else:  # percentile: mean over batches
            self.lo += (lo - self.lo) / self.batches
            self.hi += (hi - self.hi) / self.batches

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Affine uint8 ``(scale, zero_point)`` of the range seen (see :func:`affine_qparams`)."""
        if self.lo is None or self.hi is None:
            raise InputError("an activation observer saw no data: calibrate on at least one "
                             "batch")
        return affine_qparams(self.lo, self.hi)


def linears_of(module: Module, names: list[str]) -> list[Node]:
    """The ``linear`` nodes of ``module`` whose weight is one of ``names``, in graph order."""
    wanted = set(names)
    return [n for n in module.graph if n.op == "linear" and isinstance(n.arg(1), Parameter)
            and n.args[1].name in wanted]


def tap(module: Module, values: Sequence[Value], only: bool = False) -> Any:
    """An eager lowering of a copy of ``module`` that also returns ``values`` (values of
    ``module``: graph inputs or node results) as the extra outputs ``tap.0``, ``tap.1``, ...
    in the order given; with ``only``, returns nothing else and computes only what they need
    (the rest of the graph is removed from the copy). ``module`` is not changed; the copy
    shares its weights as they are now (a later ``param.data = new`` on ``module`` needs a new
    tap)."""
    work = module.clone()
    named = {v.name: v for v in work.graph.inputs}
    named.update({out.name: out for node in work.graph for out in node.outputs})
    taps = {f"tap.{i}": named[value.name] for i, value in enumerate(values)}
    if only:
        work.graph.set_outputs(taps)
        eliminate_dead_code(work)
    else:
        for name, value in taps.items():
            work.graph.set_output(name, value)
    return to_eager(work)


@torch.no_grad()
def observe_inputs(module: Module, nodes: Sequence[Node],
                   batches: Sequence[Batch | dict[str, torch.Tensor]],
                   make: Any = RangeObserver) -> dict[int, RangeObserver]:
    """One observer per distinct first operand of ``nodes`` (nodes reading the same value
    share it), fed with that value on every batch (a :class:`Batch` or a dict of model
    inputs); keyed by ``id`` of the value in ``module``. ``module`` is not changed (a copy
    gets the values as extra outputs)."""
    values = list({id(n.args[0]): n.args[0] for n in nodes}.values())
    observers = {id(v): make() for v in values}
    run = tap(module, values)
    for batch in batches:
        result = run(**(batch.inputs if isinstance(batch, Batch) else batch))
        for i, value in enumerate(values):
            observers[id(value)].observe(result[f"tap.{i}"])
    return observers
