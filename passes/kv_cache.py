"""kv-cache: turn a captured causal LM into one step of cached (incremental) decoding.

The rewritten graph takes, besides ``input_ids`` [batch, seq] and ``attention_mask``
[batch, seq] (the new tokens), ``past_attention_mask`` [batch, past] and, for every attention
op (layer order, ``i`` = 0, 1, ...), ``past_key.<i>`` / ``past_value.<i>``
[batch, past, kv_heads*head_dim] (keys after rotary, as the attention op reads them). It
returns its outputs plus ``present_key.<i>`` / ``present_value.<i>`` [batch, past + seq, ...]
(past and new keys concatenated): feed them back as the next step's past, with
``past_attention_mask`` = ``cat(past_attention_mask, attention_mask)``. ``past = 0`` is the
first (prompt) step. :mod:`optc.backends.generate` drives the loop.

Rewrites: each attention's key/value become ``cat(past, new)``; the attention mask becomes
``(key position <= past + query position) & past+new padding mask``; every ``arange`` of
length ``seq`` left in the graph (the positions of rotary or learned position embeddings)
is offset by ``past``, so positions are ``past .. past + seq - 1`` for every row (what a
Hugging Face model computes when it is given no ``position_ids``; left padding does not shift
them).

The pass first checks, by running the mask computation on a probe, that the captured mask is
exactly causal + padding; anything else (sliding windows, bidirectional encoders, masks read
from a bias) is refused with :class:`~optc.errors.PassError` and the IR is left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from optc.backends.eager import to_eager
from optc.errors import OptcError, PassError
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import DimRange, Module, Node, Value
from optc.ir.types import SymType, TensorType
from optc.passes.base import Pass, PassResult
from optc.passes.registry import register_pass

__all__ = ["KVCache", "add_kv_cache", "CACHE_INPUT", "PAST_MASK"]

PAST_MASK = "past_attention_mask"
CACHE_INPUT = ("past_key", "past_value")
"""Prefixes of the cache inputs; the outputs are ``present_key.<i>``/``present_value.<i>``."""


@register_pass
@dataclass(frozen=True)
class KVCache(Pass):
    """Add a key/value cache to a causal LM (past key/values in, present key/values out).

    Guarantees: with ``past = 0`` the outputs equal the original module's; running a prefix and
    then the rest with the prefix's present key/values as past gives the outputs of running the
    whole sequence at once (for the rest's positions). Refuses (IR unchanged) a module without
    attention ops, without an ``attention_mask`` input, or whose mask is not causal + padding.
    A module that already has a cache is left unchanged (modified=False).
    """

    name = "kv-cache"

    def requires(self, module: Module) -> str | None:
        if _has_cache(module):
            return None
        try:
            _check(module)
        except PassError as exc:
            return str(exc).removeprefix("kv-cache: ")
        return None

    def run(self, module: Module) -> PassResult:
        if _has_cache(module):
            return PassResult(False, {})
        layers = add_kv_cache(module)
        return PassResult(True, {"layers": layers})


def _has_cache(module: Module) -> bool:
    return any(v.name == PAST_MASK for v in module.graph.inputs)


def _attentions(module: Module) -> list[Node]:
    nodes = [n for n in module.graph if n.op == "attention"]
    if not nodes:
        raise PassError("kv-cache: the module has no attention ops (run raise-ops, or capture a "
                        "decoder whose attention optc raises)")
    return nodes


def _input(module: Module, name: str) -> Value:
    for v in module.graph.inputs:
        if v.name == name:
            return v
    names = ", ".join(v.name for v in module.graph.inputs)
    raise PassError(f"kv-cache needs a graph input '{name}' [batch, seq]; the module takes {names}")


def _probe_inputs(module: Module, batch: int, seq: int) -> dict[str, torch.Tensor]:
    names = _input(module, "attention_mask").tensor_type.shape
    feeds = {}
    for v in module.graph.inputs:
        t = v.tensor_type
        shape = []
        for d in t.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in names:
                shape.append(batch if d == names[0] else seq)
            else:
                raise PassError(f"kv-cache: input {v.name} has dim {d!r}; only the batch and "
                                "sequence dims of attention_mask are supported")
        feeds[v.name] = torch.zeros(shape, dtype=t.dtype)
    return feeds


def _check_mask(module: Module, mask: Value | None, causal: bool) -> None:
    """The captured mask (and causal flag) must equal causal & padding on a probe with padding
    on both sides."""
    batch, seq = 3, 6
    pad = torch.ones(batch, seq, dtype=torch.long)
    pad[1, 4:] = 0
    pad[2, :2] = 0
    allowed = torch.ones(1, 1, seq, seq, dtype=torch.bool)
    what = "no mask"
    if mask is not None:
        what = f"the attention mask %{mask.name}"
        probe = module.clone()
        probe.graph.set_outputs({"mask": probe.value_by_name(mask.name)})
        eliminate_dead_code(probe)
        feeds = _probe_inputs(probe, batch, seq)
        feeds["attention_mask"] = pad.to(feeds["attention_mask"].dtype)
        try:
            with torch.inference_mode():
                got = to_eager(probe)(**feeds)["mask"]
        except OptcError as exc:
            raise PassError(f"kv-cache: cannot evaluate {what}: {exc}") from exc
        allowed = got if got.dtype == torch.bool else got > torch.finfo(got.dtype).min / 2
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    expected = torch.ones(seq, seq, dtype=torch.bool).tril() & pad.bool()[:, None, None, :]
    try:
        allowed = allowed.expand(expected.shape)
    except RuntimeError:
        allowed = None
    if allowed is None or not torch.equal(allowed, expected):
        raise PassError(f"kv-cache: {what} (causal={causal}) is not causal + padding (a sliding "
                        "window, a bidirectional model, or padding ignored?); only plain causal "
                        "decoders get a cache")


def _check(module: Module) -> list[Node]:
    """The attention ops; :class:`PassError` when the module does not qualify for a cache."""
    attentions = _attentions(module)
    mask_t = _input(module, "attention_mask").tensor_type
    if mask_t.rank != 2 or not isinstance(mask_t.shape[1], str) or mask_t.shape[1] == "past":
        raise PassError(f"kv-cache needs attention_mask [batch, seq] with a dynamic seq, got "
                        f"{mask_t} (capture with dynamic shapes)")
    if any(v.name.startswith(CACHE_INPUT) for v in module.graph.inputs):
        raise PassError("kv-cache: the module already has past_key/past_value inputs")
    masks = {(id(n.arg(3)), bool(n.attr("causal", False))): n for n in attentions}
    if len(masks) != 1:
        raise PassError("kv-cache: every attention op must read one shared mask (causal + "
                        f"padding), found {len(masks)} different mask/causal combinations")
    if any(n.attr("kind", "softmax") != "softmax" for n in attentions):
        raise PassError("kv-cache supports softmax attention only (not kind=topk)")
    if "past" in module.dims:
        raise PassError("kv-cache: the module already has a dim named 'past'")
    node = attentions[0]
    mask = node.arg(3)
    _check_mask(module, mask if isinstance(mask, Value) else None, bool(node.attr("causal", False)))
    return attentions


def add_kv_cache(module: Module) -> int:
    """Rewrite ``module`` in place for cached decoding (see the module docstring); returns the
    number of attention ops that got a cache. Raises :class:`PassError` before changing
    anything when the module does not qualify."""
    attentions = _check(module)
    mask_in = _input(module, "attention_mask")
    graph = module.graph
    mask_t = mask_in.tensor_type
    batch, seq_dim = mask_t.shape
    seq_range = module.dims.get(seq_dim)
    module.dims["past"] = DimRange(0, None if seq_range is None else seq_range.max)
    total = f"past + {seq_dim}"
    past_mask = graph.add_input(PAST_MASK, TensorType(mask_t.dtype, (batch, "past")))
    first = graph.nodes[0]

    def make(op: str, args: tuple, type_, name: str, kwargs=None, after: Node | None = None) -> Value:
        node = graph.create_node(op, args, kwargs or {}, [type_], names=name,
                                 before=None if after is not None else first, after=after)
        return node.outputs[0]

    past = make("aten.sym_size.int", (past_mask, 1), SymType("int", "past"), "past_len")
    seq = make("aten.sym_size.int", (mask_in, 1), SymType("int", seq_dim), "seq_len")
    full = make("aten.cat.default", ([past_mask, mask_in], 1), TensorType(mask_t.dtype, (batch, total)),
                "full_attention_mask")
    keys = make("aten.sym_size.int", (full, 1), SymType("int", total), "key_len")
    long = torch.long
    q0 = make("aten.arange.default", (seq,), TensorType(long, (seq_dim,)), "query_index",
              {"dtype": long})
    qpos = make("aten.add.Tensor", (q0, past), TensorType(long, (seq_dim,)), "query_position")
    qcol = make("aten.unsqueeze.default", (qpos, 1), TensorType(long, (seq_dim, 1)), "query_position")
    kpos = make("aten.arange.default", (keys,), TensorType(long, (total,)), "key_position",
                {"dtype": long})
    causal = make("aten.le.Tensor", (kpos, qcol), TensorType(torch.bool, (seq_dim, total)), "causal")
    keep = make("aten.ne.Scalar", (full, 0), TensorType(torch.bool, (batch, total)), "key_padding")
    keep = make("aten.unsqueeze.default", (keep, 1), TensorType(torch.bool, (batch, 1, total)),
                "key_padding")
    keep = make("aten.unsqueeze.default", (keep, 2), TensorType(torch.bool, (batch, 1, 1, total)),
                "key_padding")
    new_mask = make("aten.__and__.Tensor", (causal, keep),
                    TensorType(torch.bool, (batch, 1, seq_dim, total)), "cached_mask")

    attentions.sort(key=lambda n: (n.attr("layer") is None, n.attr("layer") or 0))
    for i, node in enumerate(attentions):
        args = list(node.args)
        for slot, prefix, out in ((1, "past_key", "present_key"), (2, "past_value", "present_value")):
            new = args[slot]
            t = new.tensor_type
            old = graph.add_input(f"{prefix}.{i}", TensorType(t.dtype, (t.shape[0], "past", t.shape[2])))
            anchor = new.producer
            cat = graph.create_node("aten.cat.default", ([old, new], 1), {},
                                    [TensorType(t.dtype, (t.shape[0], total, t.shape[2]))],
                                    names=f"{out}_{i}", after=anchor,
                                    before=None if anchor is not None else first)
            args[slot] = cat.outputs[0]
            graph.set_output(f"{out}.{i}", cat.outputs[0])
        while len(args) < 4:
            args.append(None)
        args[3] = new_mask
        node.args = tuple(args)
        if node.attr("causal", False):
            node.set_attr("causal", False)  # the new mask is causal, aligned to the last key
    eliminate_dead_code(module, keep_params=True)
    for node in graph:  # positions: every remaining arange over the new tokens starts at past
        out = node.outputs[0] if node.outputs else None
        if (node.op == "aten.arange.default" and out is not None and out is not q0
                and isinstance(out.type, TensorType) and out.type.shape == (seq_dim,)):
            shifted = graph.create_node("aten.add.Tensor", (out, past), {}, [out.type],
                                        names=f"{out.name}_from_past", after=node).outputs[0]
            for user in out.users():
                if user is not shifted.producer:
                    user.replace_input(out, shifted)
    return len(attentions)
