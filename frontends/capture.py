"""``optc.capture``: a PyTorch model -> optc IR, through torch.export.

Hugging Face models get example inputs generated from their config and dynamic ``batch`` and
``seq`` dimensions; other modules need ``example_inputs`` (and optionally ``dynamic_shapes`` in
torch.export's format). After import the graph is canonicalized, high-level ops are raised, and
dead code is removed; the result is verified.

A model whose code rules out part of the dynamic range (a branch on one length, a sequence
padded to blocks, a length turned into a constant) is retried as
:mod:`optc.frontends.capture_shapes` says: a narrower range, torch's own choice
(``Dim.AUTO``), or a capture for one sequence length (128 tokens for Hugging Face models,
within the position table; tasks then pad every batch to it), each with one warning.
"""

from __future__ import annotations

import linecache
import logging
import os
import traceback
from collections.abc import Mapping
from typing import Any

import torch

from optc.backends.hf import restore_stable_ids
from optc.errors import FrontendError
from optc.frontends.capture_shapes import (
    STATIC_SEQ,
    constraint_line,
    export_adapting,
    is_constraint_error,
)
from optc.frontends.fx_import import import_exported_program
from optc.frontends.raising import RaiseReport, raise_high_level_ops
from optc.ir.analysis import analyze, assign_layer_ids
from optc.ir.cleanup import canonicalize, eliminate_dead_code
from optc.ir.core import DimRange, Module
from optc.ir.verifier import verify

__all__ = ["capture", "example_inputs_for", "is_hf_model"]

_log = logging.getLogger("optc")

_TORCH_DIR = os.path.dirname(torch.__file__)
_OPTC_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# optc's own code (skipped when looking for the user's source line); tests/ is not in it.
_OPTC_DIRS = tuple(
    os.path.join(_OPTC_ROOT, d) + os.sep for d in ("ir", "passes", "frontends", "backends", "tools")
)


def _is_internal(filename: str) -> bool:
    if filename.startswith(_TORCH_DIR) or filename.startswith(_OPTC_DIRS):
        return True
    return os.path.dirname(filename) == _OPTC_ROOT  # optc's top-level modules

HF_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""Inputs optc passes to Hugging Face models, when their forward accepts them."""


def is_hf_model(model: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def max_sequence_length(config: Any) -> int:
    """The longest sequence the model's position table allows."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if n is None:
        return 4096
    family = str(getattr(config, "model_type", ""))
    if "roberta" in family or family in _PADDED_POSITIONS:
        # RoBERTa-style positions start after the padding index.
        n -= (getattr(config, "pad_token_id", 1) or 0) + 1
    return int(n)


_PADDED_POSITIONS = ("camembert", "mpnet", "longformer", "data2vec-text", "ibert", "luke",
                     "markuplm", "xmod")
"""Families (besides *roberta*) whose position ids start after the padding index, so that
the first ``pad_token_id + 1`` rows of the table are never used."""


