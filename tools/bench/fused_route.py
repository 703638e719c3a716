"""The strongest ONNX Runtime route a user gets without optc: the "fused route".

    from optc.tools.bench.fused_route import build_fused, quantize_fused
    fused = build_fused(hf_model_or_dir, workdir)        # fp32, ORT-fused
    int8 = quantize_fused(fused.path, workdir / "fused-int8.onnx")

Steps (what ONNX Runtime's own BERT tutorials do):

1. the Hugging Face model with ``attn_implementation="eager"`` (matmul, scale, mask add, softmax,
   matmul: the pattern ORT's fusion rules look for; the default SDPA attention is not fused);
2. ``torch.onnx.export(..., dynamo=False, opset_version=17)``, the TorchScript-based exporter,
   with dynamic batch and sequence axes (the dynamo exporter's graphs fuse no attention);
3. ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads,
   hidden_size)``, which fuses ``EmbedLayerNormalization``, ``Attention``,
   ``SkipLayerNormalization`` and ``BiasGelu`` (:func:`fusion_counts` reports them);
4. int8: ``onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)``
   (``DefaultTensorType=FLOAT`` so that nodes without inferred types quantize). This is also
   what sentence-transformers' ``avx512_vnni`` configuration asks of ORT (optimum's
   ``AutoQuantizationConfig.avx512_vnni(is_static=False)``: uint8 activations, symmetric
   per-channel int8 weights, no reduced range, IntegerOps); ORT then also makes the embedding
   tables int8 (``QEmbedLayerNormalization`` / ``Gather``), which is why its file is small.

The benchmarks (:mod:`optc.tools.bench.onnx`, :mod:`optc.tools.bench.int8`) compare optc's
exports with these files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["FusedRoute", "FUSED_OPS", "load_eager", "build_fused", "quantize_fused",
           "fusion_counts", "output_names", "onnx_bytes", "pooled", "agreement", "hf_reference",
           "latency_rows", "format_latency", "int8_operand_types"]

FUSED_OPS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "LayerNormalization")
"""ORT fused (com.microsoft) ops that :func:`fusion_counts` counts."""

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class FusedRoute:
    """One file of the fused route."""

    path: Path
    """The optimized ONNX file."""
    outputs: tuple[str, ...]
    """Its output names (the model's tensor outputs: ``last_hidden_state``, ``pooler_output``;
    ``logits``; ...)."""
    fused: dict[str, int]
    """Count of each op of :data:`FUSED_OPS` in the file."""


def load_eager(name_or_path: str | os.PathLike, task: str = "auto") -> torch.nn.Module:
    """A Hugging Face model directory loaded with eager attention, in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(name_or_path))
    cls = (AutoModelForSequenceClassification if task == "sequence-classification"
           or (task == "auto" and any("ForSequenceClassification" in a
                                      for a in (config.architectures or ())))
           else AutoModel)
    model = cls.from_pretrained(str(name_or_path), attn_implementation="eager")
    return model.eval()


