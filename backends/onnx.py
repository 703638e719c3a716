"""The ONNX backend: IR -> an ONNX model that ONNX Runtime runs with its fused kernels.

Route: the IR is lowered to a torch.fx module (as for the eager backend) in which every
``attention`` node becomes a custom op, and that module is exported with torch.onnx's dynamo
exporter, whose ``custom_translation_table`` turns the custom ops into ONNX Runtime's
``com.microsoft.Attention`` (packed QKV projection, one GEMM) or ``MultiHeadAttention``.

Why this route: the exporter already lowers every ATen op faithfully (mask construction,
embeddings, ...) with dynamic shapes, so optc only has to emit what the exporter cannot know:
the fused attention. ORT's transformer optimizer cannot be relied on for that (on torch.onnx
exports of Hugging Face BERT it fuses no attention at all, and it takes one global head count,
which pruned models with per-layer head counts do not have). Emitting ``Attention`` per node
with its own ``num_heads`` and ``qkv_hidden_sizes`` works for any per-layer shape. The rest
(LayerNorm, SkipLayerNorm, BiasGelu) is standard ONNX that ORT fuses when it loads the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from optc.errors import BackendError
from optc.ir.core import Module, Node, Value
from optc.ir.types import TensorType

__all__ = ["lower_for_onnx", "export_onnx", "OnnxModule", "ONNX_OPSET", "session_options"]

ONNX_OPSET = 18
_NEG = torch.finfo(torch.float32).min


def _additive_mask(module: Module, mask: Value, before: Node, cache: dict[int, Value]) -> Value:
    """A float additive bias equal to a boolean mask (True -> 0, False -> float32 min)."""
    if id(mask) in cache:
        return cache[id(mask)]
    t = mask.tensor_type
    if t.dtype != torch.bool:
        cache[id(mask)] = mask
        return mask
    node = module.graph.create_node(
        "aten.where.Scalar", (mask, 0.0, _NEG), {},
        [TensorType(torch.float32, t.shape)], names="attention_bias",
        after=mask.producer if mask.producer is not None else None,
        before=before if mask.producer is None else None,
    )
    cache[id(mask)] = node.outputs[0]
    return node.outputs[0]


def _packable(node: Node) -> tuple[Value, list[Node]] | None:
    """The shared input and q/k/v linears when they can be packed into one projection."""
    linears = [a.producer if isinstance(a, Value) else None for a in node.args[:3]]
    if not all(n is not None and n.op == "linear" for n in linears):
        return None
    xs = {id(n.args[0]) for n in linears}
    if len(xs) != 1:
        return None
    if any(len(n.outputs[0].users()) != 1 for n in linears):
        return None
    return linears[0].args[0], linears


def lower_for_onnx(module: Module) -> Module:
    """A copy of ``module`` whose attention nodes are ONNX-exportable fused custom ops."""
    import optc.backends.onnx_ops  # noqa: F401 - registers torch.ops.optc_onnx
    from optc.passes.dce import eliminate_dead_code

    lowered = module.clone()
    masks: dict[int, Value] = {}
    for node in lowered.graph:
        if node.op != "attention":
            continue
        if node.attr("kind", "softmax") != "softmax":
            raise BackendError(
                f"onnx backend cannot lower {node!r}: attention kind={node.attr('kind')} has no "
                "ONNX Runtime kernel yet"
            )
        heads, dim = node.attr("num_heads"), node.attr("head_dim")
        scale = node.attr("scale")
        scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
        mask = node.arg(3)
        bias = _additive_mask(lowered, mask, node, masks) if isinstance(mask, Value) else None
        attrs = {"num_heads": heads, "head_dim": dim, "scale": scale,
                 "causal": bool(node.attr("causal", False))}
        packed = _packable(node)
        if packed is not None:
            x, linears = packed
            weight = torch.cat([n.args[1].data for n in linears], 0).t().contiguous()
            biases = [n.arg(2) for n in linears]
            bias_data = torch.cat([
                b.data if isinstance(b, Value) else torch.zeros(n.args[1].data.shape[0])
                for b, n in zip(biases, linears, strict=True)
            ])
            stem = linears[0].args[1].name.rsplit(".", 1)[0]
            w = lowered.add_param(lowered.unique_param_name(f"{stem}.qkv_weight"), weight)
            b = lowered.add_param(lowered.unique_param_name(f"{stem}.qkv_bias"), bias_data)
            args = (x, w, b, bias)
            op = "optc_onnx.self_attention.default"
        else:
            args = (node.args[0], node.args[1], node.args[2], bias)
            op = "optc_onnx.multi_head_attention.default"
        new = lowered.graph.create_node(op, args, attrs, [node.outputs[0].type],
                                        names=node.outputs[0].name + "_fused", after=node)
        lowered.graph.replace_all_uses(node.outputs[0], new.outputs[0])
        lowered.graph.remove(node)
    eliminate_dead_code(lowered)
    return lowered


def _example_inputs(module: Module) -> tuple[tuple[torch.Tensor, ...], tuple[dict[int, Any], ...]]:
    dims: dict[str, Any] = {}
    concrete = {"batch": 2, "seq": 8}
    args, shapes = [], []
    for value in module.graph.inputs:
        t = value.tensor_type
        shape, spec = [], {}
        for axis, d in enumerate(t.shape):
            if isinstance(d, int):
                shape.append(d)
                continue
            if d not in dims:
                rng = module.dims.get(d)
                hi = rng.max if rng is not None else None
                dims[d] = torch.export.Dim(d, max=hi) if hi else torch.export.Dim(d)
            spec[axis] = dims[d]
            shape.append(concrete.get(d, 3))
        fill = 1 if "mask" in value.name else 0
        args.append(torch.full(shape, fill, dtype=t.dtype))
        shapes.append(spec)
    return tuple(args), tuple(shapes)


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """Silence the exporter's narration and its warning about torchvision (not used here)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)


def export_onnx(module: Module, path: str | os.PathLike, *, force: bool = False,
                opset: int = ONNX_OPSET) -> Path:
    """Write ``module`` as an ONNX model file (atomically; an existing file needs ``force``)."""
    from optc.backends.eager import build_graph_module
    from optc.backends.onnx_ops import TRANSLATIONS
    from optc.outputs import atomic_file, check_output

    check_output(path, force)  # fail before the slow export
    lowered = lower_for_onnx(module)
    gm = build_graph_module(lowered)
    args, shapes = _example_inputs(lowered)
    names = [v.name for v in lowered.graph.inputs]
    outputs = list(lowered.graph.outputs)
    with atomic_file(path, force) as tmp:
        try:
            with _quiet_exporter():
                program = torch.onnx.export(
                    gm, args, dynamic_shapes=shapes, input_names=names, output_names=outputs,
                    opset_version=opset, dynamo=True, external_data=False,
                    custom_translation_table=TRANSLATIONS, verbose=False,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure is a backend error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"onnx backend failed to export: {first}") from exc
        import onnx

        model = program.model_proto
        meta = {
            "optc.source": str(module.meta.get("source", "")),
            "optc.pipeline": ",".join(module.meta.get("pipeline", [])),
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
    return Path(path)


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options with all graph optimizations (fusions) enabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


class OnnxModule:
    """Runs an ONNX model file in ONNX Runtime with the eager backend's calling convention."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = dict(zip(self.input_names, args, strict=False))
        feeds.update(kwargs)
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"missing ONNX inputs: {', '.join(missing)}")
        results = self.session.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
        return {name: torch.from_numpy(r) for name, r in zip(self.output_names, results, strict=True)}
