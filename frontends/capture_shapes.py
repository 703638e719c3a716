"""Dynamic shapes for torch.export, and what capture does when a model does not allow them.

:func:`optc.frontends.capture.capture` asks torch.export for dynamic ``batch`` and ``seq``
dims (or for the user's named ``torch.export.Dim`` objects). A model's code can rule out part
of that range, and torch.export then fails with "Constraints violated" plus one of:

- bounds it suggests (BART's decoder needs seq >= 3);
- guards it could not prove over the range: a branch on one length (MobileBERT: seq == 2, MPT:
  seq == its maximum), a sequence padded to a multiple of a block (LongT5's local attention,
  Qwen3.5's chunked delta rule: ``(s + (-s) % 64) // 64 == 1``), or an expression its solver
  cannot bound although it always holds (DeepSeek-V3.2, MiniMax: ``min(2048, s) <= s``);
- a specialization: the code turns the length into a constant (Funnel, Mamba, RWKV,
  RecurrentGemma: "specialized it to be a constant (7)").

:func:`export_adapting` retries, each step only after a constraint failure of the one before:

1. the dims narrowed to the suggested bounds, or to the run of lengths around the example's
   where every printed guard holds (:func:`tightened_dims`; guards are evaluated here with
   integer arithmetic, never ``eval``);
2. the failing dims as ``Dim.AUTO`` within the bounds asked for: torch keeps a dim symbolic
   wherever the code allows it, with the range it can prove (its graph computes
   ``min(2048, s)`` and the block padding symbolically), instead of refusing guards its
   solver cannot bound;
3. a static capture of a dim torch specialized: at ``static_length`` tokens when the caller can
   build inputs of that length (a Hugging Face model: the task's default length within the
   position table, so that a task's rows fit after padding), else, or when that fails, at the
   example's length. The graph input then has that int as its size, and
   :func:`optc.backends.model_inputs.fixed_length` reads it: tasks pad every batch to it and
   the self-check probes only it.

Each outcome other than the first comes with one note for the warning; a failure that no step
fixes is summarized in one line by :func:`constraint_line`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["STATIC_SEQ", "Exported", "constraint_line", "export_adapting", "is_constraint_error",
           "narrowed", "tightened_dims"]

STATIC_SEQ = 128
"""The length a model whose sequence length is specialized is captured for, within its position
table: the default ``max_length`` of optc's tasks (:func:`optc.tasks.limits.default_max_length`
of a classification task), so that their rows are padded, never cut shorter than usual."""

_SIZE = r"L(?:\[[^\]]*\])+\.size\(\)\[\d+\]"
"""How torch.export prints the size of an input: ``L['args'][0].size()[1]``."""


def is_constraint_error(exc: BaseException) -> bool:
    """Whether torch.export refused the dynamic dims it was given (rather than the model
    failing): "Constraints violated", or torch's own error building the fix it suggests."""
    text = str(exc)
    return "Constraints violated" in text or "Cannot create Dim with inconsistent" in text


def constraint_line(exc: BaseException) -> str:
    """One line saying what the model's code does to a dynamic dim, from torch.export's
    multi-line "Constraints violated" message (its first line says only that it failed)."""
    text = str(exc)
    constant = re.search(r"You marked (\w+) as dynamic but your code specialized it to be a "
                         r"constant \((\d+)\)", text)
    if constant:
        return (f"the model's code turns {constant.group(1)} into a constant "
                f"({constant.group(2)} in the example)")
    guard = re.search(rf"Not all values of (\w+) = ({_SIZE}) in the specified range ([^\n]*?) "
                      r"satisfy the generated guard (.+?)\.?$", text, re.MULTILINE)
    if guard:
        name = guard.group(1)
        condition = guard.group(4).replace(guard.group(2), name)
        if len(condition) > 120:
            condition = condition[:117] + "..."
        return f"not every {name} in {guard.group(3)} satisfies the model's guard {condition}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def _constrained_names(exc: BaseException) -> set[str] | None:
    """The dims "Constraints violated (seq, batch)!" names; None when it names none."""
    m = re.search(r"Constraints violated \(([^)]*)\)", str(exc))
    return {n.strip() for n in m.group(1).split(",")} if m else None


