"""The ONNX lowering of the ``attention`` op (:mod:`optc.ir.ops.attention`): before export each
node becomes a custom op that torch.onnx translates to ONNX Runtime's fused
``com.microsoft.Attention`` (q/k/v projections packed into one GEMM), ``MultiHeadAttention``,
``QAttention`` (int8 q/k/v linears of one input), or, for hard attention, standard ONNX ops;
non-f32 and grouped-query soft attention are traced from the eager kernel. Masks become the
additive bias ORT takes, and rows with no key to attend to give zeros, as in torch."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from optc.errors import BackendError
from optc.ir.core import Module, Node, Value
from optc.ir.ops.attention_kernels import attention, kv_index
from optc.ir.ops.quantized_attention import (
    int8_attention_custom_op,
    int8_attention_translations,
)
from optc.ir.ops.quantized_self_attention import (
    int8_qkv,
    int8_self_attention_custom_op,
    int8_self_attention_translations,
    mask_fits_qattention,
    pack_int8_qkv,
)
from optc.ir.types import TensorType

__all__ = ["onnx_rewrite", "onnx_translations"]


def _create(module: Module, op: str, args: tuple, shape: tuple, dtype: torch.dtype, name: str,
            after: Node | None, before: Node | None) -> Value:
    node = module.graph.create_node(op, args, {}, [TensorType(dtype, shape)], names=name,
                                    after=after, before=None if after is not None else before)
    return node.outputs[0]


def _mask_nodes(module: Module, mask: Value, dtype: torch.dtype, before: Node,
                cache: dict[str, Any]) -> tuple[Value, Value | None]:
    """(additive bias of ``dtype`` in rank 4, [batch, q, 1] "row has a key" for bool masks)."""
    key = ("attention_mask", id(mask), dtype)
    if key in cache:
        return cache[key]
    t = mask.tensor_type
    anchor = mask.producer
    shape = t.shape
    value = mask
    while len(shape) < 4:  # broadcast from the left, as SDPA does
        shape = (1, *shape)
        value = _create(module, "aten.unsqueeze.default", (value, 0), shape, t.dtype,
                        "attention_mask4", anchor, before)
        anchor = value.producer
    valid = None
    if t.dtype == torch.bool:
        bias = _create(module, "aten.where.Scalar", (value, 0.0, torch.finfo(dtype).min),
                       shape, dtype, "attention_bias", anchor, before)
        any_key = _create(module, "aten.any.dim", (value, -1), shape[:3], torch.bool,
                          "attention_rows", bias.producer, before)
        rows = _create(module, "aten.squeeze.dim", (any_key, 1), (shape[0], shape[2]),
                       torch.bool, "attention_rows", any_key.producer, before)
        valid = _create(module, "aten.unsqueeze.default", (rows, -1), (shape[0], shape[2], 1),
                        torch.bool, "attention_rows", rows.producer, before)
    elif t.dtype != dtype:
        bias = _create(module, "aten._to_copy.default", (value,), shape, dtype,
                       "attention_bias", anchor, before)
        bias.producer.kwargs = {"dtype": dtype}
    else:
        bias = value
    cache[key] = (bias, valid)
    return bias, valid


def _packable(node: Node) -> tuple[Value, list[Node]] | None:
    """The shared input and q/k/v linears when they can be packed into one projection."""
    linears = [a.producer if isinstance(a, Value) else None for a in node.args[:3]]
    if not all(n is not None and n.op == "linear" for n in linears):
        return None
    if len({id(n.args[0]) for n in linears}) != 1:
        return None
    if any(len(n.outputs[0].users()) != 1 for n in linears):
        return None
    if not all(isinstance(n.args[1], Value) and n.args[1].is_param for n in linears):
        return None
    return linears[0].args[0], linears


def onnx_rewrite(module: Module, node: Node, cache: dict[str, Any]) -> None:
    if node.attr("int8") is not None:
        _onnx_rewrite_int8(module, node, cache)
        return
    kind = node.attr("kind", "softmax")
    if node.attr("softcap") is not None:
        if kind != "softmax":
            raise BackendError(f"onnx backend cannot lower {node!r}: hard attention with "
                               "soft-capped scores has no ONNX lowering")
        _traced_with_bias(module, node, cache)  # ORT's fused kernels have no soft-capping
        return
    if kind == "topk":
        _onnx_rewrite_topk(module, node, cache)
        return
    if kind != "softmax":
        raise BackendError(f"onnx backend cannot lower {node!r}: attention kind={kind!r}")
    q = node.args[0].tensor_type
    if q.dtype != torch.float32:
        return  # traced from the eager kernel: ORT's fused CPU kernels take f32 only
    kv = node.attr("num_kv_heads")
    if (kv is not None and kv != node.attr("num_heads")) or node.attr("kv_heads") is not None:
        _traced_with_bias(module, node, cache)  # ORT's fused kernels need equal head counts
        return
    if _fuse_int8_qkv(module, node, cache):
        return
    _fuse(module, node, cache, q.dtype)


def _traced_with_bias(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """Leave ``node`` to be traced from the eager kernel, with a boolean mask turned into an
    additive bias and rows that allow no key set to zero explicitly (the exported SDPA would
    average them instead of giving zeros, as torch does)."""
    mask = node.arg(3)
    if not isinstance(mask, Value) or mask.tensor_type.dtype != torch.bool:
        return
    out = node.outputs[0]
    if module.graph.is_output(out):
        return
    bias, valid = _mask_nodes(module, mask, out.tensor_type.dtype, node, cache)
    node.args = (*node.args[:3], bias, *node.args[4:])
    users = out.users()
    result = _create(module, "aten.where.ScalarOther", (valid, out, 0.0), out.type.shape,
                     out.type.dtype, out.name + "_rows", node, None)
    for user in users:
        user.replace_input(out, result)


def _fuse(module: Module, node: Node, cache: dict[str, Any], bias_dtype: torch.dtype) -> None:
    """Replace ``node`` by the fused custom op (its mask as an additive ``bias_dtype`` bias)."""
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim)
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, bias_dtype, node, cache) if isinstance(mask, Value)
                   else (None, None))
    attrs = {"num_heads": heads, "head_dim": dim, "scale": scale,
             "causal": bool(node.attr("causal", False))}
    packed = _packable(node)
    if packed is not None:
        x, linears = packed
        weight = torch.cat([n.args[1].data for n in linears], 0).t().contiguous()
        biases = []
        for n in linears:
            b = n.arg(2)
            biases.append(b.data if isinstance(b, Value) and b.is_param
                          else torch.zeros(n.args[1].data.shape[0], dtype=weight.dtype))
        stem = linears[0].args[1].name.rsplit(".", 1)[0]
        w = module.add_param(module.unique_param_name(f"{stem}.qkv_weight"), weight)
        b = module.add_param(module.unique_param_name(f"{stem}.qkv_bias"), torch.cat(biases))
        args: tuple = (x, w, b, bias)
        op = "optc_onnx.self_attention.default"
    else:
        args = (node.args[0], node.args[1], node.args[2], bias)
        op = "optc_onnx.multi_head_attention.default"
    _register_custom_ops()
    out = node.outputs[0]
    new = module.graph.create_node(op, args, attrs, [out.type], names=out.name + "_fused", after=node)
    _replace_attention(module, node, new, valid)


def _onnx_rewrite_topk(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """Hard attention becomes standard ONNX ops (MatMul, Softmax, TopK threshold, Where) with
    k = min(topk, key length) taken at run time, so shorter sequences are soft attention.
    Grouped-query attention too: the kv head each query head reads is gathered in the graph
    (tracing the eager kernel would freeze k, and ORT's TopK fails on fewer keys than k)."""
    q = node.args[0].tensor_type
    kv = node.attr("num_kv_heads")
    grouped = (kv is not None and kv != node.attr("num_heads")) or node.attr("kv_heads") is not None
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, q.dtype, node, cache) if isinstance(mask, Value)
                   else (None, None))
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False)), "topk": int(node.attr("topk") or 1),
             "renormalize": bool(node.attr("renormalize", False)),
             "topk_fraction": float(node.attr("topk_fraction") or 0.0),
             "kv_index": kv_index(heads, kv, node.attr("kv_heads")) if grouped else []}
    _register_custom_ops()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.topk_attention.default",
                                   (node.args[0], node.args[1], node.args[2], bias), attrs,
                                   [out.type], names=out.name + "_topk", after=node)
    _replace_attention(module, node, new, valid)