def example_inputs_for(model: Any, batch: int = 2, seq: int = 8) -> dict[str, torch.Tensor]:
    """Random token inputs a Hugging Face model accepts (batch >= 2 keeps batch dynamic)."""
    import inspect

    config = model.config
    params = inspect.signature(model.forward).parameters
    vocab = int(getattr(config, "vocab_size", 100) or 100)
    gen = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1, max(vocab, 2), (batch, seq), generator=gen)}
    if "attention_mask" in params:
        inputs["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
    if "token_type_ids" in params and getattr(config, "type_vocab_size", 0):
        inputs["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return inputs


class _Wrapper(torch.nn.Module):
    """Calls the model with its inputs (by name when ``input_names`` is given, else by
    position) and returns its tensor outputs as a flat tuple."""

    def __init__(self, model: torch.nn.Module, input_names: list[str] | None,
                 output_keys: list[Any], call_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_keys = output_keys
        self.call_kwargs = call_kwargs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.input_names is None:
            out = self.model(*args, **self.call_kwargs)
        else:
            out = self.model(**dict(zip(self.input_names, args, strict=True)), **self.call_kwargs)
        return tuple(_select(out, key) for key in self.output_keys)


def _select(out: Any, key: Any) -> Any:
    if key is None:
        return out
    return out[key]


def _output_layout(out: Any) -> tuple[list[Any], list[str]]:
    """Keys to pick each tensor output and the names to give them."""
    if isinstance(out, torch.Tensor):
        return [None], ["output"]
    if isinstance(out, Mapping):  # includes transformers' ModelOutput
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        return keys, [str(k) for k in keys]
    if isinstance(out, (tuple, list)):
        keys = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        return keys, [f"output_{i}" for i in keys]
    raise FrontendError(
        f"the model returns {type(out).__name__}; optc needs a tensor, a tuple of tensors or a "
        "dict of tensors"
    )


def _resizer(args: tuple[torch.Tensor, ...], shapes: Any) -> Any:
    """A function ``(dim name, n) -> args`` giving example inputs whose axes of that named dim
    are ``n`` long: cut, or extended by repeating the last position (a padded row stays padded
    at its end, a token id stays an id); None from it when the dim is not used."""
    entries = shapes[0] if isinstance(shapes, tuple) and shapes else ()

    def resize(name: str, n: int) -> tuple[torch.Tensor, ...] | None:
        out, used = list(args), False
        for i, entry in enumerate(entries):
            for axis, d in (entry.items() if isinstance(entry, Mapping) else ()):
                if getattr(d, "__name__", None) != name or axis >= out[i].dim():
                    continue
                used = True
                t, size = out[i], out[i].shape[axis]
                if n <= size:
                    out[i] = t.narrow(axis, 0, n)
                else:
                    last = t.narrow(axis, size - 1, 1)
                    out[i] = torch.cat([t, last.expand(*[n - size if a == axis else -1
                                                         for a in range(t.dim())])], axis)
        return tuple(out) if used else None

    return resize


def _explain(exc: BaseException, model_name: str) -> FrontendError:
    """A one-line FrontendError naming the failing op and the user's source line."""
    op = None
    user_frame = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        func = frame.f_locals.get("func")
        if isinstance(func, torch._ops.OpOverload):
            op = str(func)
        filename = os.path.abspath(frame.f_code.co_filename)
        if not _is_internal(filename) and os.path.exists(filename):
            user_frame = (filename, lineno)
    first = constraint_line(exc) if is_constraint_error(exc) else \
        (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    parts = [f"cannot capture {model_name}"]
    if op:
        parts.append(f"op {op} failed")
    parts.append(f"{type(exc).__name__}: {first}")
    if user_frame:
        code = linecache.getline(user_frame[0], user_frame[1]).strip()
        parts.append(f"at {user_frame[0]}:{user_frame[1]}: {code}")
    return FrontendError("; ".join(parts))


def capture(
    model: torch.nn.Module | str | os.PathLike,
    example_inputs: Mapping[str, torch.Tensor] | tuple | None = None,
    *,
    dynamic_shapes: Any = "auto",
    raise_ops: bool = True,
    source: dict[str, Any] | None = None,
) -> Module:
    """Capture ``model`` into an optc module.

    ``model`` may be an ``nn.Module``, a Hugging Face id or a local model directory.
    ``example_inputs``: a dict of named tensors or a tuple of positional tensors; generated for
    Hugging Face models when omitted. ``dynamic_shapes="auto"`` makes dims 0 and 1 of every
    Hugging Face input dynamic (``batch``, ``seq``); for other modules it keeps shapes static
    unless torch.export-style ``dynamic_shapes`` (one entry per input) are given.
    ``raise_ops=False`` keeps the plain ATen graph (no ``linear``/``attention`` ops).
    The model is not modified (its train/eval mode is restored).
    """
    if isinstance(model, (str, os.PathLike)):
        from optc.frontends.huggingface import load_model

        model, source = load_model(model)
    if not isinstance(model, torch.nn.Module):
        raise FrontendError(f"capture() needs an nn.Module or a model path, got {type(model).__name__}")
    hf = is_hf_model(model)
    name = type(model).__name__

    if example_inputs is None:
        if not hf:
            raise FrontendError(
                f"{name} is not a Hugging Face model: pass example_inputs (a tuple or dict of tensors)"
            )
        example_inputs = example_inputs_for(model)
    if isinstance(example_inputs, Mapping):
        input_names = list(example_inputs)
        args = tuple(example_inputs.values())
    else:
        args = tuple(example_inputs)
        input_names = [f"input_{i}" for i in range(len(args))]
    for n, a in zip(input_names, args, strict=True):
        if not isinstance(a, torch.Tensor):
            raise FrontendError(f"example input '{n}' is a {type(a).__name__}, not a tensor")

    call_kwargs: dict[str, Any] = {}
    if hf:
        call_kwargs["return_dict"] = True
        if getattr(model.config, "use_cache", False):
            call_kwargs["use_cache"] = False

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:
            with torch.no_grad():
                if isinstance(example_inputs, Mapping):
                    sample = model(**dict(example_inputs), **call_kwargs)
                else:
                    sample = model(*args, **call_kwargs)
        except Exception as exc:  # noqa: BLE001 - the model fails on its example inputs
            raise _explain(exc, name) from exc
        keys, output_names = _output_layout(sample)
        call_names = input_names if isinstance(example_inputs, Mapping) else None
        wrapper = _Wrapper(model, call_names, keys, call_kwargs)
        dims: dict[tuple[int, int], str] = {}
        shapes: Any = None
        if dynamic_shapes == "auto":
            if hf:
                batch = torch.export.Dim("batch")
                seq = torch.export.Dim("seq", max=max_sequence_length(model.config))
                spec = []
                for i, a in enumerate(args):
                    entry = {0: batch, 1: seq} if a.dim() >= 2 else {}
                    spec.append(entry)
                    dims[(i, 0)] = "batch"
                    dims[(i, 1)] = "seq"
                shapes = (tuple(spec),)
        elif dynamic_shapes is not None:
            shapes = (tuple(dynamic_shapes),)
            for i, entry in enumerate(dynamic_shapes):  # name the IR's dims after the user's
                for axis, d in (entry.items() if isinstance(entry, Mapping) else ()):
                    if isinstance(getattr(d, "__name__", None), str):
                        dims[(i, axis)] = d.__name__

        def export(inputs: tuple[Any, ...], spec: Any) -> Any:
            return torch.export.export(wrapper, inputs, dynamic_shapes=spec, strict=False)

        static_length = min(STATIC_SEQ, max_sequence_length(model.config)) if hf else None
        try:
            exported = export_adapting(export, args, shapes, resize=_resizer(args, shapes),
                                       static_length=static_length)
        except Exception as exc:  # noqa: BLE001 - every export failure becomes a FrontendError
            raise _explain(exc, name) from exc
        args = exported.args
        ep = exported.program
        if exported.note:
            _log.warning("%s: %s", name, exported.note)
    finally:
        for m, training in modes.items():
            m.training = training

    module = import_exported_program(
        ep, name, dim_names=dims, param_prefix="model.", input_names=input_names
    )
    module.graph.set_outputs(dict(zip(output_names, module.graph.outputs.values(), strict=True)))
    module.meta["source"] = dict(source or {"class": name})
    module.meta["source"].setdefault("class", name)
    if hf:
        module.meta["source"].setdefault("model_type", getattr(model.config, "model_type", None))
        dropout = next((getattr(model.config, k) for k in ("hidden_dropout_prob", "dropout", "resid_pdrop")
                        if isinstance(getattr(model.config, k, None), float)), None)
        if dropout is not None:  # training through the IR re-inserts dropout with this p
            module.meta["source"].setdefault("hidden_dropout_prob", dropout)
        defaults = {}
        if "attention_mask" in input_names:
            defaults["attention_mask"] = "ones"
        if "token_type_ids" in input_names:
            defaults["token_type_ids"] = "zeros"
        module.meta["input_defaults"] = defaults

    for dim, (lo, hi) in (exported.ranges or {}).items():
        if dim in module.dims:
            module.dims[dim] = DimRange(lo, hi)
    canonicalize(module)
    if raise_ops:
        report = raise_high_level_ops(module)
        eliminate_dead_code(module)
        restore_stable_ids(module, getattr(getattr(model, "config", None), "optc", None))
        assign_layer_ids(module)
        _warn_unraised(module, report)
    else:
        eliminate_dead_code(module)
    verify(module, "after capture")
    return module


def _warn_unraised(module: Module, report: RaiseReport) -> None:
    """One warning when attention patterns stayed ATen: structural passes cannot see them."""
    missed = [m for m in report.misses if "not raised to attention" in m]
    if not missed and (analyze(module).layers or not report.misses):
        return
    first = (missed or report.misses)[0]
    _log.warning(
        "%s: %d attention pattern(s) were not raised, so structural passes will not see "
        "those layers (first: %s); `optc inspect` lists every reason",
        module.name, len(missed) or len(report.misses), first,
    )