def _eager(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` switched to eager attention (the pattern ORT's fusions match)."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter("eager")
    else:  # older transformers
        model.config._attn_implementation = "eager"
    return model.eval()


class _Outputs(torch.nn.Module):
    """The model with named tensor inputs and a tuple of its output tensors."""

    def __init__(self, model: torch.nn.Module, names: list[str], inputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.inputs = inputs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, args, strict=True)))
        return tuple(out[n] for n in self.names)


def _model_inputs(model: torch.nn.Module) -> list[str]:
    """The token inputs the model's forward takes, in :data:`_INPUTS` order."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return [n for n in _INPUTS if n in params]


def output_names(model: torch.nn.Module) -> list[str]:
    """The names of the model's tensor outputs on a small batch."""
    inputs = _model_inputs(model)
    ids = torch.randint(3, min(100, model.config.vocab_size), (2, 8))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        out = model(**{k: feeds[k] for k in inputs})
    return [k for k, v in out.items() if isinstance(v, torch.Tensor)]


@contextlib.contextmanager
def _quiet() -> Any:
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("torch.onnx").setLevel(level)


def build_fused(model: torch.nn.Module | str | os.PathLike, workdir: str | os.PathLike,
                name: str = "fused") -> FusedRoute:
    """Export ``model`` (a loaded Hugging Face model, switched to eager attention, or a model
    directory) with the TorchScript exporter and run ORT's transformer optimizer over it;
    writes ``workdir/<name>.onnx``."""
    from onnxruntime.transformers import optimizer

    if not isinstance(model, torch.nn.Module):
        model = load_eager(model)
    model = _eager(model)
    work = Path(workdir)
    names = output_names(model)
    inputs = _model_inputs(model)
    ids = torch.randint(3, min(100, model.config.vocab_size), (2, 16))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "token_type_ids": torch.zeros_like(ids)}
    raw = work / f"{name}-export.onnx"
    with _quiet():
        torch.onnx.export(_Outputs(model, names, inputs).eval(),
                          tuple(example[n] for n in inputs), str(raw), input_names=inputs,
                          output_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in inputs})
        config = model.config
        opt = optimizer.optimize_model(str(raw), model_type="bert",
                                       num_heads=config.num_attention_heads,
                                       hidden_size=config.hidden_size)
        path = work / f"{name}.onnx"
        opt.save_model_to_file(str(path))
    raw.unlink()
    return FusedRoute(path, tuple(names), fusion_counts(path))


def quantize_fused(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The fused file made int8 by ORT's per-channel dynamic quantization (QInt8 weights,
    uint8 activations; embedding tables too)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(path), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(out)


def fusion_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many nodes of each fused op type (:data:`FUSED_OPS`) the ONNX file holds."""
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {op: ops[op] for op in FUSED_OPS if ops[op]}


def onnx_bytes(path: str | os.PathLike) -> dict[str, int]:
    """``{"file": bytes on disk, "weights": bytes of the initializers, "metadata": bytes of
    metadata_props}`` (optc records the tokenizer's files in metadata_props)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
                  for t in model.graph.initializer)
    meta = sum(len(p.key) + len(p.value) for p in model.metadata_props)
    return {"file": Path(path).stat().st_size, "weights": weights, "metadata": meta}


# -- comparing ONNX files: agreement with the fp32 model, latency -----------------------------
def pooled(outputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The vector agreement is measured on: ``logits`` when the model has them, else the
    mean-pooled ``last_hidden_state`` over unmasked tokens (sentence-transformers' pooling)."""
    if "logits" in outputs:
        return outputs["logits"].float()
    hidden = outputs["last_hidden_state"].float()
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def agreement(run: Any, reference: Any, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """(mean, min) cosine similarity between ``run``'s and ``reference``'s :func:`pooled`
    vectors over the rows of ``batches`` (each callable takes the batch as keyword tensors
    and returns a dict of outputs)."""
    cos = []
    with torch.inference_mode():
        for feeds in batches:
            a = pooled(dict(run(**feeds)), feeds["attention_mask"])
            b = pooled(dict(reference(**feeds)), feeds["attention_mask"])
            cos.append(torch.nn.functional.cosine_similarity(a, b, dim=-1))
    all_cos = torch.cat(cos)
    return float(all_cos.mean()), float(all_cos.min())


def hf_reference(model: torch.nn.Module) -> Any:
    """A callable running the Hugging Face model on keyword tensors (the inputs it takes)."""
    inputs = _model_inputs(model)

    def run(**feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(**{k: v for k, v in feeds.items() if k in inputs})
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    return run


def latency_rows(files: dict[str, Path], threads: list[int], batches: list[int], seq: int,
                 rounds: int, block: int, settle: float, vocab: int = 2000) -> list[dict[str, Any]]:
    """Median latency (seconds) of each ONNX file in ONNX Runtime (all graph optimizations),
    interleaved in blocks (:func:`optc.tools.measure.timing.measure_interleaved`), one row per
    thread count and batch size: ``{"threads", "batch", "seq", "median": {name: s}}``."""
    from optc.backends.onnx import OnnxModule
    from optc.tools.measure.timing import measure_interleaved

    rows = []
    for n_threads in threads:
        runners = {name: OnnxModule(path, threads=n_threads) for name, path in files.items()}
        for batch in batches:
            ids = torch.randint(min(1000, vocab - 2), min(2000, vocab), (batch, seq))
            feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "token_type_ids": torch.zeros_like(ids)}
            variants = {}
            for name, r in runners.items():
                mine = {k: v for k, v in feeds.items() if k in r.input_names}
                variants[name] = lambda r=r, f=mine: r(**f)
            t = measure_interleaved(variants, rounds=rounds, block=block,
                                    settle=settle if n_threads > 1 else 0.0)
            rows.append({"threads": n_threads, "batch": batch, "seq": seq,
                         "median": {n: t[n].median for n in files}})
    return rows


def format_latency(rows: list[dict[str, Any]], ratios: dict[str, tuple[str, str]]) -> list[str]:
    """Lines of a latency table: one column per file (ms) and one per ``ratios`` entry
    (``label: (numerator file, denominator file)``)."""
    names = list(rows[0]["median"]) if rows else []
    width = max([12, *(len(n) for n in names)])
    head = (f"{'threads':>7} {'batch':>5} {'seq':>4}  " + "  ".join(f"{n:>{width}}" for n in names)
            + "".join(f"  {label:>{max(9, len(label))}}" for label in ratios))
    lines = [head, "-" * len(head)]
    for row in rows:
        ms = row["median"]
        cells = "  ".join(f"{ms[n] * 1e3:>{width - 3}.2f} ms" for n in names)
        rat = "".join(f"  {ms[a] / ms[b]:>{max(9, len(label))}.3f}"
                      for label, (a, b) in ratios.items())
        lines.append(f"{row['threads']:>7} {row['batch']:>5} {row['seq']:>4}  {cells}{rat}")
    return lines


_INT8_OPS = {"DynamicQuantizeMatMul": (None, 1), "MatMulInteger": (0, 1), "QAttention": (0, 1),
             "MatMulIntegerToFloat": (0, 1)}
"""Integer GEMM ops: indices of their (activation, weight) operands (None: quantized inside the op
from a float input, to uint8 as ``DynamicQuantizeLinear`` does)."""


def int8_operand_types(path: str | os.PathLike) -> dict[str, set[str]]:
    """For each integer op type in the ONNX file, the ``activation x weight`` integer types it
    multiplies (``u8 x s8``: the operands ORT's VNNI kernels take where the CPU has VNNI; the
    activation's type is followed through ``DynamicQuantizeLinear``/``QuantizeLinear``; a
    ``MatMul`` of two ``DequantizeLinear`` outputs, the QDQ form that ORT fuses into
    ``MatMulIntegerToFloat`` when it loads the file, is ``MatMul (QDQ)``)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:  # outputs of the quantizers
        if node.op_type == "DynamicQuantizeLinear":
            types[node.output[0]] = onnx.TensorProto.UINT8
        elif node.op_type == "QuantizeLinear" and len(node.input) > 2:
            types.setdefault(node.output[0], types.get(node.input[2], onnx.TensorProto.UINT8))
    short = {onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT8: "s8"}
    found: dict[str, set[str]] = {}
    dequantized = {n.output[0]: types.get(n.input[0], 0) for n in graph.node
                   if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        if node.op_type == "MatMul" and all(i in dequantized for i in node.input[:2]):
            a, w = (short.get(dequantized[i], "?") for i in node.input[:2])
            found.setdefault("MatMul (QDQ)", set()).add(f"{a} x {w}")  # ORT fuses it at load
        if node.op_type not in _INT8_OPS:
            continue
        act, weight = _INT8_OPS[node.op_type]
        a = "u8" if act is None else short.get(types.get(node.input[act], 0), "?")
        w = short.get(types.get(node.input[weight], 0), "?")
        found.setdefault(node.op_type, set()).add(f"{a} x {w}")
    return found