def _specialized(exc: BaseException) -> dict[str, int]:
    """Dim name -> the constant torch says the code turned it into."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r"You marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)",
        str(exc))}


# -- the dynamic_shapes structure ----------------------------------------------------------------
def _is_dim(d: Any) -> bool:
    return isinstance(getattr(d, "__name__", None), str) and hasattr(d, "min")


def _entries(shapes: Any) -> list[dict[int, Any]] | None:
    """The per-input ``{axis: dim}`` dicts of ``(tuple_of_entries,)``, None for other forms."""
    if not isinstance(shapes, tuple) or len(shapes) != 1 or not isinstance(shapes[0], tuple):
        return None
    entries = [e or {} for e in shapes[0]]
    return entries if all(isinstance(e, dict) for e in entries) else None


def _dims(shapes: Any) -> dict[str, Any]:
    """Named dims (``torch.export.Dim`` objects, not hints) by name."""
    found: dict[str, Any] = {}
    for entry in _entries(shapes) or []:
        for d in entry.values():
            if _is_dim(d):
                found.setdefault(d.__name__, d)
    return found


def _bounds(d: Any) -> tuple[int, int | None]:
    hi = getattr(d, "max", None)
    return int(getattr(d, "min", 0) or 0), (None if hi is None or hi >= 1 << 62 else int(hi))


def _replaced(shapes: Any, new: dict[str, Any]) -> Any:
    """``shapes`` with each named dim in ``new`` replaced (by a Dim or a hint), or dropped
    (made static) where ``new`` maps it to None."""
    out = []
    for entry in _entries(shapes) or []:
        kept = {}
        for axis, d in entry.items():
            name = d.__name__ if _is_dim(d) else None
            if name in new:
                if new[name] is not None:
                    kept[axis] = new[name]
            else:
                kept[axis] = d
        out.append(kept)
    return (tuple(out),)


def _positions(shapes: Any, name: str) -> list[tuple[int, int]]:
    """(input index, axis) of every use of the named dim."""
    return [(i, axis) for i, entry in enumerate(_entries(shapes) or [])
            for axis, d in entry.items() if _is_dim(d) and d.__name__ == name]


def _sizes(shapes: Any, args: tuple[Any, ...]) -> dict[str, int]:
    """Named dim -> its size in the example inputs."""
    sizes: dict[str, int] = {}
    for i, entry in enumerate(_entries(shapes) or []):
        for axis, d in entry.items():
            if _is_dim(d) and i < len(args) and isinstance(args[i], torch.Tensor) \
                    and axis < args[i].dim():
                sizes.setdefault(d.__name__, int(args[i].shape[axis]))
    return sizes


def narrowed(before: Any, after: Any) -> str:
    """``seq 3..64`` for each named dim whose range ``after`` narrows from ``before``."""
    old, new = _dims(before), _dims(after)
    return ", ".join(f"{name} {_bounds(d)[0] or 1}..{'' if _bounds(d)[1] is None else _bounds(d)[1]}"
                     for name, d in new.items() if name in old and _bounds(old[name]) != _bounds(d))


# -- guards --------------------------------------------------------------------------------------
def tightened_dims(exc: BaseException, shapes: Any, example: dict[str, int]) -> Any:
    """The dynamic shapes narrowed to what the model allows, when torch.export reports that
    only part of a named dim's range satisfies the model's guards: the bounds it suggests, or
    the longest run of sizes around the example's (``example``: dim name -> size) where every
    guard it printed holds. Only tighter bounds; None when the error is not that, a guard
    cannot be read, or nothing is narrower."""
    text = str(exc)
    if "Constraints violated" not in text:
        return None
    dims = _dims(shapes)
    found = {m.group(1): m for m in re.finditer(
        r"(\w+) = Dim\('\1'(?:, min=(\d+))?(?:, max=(\d+))?\)", text) if m.group(1) in dims}
    guards: dict[str, list[str]] = {}
    for m in re.finditer(rf"Not all values of (\w+) = ({_SIZE}) in the specified range [^\n]*? "
                         r"satisfy the generated guard (.+?)\.?$", text, re.MULTILINE):
        if m.group(1) in dims:
            guards.setdefault(m.group(1), []).append(m.group(3).replace(m.group(2), "s"))
    if not found and not guards:
        return None
    new = {}
    for key, d in dims.items():
        lo, hi = _bounds(d)
        m = found.get(key)
        if m is not None:
            lo = max(lo, int(m.group(2) or lo))
            if m.group(3):
                hi = int(m.group(3)) if hi is None else min(hi, int(m.group(3)))
        if key in guards:
            allowed = _allowed_run(guards[key], lo, hi, example.get(key))
            if allowed is None:
                return None
            lo, hi = allowed
        new[key] = torch.export.Dim(key, min=lo, max=hi) if hi is not None else \
            torch.export.Dim(key, min=lo)
    tightened = _replaced(shapes, new)
    return tightened if narrowed(shapes, tightened) else None


_GUARD_FUNCTIONS = {"max": max, "min": min, "Max": max, "Min": min, "Mod": lambda a, b: a % b,
                    "FloorDiv": lambda a, b: a // b}


def _guard_holds(guard: str, value: int) -> bool:
    """Whether a guard torch.export printed (``((-1) + s) != 1``, ``max(0, 64 - s)``...) holds
    for ``s = value``: integer arithmetic, comparisons and min/max/Mod/FloorDiv only (read with
    :mod:`ast`, never ``eval``); ValueError for anything else. A guard that divides by zero at
    ``value`` (a block count of a length too short for one block) does not hold there."""
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
        tree = ast.parse(guard, mode="eval")
    except SyntaxError as exc:
        raise ValueError(str(exc)) from None
    try:
        return bool(run(tree))
    except ZeroDivisionError:
        return False


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


# -- the retries ---------------------------------------------------------------------------------
@dataclass
class Exported:
    """What :func:`export_adapting` captured."""

    program: Any
    """The ``torch.export.ExportedProgram``."""
    args: tuple[Any, ...]
    """The example inputs it was captured with (longer ones for a static capture)."""
    note: str | None = None
    """What the capture is limited to, for one warning (None: the dims asked for)."""
    ranges: dict[str, tuple[int, int | None]] | None = None
    """Dim name -> (min, max) the IR records for it, where torch's range constraints would
    say otherwise: a ``Dim.AUTO`` dim comes back with min 2 (torch assumes sizes 0 and 1
    away for any dynamic dim, named ones too, whose ranges it reports from the bound asked
    for), kept at the bound asked for."""


def _finite(bound: Any) -> int | None:
    """A range bound as an int; None when infinite (sympy's and torch's infinities)."""
    if getattr(bound, "is_finite", True) is False:
        return None
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return value if abs(value) < 1 << 62 else None


def _symbolic_range(program: Any, positions: list[tuple[int, int]],
                    ) -> tuple[int, int | None] | None:
    """The proven range of the dim at ``positions`` of the program's user inputs; None when
    torch made it static at any of them."""
    from torch.export.graph_signature import InputKind

    user = [spec.arg.name for spec in program.graph_signature.input_specs
            if spec.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    found: tuple[int, int | None] | None = None
    for index, axis in positions:
        val = nodes[user[index]].meta.get("val") if index < len(user) else None
        size = val.shape[axis] if isinstance(val, torch.Tensor) else None
        if not isinstance(size, torch.SymInt):
            return None
        rng = program.range_constraints.get(size.node.expr)
        if found is None:
            found = (0, None) if rng is None else (_finite(rng.lower) or 0, _finite(rng.upper))
    return found


def export_adapting(export: Callable[[tuple[Any, ...], Any], Any], args: tuple[Any, ...],
                    shapes: Any, *, resize: Callable[[str, int], tuple[Any, ...] | None] | None
                    = None, static_length: int | None = None) -> Exported:
    """``export(args, shapes)``, retried as the module docstring says when torch.export
    refuses the named dims of ``shapes``. ``resize(name, n)`` builds example inputs whose dim
    ``name`` is ``n`` long (None: it cannot); ``static_length`` is the length a specialized
    dim is captured at when it can. Errors that are not constraint failures, and the last
    failure when no step works, propagate."""
    try:
        return Exported(export(args, shapes), args)
    except Exception as exc:  # noqa: BLE001 - adapted below, or re-raised
        if not _dims(shapes) or not is_constraint_error(exc):
            raise
        first = exc
    asked = shapes
    tight = tightened_dims(first, shapes, _sizes(shapes, args))
    if tight is not None:
        try:
            return Exported(export(args, tight), args,
                            f"captured for {narrowed(asked, tight)} only: the model computes "
                            "differently outside that range (inputs outside it are refused)")
        except Exception as exc:  # noqa: BLE001
            if not is_constraint_error(exc):
                raise
            shapes = tight  # keep the bounds the guards allow
    failing = _constrained_names(first) or set(_dims(shapes))
    dims = {n: d for n, d in _dims(shapes).items() if n in failing}
    if not dims:
        raise first
    constant = _specialized(first)
    why = constraint_line(first)
    fallback = None
    if not set(dims) <= set(constant):
        wide = _dims(asked)  # torch proves what it keeps: no need for the guards' narrowing
        hints = {n: (torch.export.Dim.STATIC if n in constant else
                     torch.export.Dim.AUTO(min=_bounds(wide[n])[0], max=_bounds(wide[n])[1]))
                 for n in dims}
        program = export(args, _replaced(shapes, hints))
        proven = {n: _symbolic_range(program, _positions(shapes, n)) for n in dims}
        static = [n for n, rng in proven.items() if rng is None]
        if not static:
            kept = {}
            for n, rng in proven.items():
                lo, hi = rng or (0, None)
                asked_lo = _bounds(wide[n])[0]
                kept[n] = (asked_lo if lo == 2 and asked_lo < 2 else lo, hi)
            ranges = [f"{n} {max(lo, 1)}..{'' if hi is None else hi}"
                      for n, (lo, hi) in kept.items() if (lo, hi) != _bounds(_dims(asked)[n])]
            note = (f"captured for {', '.join(ranges)} only ({why}; inputs outside it are "
                    "refused)" if ranges else None)
            return Exported(program, args, note, kept)
        sizes = _sizes(shapes, args)
        constant.update({n: sizes[n] for n in static})
        fallback = Exported(program, args)
    return _static(export, args, shapes, constant, why, fallback, resize, static_length)


def _static(export: Callable[[tuple[Any, ...], Any], Any], args: tuple[Any, ...], shapes: Any,
            constant: dict[str, int], why: str, fallback: Exported | None,
            resize: Callable[[str, int], tuple[Any, ...] | None] | None,
            static_length: int | None) -> Exported:
    """The capture with the specialized dims static: at ``static_length`` when one dim is
    specialized and ``resize`` gives inputs of that length, else at the example's sizes."""
    static = _replaced(shapes, dict.fromkeys(constant))
    tried = None
    if len(constant) == 1 and resize is not None and static_length is not None:
        (name, size), = constant.items()
        sequence = any(axis > 0 for _, axis in _positions(shapes, name))  # never the batch
        longer = resize(name, static_length) if sequence and static_length != size else None
        if longer is not None:
            try:
                return Exported(export(longer, static), longer,
                                _static_note(name, static_length, why, _positions(shapes, name)))
            except Exception as exc:  # noqa: BLE001 - the example's length is tried next
                tried = f"; at {static_length} tokens it fails: {constraint_line(exc)}"
    if fallback is None:
        fallback = Exported(export(args, static), args)
    note = "; ".join(_static_note(n, s, why, _positions(shapes, n)) for n, s in constant.items())
    return Exported(fallback.program, fallback.args, note + (tried or ""))


def _static_note(name: str, size: int, why: str, positions: list[tuple[int, int]]) -> str:
    batch = bool(positions) and all(axis == 0 for _, axis in positions)
    limit = f"batches must have {size} rows" if batch else f"inputs are padded to {size} tokens"
    return f"captured for {name} == {size} only: {limit} ({why})"
