"""PyTorch's own ``nn.TransformerEncoder``: ``nn.MultiheadAttention`` projects q, k, v with one
packed ``in_proj_weight`` on [seq, batch, d] rows, splits heads as [seq, batch*heads, head_dim]
and merges them into [seq*batch, d] rows before ``out_proj``. Raised by structure: the packed
projection reads the batch-first stream (a projection commutes with moving rows, proven on
index tensors), and the output projection is applied to the merged heads. With
``batch_first=False`` the stream stays [seq, batch, d]: the projections read it moved to
[batch, seq, d] and the output projection's result is moved back. Exact against the model,
pruned and dropped exactly, and agreed on by every backend."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optc
from optc.backends.differential import check_backends
from optc.frontends import raise_high_level_ops
from optc.ir.analysis import analyze

D, H = 32, 4
DH = D // H


class Encoder(nn.Module):
    def __init__(self, norm_first: bool, batch_first: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(D, H, dim_feedforward=64, batch_first=batch_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            return self.encoder(x.transpose(0, 1), src_key_padding_mask=padding).transpose(0, 1)
        return self.encoder(x, src_key_padding_mask=padding)


def _inputs(batch: int = 2, seq: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    padding = torch.zeros(batch, seq, dtype=torch.bool)
    padding[1, seq - 2:] = True
    return {"x": torch.randn(batch, seq, D, generator=gen), "padding": padding}


@pytest.fixture(scope="module", params=["post-norm", "pre-norm", "post-norm, seq-first",
                                        "pre-norm, seq-first"])
def encoder(request):
    model = Encoder(norm_first=request.param.startswith("pre-norm"),
                    batch_first="seq-first" not in request.param).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}
    return model, optc.capture(model, _inputs(), dynamic_shapes=[dims, dims])


def _error(module: optc.Module, model: nn.Module, **shape: int) -> float:
    inputs = _inputs(**shape)
    with torch.no_grad():
        want = model(**inputs)
    got = optc.to_eager(module)(**inputs)["output"]
    return (got - want).abs().max().item()


def test_every_layer_is_raised_and_exact(encoder) -> None:
    model, module = encoder
    layers = analyze(module).layers
    assert len(layers) == 2 and all(x.attention and x.ffn and x.attention.residual for x in layers)
    assert [x.attention.node.attr("num_heads") for x in layers] == [H, H]
    # the packed in_proj_weight became three projections of the stream, rows of it
    weights = [x.attention.query.args[1].data for x in layers]
    assert torch.equal(weights[0], model.encoder.layers[0].self_attn.in_proj_weight[:D])
    assert _error(module, model) <= 1e-5
    assert _error(module, model, batch=3, seq=11) <= 1e-5


def test_pruned_head_equals_zeroed_output_columns(encoder) -> None:
    model, module = encoder
    pruned = module.clone()
    report = optc.run_pipeline(pruned, "prune-heads{heads=0:1},dce")
    assert report.records[0].stats["heads_removed"] == 1
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.encoder.layers[0].self_attn.out_proj.weight[:, DH:2 * DH] = 0
    assert _error(pruned, zeroed) <= 1e-5
    check_backends(pruned, _inputs(), backends=("eager", "torchscript", "onnx"))


def test_dropped_layer_equals_the_model_without_it(encoder) -> None:
    model, module = encoder
    dropped = module.clone()
    optc.run_pipeline(dropped, "drop-layers{layers=0},dce")
    shorter = copy.deepcopy(model)
    shorter.encoder.layers = nn.ModuleList([shorter.encoder.layers[1]])
    shorter.encoder.num_layers = 1
    assert len(analyze(dropped).layers) == 1
    assert _error(dropped, shorter) <= 1e-5


def test_backends_agree(encoder) -> None:
    _, module = encoder
    check_backends(module, _inputs(), backends=("eager", "torchscript", "onnx"))


def test_every_head_pruned_equals_the_output_bias(encoder) -> None:
    """A layer without heads adds its output projection's bias, in the stream's own layout."""
    model, module = encoder
    pruned = module.clone()
    optc.run_pipeline(pruned, "prune-heads{heads=1:0,1:1,1:2,1:3},dce")
    assert [x.attention is not None for x in analyze(pruned).layers] == [True, False]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.encoder.layers[1].self_attn.out_proj.weight.zero_()
    assert _error(pruned, zeroed) <= 1e-5
    assert _error(pruned, zeroed, batch=3, seq=11) <= 1e-5


def test_sequence_first_rows_are_moved_around_the_attention_only() -> None:
    """batch_first=False keeps the stream [seq, batch, d]: the projections read it moved to
    [batch, seq, d] (one transpose shared by q, k and v) and the output projection's result is
    moved back before the residual add, which the analysis sees through."""
    model = Encoder(norm_first=True, batch_first=False).eval()
    module = optc.capture(model, _inputs(), raise_ops=False)
    report = raise_high_level_ops(module)
    assert report.raised.get("attention", 0) == 2 and not report.misses
    for layer in analyze(module).layers:
        att = layer.attention
        moved = att.query.args[0].producer
        assert moved.op == "aten.transpose.int" and att.key.args[0] is att.query.args[0]
        assert att.branch.producer.op == "aten.transpose.int" and att.residual is not None
        assert att.norms and att.norms[0].outputs[0] is moved.args[0]  # pre-LN norm found
