"""The self-check catches the three written-but-broken ONNX outputs that fuzzing found.

Each case puts the old, broken lowering back (by swapping the attention op's ONNX lowering in
the op registry) and checks that the compile-time self-check refuses the output with exit 6
and leaves nothing behind: an all-padding row (ORT's fused attention averaged the values where
torch gives zeros), fp16 attention fused with an f32 mask bias (ORT cannot load it), and an
additive [B,1,1,S] mask handed to the fused op without broadcasting it over the query rows
(ORT fails on every input).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import optc
from optc.backends.selfcheck import example_inputs, write_checked
from optc.errors import BackendError
from optc.ir.ops import attention_onnx
from optc.ir.ops import base as ops_base
from optc.ir.ops.base import OnnxLowering
from optc.tests.backends.test_lowering_regressions import _PlainTransformer
from optc.tests.conftest import tiny_model


def _swap_lowering(monkeypatch, rewrite=None, translations=None) -> None:  # noqa: ANN001
    old = ops_base.get_op("attention")
    lowering = OnnxLowering(rewrite or old.onnx.rewrite, translations or old.onnx.translations)
    monkeypatch.setitem(ops_base._OPS, "attention", dataclasses.replace(old, onnx=lowering))


def _assert_refused(module, tmp_path, match: str = "onnx self-check") -> None:  # noqa: ANN001
    with pytest.raises(BackendError, match=match) as info:
        write_checked(module, "onnx", tmp_path / "model.onnx")
    assert info.value.exit_code == 6
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_example_inputs_include_a_row_with_nothing_to_attend_to():
    module = optc.capture(tiny_model("bert"))
    masks = [x["attention_mask"] for x in example_inputs(module)]
    assert any(bool((m == 0).all(dim=1).any()) for m in masks)


def test_self_check_catches_averaged_all_padding_rows(tmp_path, monkeypatch):
    module = optc.capture(tiny_model("bert"))
    write_checked(module, "onnx", tmp_path / "good.onnx")  # today's lowering passes
    (tmp_path / "good.onnx").unlink()
    real = attention_onnx._mask_nodes
    monkeypatch.setattr(attention_onnx, "_mask_nodes",
                        lambda *args: (real(*args)[0], None))  # no zeroing of empty rows
    _assert_refused(module, tmp_path, "differs from the eager IR")


def test_self_check_catches_fp16_attention_with_an_f32_bias(tmp_path, monkeypatch):
    module = optc.capture(tiny_model("bert").half())
    _swap_lowering(monkeypatch, rewrite=lambda m, node, cache: attention_onnx._fuse(
        m, node, cache, torch.float32))  # the old lowering fused every dtype, bias in f32
    _assert_refused(module, tmp_path)


def test_self_check_catches_an_unbroadcast_additive_mask(tmp_path, monkeypatch):
    model = _PlainTransformer().eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
    module = optc.capture(model, (torch.randint(0, 50, (2, 6)), torch.ones(2, 6)),
                          dynamic_shapes=[{0: batch, 1: seq}, {0: batch, 1: seq}])
    real = attention_onnx.onnx_translations

    def without_expand():  # noqa: ANN202
        from optc.ir.ops.contrib import msft

        def fused(x, weight, bias, attention_bias, num_heads, head_dim, scale, causal):  # noqa: ANN001, ANN202
            width = num_heads * head_dim
            return msft().Attention(x, weight, bias, None, None, attention_bias,
                                    num_heads=num_heads, qkv_hidden_sizes=[width] * 3,
                                    scale=scale, unidirectional=int(causal))

        return {**real(), torch.ops.optc_onnx.self_attention.default: fused}

    _swap_lowering(monkeypatch, translations=without_expand)
    _assert_refused(module, tmp_path)