def _onnx_rewrite_int8(module: Module, node: Node, cache: dict[str, Any]) -> None:
    """int8 attention becomes DynamicQuantizeLinear + MatMulInteger (standard ONNX ops)."""
    mask = node.arg(3)
    bias, valid = (_mask_nodes(module, mask, node.args[0].tensor_type.dtype, node, cache)
                   if isinstance(mask, Value) else (None, None))
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    kv = node.attr("num_kv_heads")
    grouped = (kv is not None and kv != heads) or node.attr("kv_heads") is not None
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False)),
             "kv_index": kv_index(heads, kv, node.attr("kv_heads")) if grouped else []}
    int8_attention_custom_op()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.int8_attention.default",
                                   (node.args[0], node.args[1], node.args[2], bias, node.arg(4),
                                    node.arg(5)), attrs,
                                   [out.type], names=out.name + "_int8", after=node)
    _replace_attention(module, node, new, valid)


def _fuse_int8_qkv(module: Module, node: Node, cache: dict[str, Any]) -> bool:
    """Soft attention whose q, k and v are dynamic int8 linears of one input becomes one
    QAttention (:mod:`optc.ir.ops.quantized_self_attention`); False, changing nothing, where
    that does not apply (the caller then emits MultiHeadAttention)."""
    mask = node.arg(3)
    found = int8_qkv(module, node)
    if found is None or not mask_fits_qattention(mask) or found[0].tensor_type.rank != 3:
        return False
    x, linears = found
    valid = None
    if isinstance(mask, Value):
        _, valid = _mask_nodes(module, mask, x.tensor_type.dtype, node, cache)
        t = mask.tensor_type
        anchor, shape = mask.producer, t.shape
        while len(shape) < 4:  # broadcast from the left, as SDPA does
            shape = (1, *shape)
            mask = _create(module, "aten.unsqueeze.default", (mask, 0), shape, t.dtype,
                           "attention_mask4", anchor, node)
            anchor = mask.producer
    heads, dim = node.attr("num_heads"), node.attr("head_dim")
    scale = node.attr("scale")
    attrs = {"num_heads": heads, "head_dim": dim,
             "scale": float(scale) if scale is not None else 1.0 / math.sqrt(dim),
             "causal": bool(node.attr("causal", False))}
    weight, weight_scale, bias = pack_int8_qkv(module, linears)
    int8_self_attention_custom_op()
    out = node.outputs[0]
    new = module.graph.create_node("optc_onnx.int8_self_attention.default",
                                   (x, weight, weight_scale, bias, mask), attrs, [out.type],
                                   names=out.name + "_qattention", after=node)
    _replace_attention(module, node, new, valid)
    return True


