"""The ONNX backend: IR -> an ONNX model that ONNX Runtime runs with its fused kernels.

Route: every op with an ONNX lowering (its ``onnx`` in :mod:`optc.ir.ops`) rewrites its nodes
in a copy of the module into custom ops (``attention`` into one with packed QKV projections);
the copy is lowered to a torch.fx module (as for the eager backend) and exported with
torch.onnx's dynamo exporter, whose ``custom_translation_table`` (the ops' translations) turns
the custom ops into ONNX Runtime's ``com.microsoft.Attention`` (one GEMM for q, k and v),
``MultiHeadAttention`` and ``Gelu``.

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
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from optc.backends.eager import build_graph_module
from optc.backends.record import onnx_metadata
from optc.backends.sparse_kernels import annotate_sparsity
from optc.errors import BackendError
from optc.ir.cleanup import eliminate_dead_code
from optc.ir.core import Module
from optc.ir.ops import get_op
from optc.ir.ops.contrib import ONNX_OPSET

__all__ = ["lower_for_onnx", "export_onnx", "OnnxModule", "ONNX_OPSET", "session_options"]

_log = logging.getLogger("optc")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def lower_for_onnx(module: Module) -> tuple[Module, dict[Any, Any]]:
    """A copy of ``module`` in which every op with an ONNX lowering was rewritten into
    exportable ops, internal bfloat16 values are emulated (:func:`_emulate_bfloat16`), and the
    torch.onnx translation table those need."""
    lowered = module.clone()
    _emulate_bfloat16(lowered)
    cache: dict[str, Any] = {}
    translations: dict[Any, Any] = {}
    for node in lowered.graph:
        opdef = get_op(node.op)
        if opdef is None or opdef.onnx is None:
            continue
        opdef.onnx.rewrite(lowered, node, cache)
    for op in {get_op(n.op) for n in module.graph} - {None}:
        if op.onnx is not None:
            translations.update(op.onnx.translations())
    eliminate_dead_code(lowered)
    return lowered, translations


_BF16 = torch.bfloat16


def _emulate_bfloat16(module: Module) -> None:
    """Compute the module's internal bfloat16 values in float32 rounded to bfloat16 after each
    op (``Cast`` to bfloat16 and back, which ONNX Runtime's CPU provider runs although it has no
    bfloat16 arithmetic): a model that builds a few values in bfloat16 (Falcon's ALiBi slopes)
    exports with the same numbers. Elementwise ATen ops on bfloat16 compute in float32 and round
    the result, so this is exact for them. Only values inside the graph: bfloat16 parameters,
    inputs and outputs are refused by :func:`_check_dtypes` (the model is bfloat16, not a few
    of its values)."""
    from optc.ir.types import TensorType

    for node in module.graph:
        if get_op(node.op) is not None or not any(
                isinstance(o.type, TensorType) and o.type.dtype == _BF16 for o in node.outputs):
            continue
        if node.kwargs.get("dtype") == _BF16:  # a cast or a factory: make float32, round below
            node.kwargs = {**node.kwargs, "dtype": torch.float32}
        anchor = node
        for out in node.outputs:
            t = out.type
            if not (isinstance(t, TensorType) and t.dtype == _BF16):
                continue
            out.type = TensorType(torch.float32, t.shape)
            users = out.users()
            down = module.graph.create_node("aten._to_copy.default", (out,), {"dtype": _BF16},
                                            [TensorType(_BF16, t.shape)],
                                            names=f"{out.name}_bf16", after=anchor)
            up = module.graph.create_node("aten._to_copy.default", (down.outputs[0],),
                                          {"dtype": torch.float32},
                                          [TensorType(torch.float32, t.shape)],
                                          names=f"{out.name}_rounded", after=down)
            anchor = up
            for user in users:
                user.replace_input(out, up.outputs[0])
            if module.graph.is_output(out):
                for name, value in module.graph.outputs.items():
                    if value is out:
                        module.graph.set_output(name, up.outputs[0])
    # a cast of an emulated value back to float32 is now float32 -> float32 (a no-op ONNX keeps)


def _check_dtypes(module: Module) -> None:
    """Refuse dtypes ONNX Runtime's CPU provider has no kernels for (the file would not load):
    bfloat16 parameters, graph inputs and outputs (internal bfloat16 values are emulated)."""
    boundary = [*module.params.values(), *module.graph.inputs, *module.graph.outputs.values()]
    for value in boundary:
        t = value.type
        if getattr(t, "dtype", None) == torch.bfloat16:
            raise BackendError(
                f"onnx backend: {value!r} is bfloat16, which ONNX Runtime's CPU provider cannot "
                "run; convert the model to float32 or float16 first (model.to(torch.float16))"
            )


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
    """Silence the exporter's narration and its warning about torchvision (not used here), and
    trace without recording a Python stack trace per FX node (``torch.fx.config.
    do_not_emit_stack_traces``): the exporter traces the module twice (torch.export, then its
    decompositions) and extracting a traceback for every node was a quarter of the export's
    time; the stacks would only point into the generated graph module, and the ONNX file is
    byte-for-byte the same without them."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    fx_config = torch.fx.config
    stacks = getattr(fx_config, "do_not_emit_stack_traces", None)  # where this torch has it
    if stacks is not None:
        fx_config.do_not_emit_stack_traces = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)
        if stacks is not None:
            fx_config.do_not_emit_stack_traces = stacks


def export_onnx(module: Module, path: str | os.PathLike, *, force: bool = False,
                opset: int = ONNX_OPSET, sparse_initializers: bool = False) -> Path:
    """Write ``module`` as an ONNX model file (atomically; an existing file needs ``force``).

    Sparse weights are annotated in ``metadata_props`` (see :mod:`optc.backends.sparse_kernels`);
    with ``sparse_initializers`` they are also stored as ``sparse_initializer`` where smaller.
    The module's task, max length, pooling and tokenizer (its files included) are recorded in
    ``metadata_props`` too (see :mod:`optc.backends.record`)."""
    from optc.outputs import atomic_file, check_output

    check_output(path, force)  # fail before the slow export
    _check_dtypes(module)
    lowered, translations = lower_for_onnx(module)
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
                    custom_translation_table=translations, verbose=False,
                )
        except Exception as exc:  # noqa: BLE001 - any exporter failure is a backend error
            text = _ANSI.sub("", str(exc)).strip()
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            _log.debug("ONNX export failed:\n%s", text)
            first = lines[0] if lines else type(exc).__name__
            raise BackendError(f"onnx backend failed to export: {first} "
                               "(--verbose shows the exporter's full message)") from exc
        import onnx

        model = program.model_proto
        meta = {
            "optc.source": str(module.meta.get("source", "")),
            "optc.pipeline": ",".join(module.meta.get("pipeline", [])),
            **onnx_metadata(module),  # task, max length, pooling, tokenizer (backends/record.py)
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        annotate_sparsity(model, module, sparse_initializers)
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
