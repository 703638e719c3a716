"""``optc.capture``: a PyTorch model -> optc IR, through torch.export.

Hugging Face models get example inputs generated from their config and dynamic ``batch`` and
``seq`` dimensions; other modules need ``example_inputs`` (and optionally ``dynamic_shapes`` in
torch.export's format). After import the graph is canonicalized, high-level ops are raised, and
dead code is removed; the result is verified.
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
from optc.frontends.fx_import import import_exported_program
from optc.frontends.raising import RaiseReport, raise_high_level_ops
from optc.ir.analysis import analyze, assign_layer_ids
from optc.ir.cleanup import canonicalize, eliminate_dead_code
from optc.ir.core import Module
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


def _tightened_dims(exc: BaseException, shapes: Any, example: dict[str, int]) -> Any:
    """The dynamic shapes narrowed to what the model allows, when torch.export reports that
    only part of the ``batch``/``seq`` range optc asked for satisfies the model's guards: the
    bounds it suggests (BART's decoder needs seq >= 3), or the longest run of lengths around the
    example's (``example``: dim name -> size) that satisfies every guard it printed (MobileBERT
    branches on seq == 2, MPT on seq == its maximum). Only the dims optc made, only tighter
    bounds; None when the error is not that or a guard cannot be read."""
    import re

    text = str(exc)
    if "Constraints violated" not in text:
        return None
    dims: dict[str, Any] = {}
    for entry in shapes[0]:
        for d in entry.values():
            dims.setdefault(d.__name__, d)
    bounds = {key: (getattr(d, "min", 0) or 0, getattr(d, "max", None)) for key, d in dims.items()}
    found = {m.group(1): m for m in re.finditer(
        r"(batch|seq) = Dim\('\1'(?:, min=(\d+))?(?:, max=(\d+))?\)", text)}
    guards: dict[str, list[str]] = {}
    for m in re.finditer(r"Not all values of (batch|seq) = (L(?:\[[^\]]*\])+\.size\(\)\[\d+\]) in "
                         r"the specified range [^\n]*? satisfy the generated guard (.+?)\.?$",
                         text, re.MULTILINE):
        guards.setdefault(m.group(1), []).append(m.group(3).replace(m.group(2), "s"))
    if not found and not guards:
        return None
    new = {}
    for key, d in dims.items():
        lo, hi = bounds[key]
        m = found.get(key)
        if m is not None:
            lo = max(lo, int(m.group(2) or lo))
            hi = min(hi, int(m.group(3))) if hi is not None and m.group(3) else hi or (
                int(m.group(3)) if m.group(3) else None)
        if key in guards:
            allowed = _allowed_run(guards[key], lo, hi, example.get(key))
            if allowed is None:
                return None
            lo, hi = allowed
        new[key] = torch.export.Dim(key, min=lo, max=hi) if hi is not None else torch.export.Dim(key, min=lo)
    return (tuple({i: new[d.__name__] for i, d in entry.items()} for entry in shapes[0]),)


def _narrowed(before: Any, after: Any) -> str:
    """``seq 3..64`` for each dim whose range ``after`` narrows from ``before``."""
    def ranges(shapes: Any) -> dict[str, tuple[Any, Any]]:
        return {d.__name__: (getattr(d, "min", None), getattr(d, "max", None))
                for entry in shapes[0] for d in entry.values()}

    old, new = ranges(before), ranges(after)
    return ", ".join(f"{name} {lo or 1}..{'' if hi is None else hi}"
                     for name, (lo, hi) in new.items() if old.get(name) != (lo, hi))


_GUARD_FUNCTIONS = {"max": max, "min": min, "Max": max, "Min": min, "Mod": lambda a, b: a % b,
                    "FloorDiv": lambda a, b: a // b}


def _guard_holds(guard: str, value: int) -> bool:
    """Whether a guard torch.export printed (``((-1) + s) != 1``, ``max(0, 64 - s)``...) holds
    for ``s = value``: integer arithmetic, comparisons and min/max/Mod/FloorDiv only (read with
    :mod:`ast`, never ``eval``); ValueError for anything else."""
    import ast
    import operator

    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
    compare = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
               ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}

    def run(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return run(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id == "s":
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -run(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in binary:
            return binary[type(node.op)](run(node.left), run(node.right))
        if isinstance(node, ast.BoolOp):
            values = [run(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare) and all(type(o) in compare for o in node.ops):
            left = run(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = run(right_node)
                if not compare[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in _GUARD_FUNCTIONS and not node.keywords:
            return _GUARD_FUNCTIONS[node.func.id](*(run(a) for a in node.args))
        raise ValueError(f"unsupported guard syntax: {ast.dump(node)[:80]}")

    try:
        return bool(run(ast.parse(guard, mode="eval")))
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ValueError(str(exc)) from None


def _allowed_run(guards: list[str], lo: int, hi: int | None, example: int | None,
                 ) -> tuple[int, int] | None:
    """The longest run of sizes in ``[lo, hi]`` (around ``example`` when it is allowed) where
    every guard holds; None when the range is unbounded, a guard cannot be read, or nothing
    holds."""
    if hi is None or hi - lo > 1 << 16:
        return None
    try:
        ok = [all(_guard_holds(g, v) for g in guards) for v in range(lo, hi + 1)]
    except ValueError:
        return None
    runs, start = [], None
    for i, good in enumerate(ok + [False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append((lo + start, lo + i - 1))
            start = None
    if not runs:
        return None
    around = [r for r in runs if example is not None and r[0] <= example <= r[1]]
    return around[0] if around else max(runs, key=lambda r: r[1] - r[0])


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
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
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
        try:
            try:
                ep = torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=False)
            except Exception as exc:  # noqa: BLE001 - retried once with the model's own bounds
                example = {"batch": args[0].shape[0], "seq": args[0].shape[1]} if args and \
                    args[0].dim() >= 2 else {}
                tightened = (_tightened_dims(exc, shapes, example)
                             if dynamic_shapes == "auto" and hf else None)
                if tightened is None:
                    raise
                ranges = _narrowed(shapes, tightened)
                _log.warning("%s: captured for %s only: the model computes differently outside "
                             "that range (inputs outside it are refused)", name, ranges)
                ep = torch.export.export(wrapper, args, dynamic_shapes=tightened, strict=False)
        except Exception as exc:  # noqa: BLE001 - every export failure becomes a FrontendError
            raise _explain(exc, name) from exc
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