def _replace_attention(module: Module, node: Node, new: Node, valid: Value | None) -> None:
    """Put ``new`` (a custom op for ONNX export) in place of the attention ``node``; rows with
    no key to attend to (``valid`` False) give zeros, as in torch."""
    out = node.outputs[0]
    result = new.outputs[0]
    if valid is not None:
        result = _create(module, "aten.where.ScalarOther", (valid, result, 0.0), out.type.shape,
                         out.type.dtype, out.name + "_rows", new, None)
    module.graph.replace_all_uses(out, result)
    module.graph.remove(node)


@functools.cache
def _register_custom_ops() -> tuple[Any, Any, Any]:
    """torch custom ops that carry the fused attention through torch.onnx export; their eager
    implementations are exact, so tracing and shape inference see real semantics."""

    @torch.library.custom_op("optc_onnx::self_attention", mutates_args=())
    def self_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                       scale: float, causal: bool) -> torch.Tensor:
        qkv = torch.matmul(x, weight) + bias
        q, k, v = qkv.split(num_heads * head_dim, dim=-1)
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal)

    @self_attention.register_fake
    def _(x, weight, bias, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
        return x.new_empty((*x.shape[:-1], num_heads * head_dim))

    @torch.library.custom_op("optc_onnx::multi_head_attention", mutates_args=())
    def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                             scale: float, causal: bool) -> torch.Tensor:
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal)

    @multi_head_attention.register_fake
    def _(q, k, v, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001
        return q.new_empty((*q.shape[:-1], num_heads * head_dim))

    @torch.library.custom_op("optc_onnx::topk_attention", mutates_args=())
    def topk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          attention_bias: torch.Tensor | None, num_heads: int, head_dim: int,
                          scale: float, causal: bool, topk: int, renormalize: bool,
                          topk_fraction: float, kv_index: list[int]) -> torch.Tensor:
        return attention(q, k, v, attention_bias, num_heads=num_heads, head_dim=head_dim,
                         scale=scale, causal=causal, kind="topk", topk=topk,
                         renormalize=renormalize, topk_fraction=topk_fraction or None,
                         num_kv_heads=k.shape[-1] // head_dim if kv_index else None,
                         kv_heads=list(kv_index) or None)

    @topk_attention_op.register_fake
    def _(q, k, v, attention_bias, num_heads, head_dim, scale, causal, topk, renormalize,  # noqa: ANN001
          topk_fraction, kv_index):  # noqa: ANN001
        return q.new_empty((*q.shape[:-1], num_heads * head_dim))

    return self_attention, multi_head_attention, topk_attention_op


def onnx_translations() -> dict[Any, Any]:
    from optc.ir.ops.contrib import msft, onnx_op

    _register_custom_ops()

    def expand_bias(attention_bias, query):  # noqa: ANN001, ANN202
        if attention_bias is None:
            return None
        # ORT wants the bias as [batch|1, heads|1, q_seq, k_seq]: broadcast a mask that is
        # shared by all query rows ([batch, 1, 1, k_seq]) over them.
        op = onnx_op()
        rows = op.Shape(query, start=1, end=2)
        one = op.Constant(value_ints=[1])
        return op.Expand(attention_bias, op.Concat(one, one, rows, one, axis=0))

    def self_attention_onnx(x, weight, bias, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                            scale: float, causal: bool):
        width = num_heads * head_dim
        return msft().Attention(
            x, weight, bias, None, None, expand_bias(attention_bias, x),
            num_heads=num_heads, qkv_hidden_sizes=[width, width, width], scale=scale,
            unidirectional=int(causal),
        )

    def causal_bias(q, k):  # noqa: ANN001, ANN202
        """[1, 1, q_len, k_len] additive bias: query i sees keys <= i + k_len - q_len."""
        op = onnx_op()
        q_len, k_len = op.Shape(q, start=1, end=2), op.Shape(k, start=1, end=2)
        ones = op.ConstantOfShape(op.Concat(q_len, k_len, axis=0), value=_float_tensor(1.0))
        lower = op.Trilu(ones, op.Squeeze(op.Sub(k_len, q_len)), upper=0)
        bias = op.Where(op.Equal(lower, op.Constant(value_float=0.0)),
                        op.CastLike(op.Constant(value_float=-3.4028234663852886e38), q),
                        op.CastLike(op.Constant(value_float=0.0), q))
        return op.Unsqueeze(bias, op.Constant(value_ints=[0, 1]))

    def multi_head_attention_onnx(q, k, v, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                                  scale: float, causal: bool):
        # ORT's unidirectional flag aligns the causal mask top-left when keys outnumber queries
        # (a cache): the causal part is an explicit bias aligned to the last key instead.
        bias = expand_bias(attention_bias, q)
        if causal:
            bias = causal_bias(q, k) if bias is None else onnx_op().Add(bias, causal_bias(q, k))
        return msft().MultiHeadAttention(
            q, k, v, None, None, bias, num_heads=num_heads, scale=scale, unidirectional=0,
        )

    def topk_attention_onnx(q, k, v, attention_bias, num_heads: int, head_dim: int,  # noqa: ANN001, ANN202
                            scale: float, causal: bool, topk: int, renormalize: bool,
                            topk_fraction: float = 0.0, kv_index: list[int] | None = None):
        op = onnx_op()
        split = op.Constant(value_ints=[0, 0, num_heads, head_dim])
        qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])
        if kv_index:  # grouped-query: [batch, seq, kv, head_dim] -> query head h reads kv_index[h]
            kv_split = op.Constant(value_ints=[0, 0, -1, head_dim])
            heads = op.Constant(value_ints=list(kv_index))
            k = op.Gather(op.Reshape(k, kv_split), heads, axis=2)
            v = op.Gather(op.Reshape(v, kv_split), heads, axis=2)
        kh = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])
        vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])
        scores = op.Mul(op.MatMul(qh, kh), op.CastLike(op.Constant(value_float=scale), q))
        if causal:  # aligned to the last key: query i sees keys <= i + k_len - q_len
            square = op.Slice(op.Shape(scores), op.Constant(value_ints=[2]),
                              op.Constant(value_ints=[4]))
            ones = op.ConstantOfShape(square, value=_float_tensor(1.0))
            offset = op.Squeeze(op.Sub(op.Shape(scores, start=3, end=4),
                                       op.Shape(scores, start=2, end=3)))
            future = op.Equal(op.Trilu(ones, offset, upper=0), op.Constant(value_float=0.0))
            scores = op.Where(future, op.CastLike(op.Constant(value_float=-3.4028234663852886e38),
                                                  q), scores)
        if attention_bias is not None:
            scores = op.Add(scores, attention_bias)
        probs = op.Softmax(scores, axis=-1)
        keys = op.Shape(scores, start=3, end=4)
        if topk_fraction > 0:
            wanted = op.Cast(op.Ceil(op.Mul(op.Cast(keys, to=1),
                                            op.Constant(value_floats=[topk_fraction]))), to=7)
            wanted = op.Max(wanted, op.Constant(value_ints=[1]))
        else:
            wanted = op.Constant(value_ints=[topk])
        keep = op.Min(wanted, keys)
        values, _ = op.TopK(scores, keep, axis=-1, largest=1, sorted=1)
        last = op.Sub(keep, op.Constant(value_ints=[1]))
        threshold = op.Gather(values, last, axis=3)  # [batch, heads, q, 1]
        probs = op.Where(op.Less(scores, threshold), op.CastLike(op.Constant(value_float=0.0), q),
                         probs)
        if renormalize:
            probs = op.Div(probs, op.ReduceSum(probs, op.Constant(value_ints=[-1]), keepdims=1))
        out = op.Transpose(op.MatMul(probs, vh), perm=[0, 2, 1, 3])
        return op.Reshape(out, op.Constant(value_ints=[0, 0, num_heads * head_dim]))

    return {
        torch.ops.optc_onnx.self_attention.default: self_attention_onnx,
        torch.ops.optc_onnx.multi_head_attention.default: multi_head_attention_onnx,
        torch.ops.optc_onnx.topk_attention.default: topk_attention_onnx,
        **int8_attention_translations(),
        **int8_self_attention_translations(),
    }


def _float_tensor(value: float) -> Any:
    import onnx

    return onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [value])
