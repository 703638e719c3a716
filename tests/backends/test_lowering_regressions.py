"""Regressions found by fuzzing: models whose lowered output was written but wrong or broken.

Each case failed before its fix: an all-padding row made ONNX Runtime's fused attention
average the values where torch outputs zeros; fp16 models mixed float16 and float in the fused
Attention; an additive [B,1,1,S] mask did not fit the fused op's bias shape; bfloat16 wrote a
file ONNX Runtime cannot load; an exporter failure printed several lines with ANSI codes.
"""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.backends.onnx import OnnxModule, export_onnx
from optc.errors import BackendError
from optc.tests.conftest import assert_backends_agree, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def test_rows_with_an_all_zero_mask_agree_on_every_backend():
    model = tiny_model("bert")
    module = optc.capture(model)
    ids = torch.randint(3, 120, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1] = 0
    mask[2, 4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    report = assert_backends_agree(module, inputs)
    assert report.worst("onnx") < 1e-4
    expected = model(**inputs).last_hidden_state
    assert torch.allclose(optc.to_eager(module)(**inputs)["last_hidden_state"], expected, atol=1e-5)


def test_float16_model_lowers_to_onnx_runtime(tmp_path):
    model = tiny_model("bert").half()
    module = optc.capture(model)
    ids = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "token_type_ids": torch.zeros_like(ids)}
    export_onnx(module, tmp_path / "half.onnx")
    got = OnnxModule(tmp_path / "half.onnx")(**inputs)["last_hidden_state"]
    expected = optc.to_eager(module)(**inputs)["last_hidden_state"]
    assert got.dtype == torch.float16
    assert (got.float() - expected.float()).abs().max() < 2e-2


def test_bfloat16_is_refused_for_onnx_with_a_fix_and_nothing_written(tmp_path):
    module = optc.capture(tiny_model("bert").to(torch.bfloat16))
    with pytest.raises(BackendError, match=r"bfloat16.*convert the model to float32 or float16"):
        export_onnx(module, tmp_path / "bf16.onnx")
    assert list(tmp_path.iterdir()) == []


class _PlainTransformer(torch.nn.Module):
    """A hand-written encoder layer: matmul + softmax attention with an additive [B,1,1,S]
    mask, a ReLU FFN and post-LN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 16)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16) for _ in range(4))
        self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
        self.ln1, self.ln2 = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, 2, 8).transpose(1, 2)

        scores = torch.matmul(split(self.q(x)), split(self.k(x)).transpose(-1, -2)) / 8 ** 0.5
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        probs = torch.softmax(scores + bias, -1)
        a = torch.matmul(probs, split(self.v(x))).transpose(1, 2).reshape(b, s, 16)
        x = self.ln1(x + self.o(a))
        return self.ln2(x + self.down(torch.relu(self.up(x))))


def test_plain_module_with_a_broadcast_additive_mask_runs_in_onnx_runtime():
    model = _PlainTransformer().eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6)
    mask[0, 4:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
    module = optc.capture(model, (ids, mask), dynamic_shapes=[{0: batch, 1: seq}, {0: batch, 1: seq}])
    assert sum(n.op == "attention" for n in module.graph) == 1
    for b, s in ((2, 6), (1, 9), (3, 1)):
        ids = torch.randint(0, 50, (b, s))
        mask = torch.ones(b, s)
        mask[0, s // 2 + 1:] = 0
        report = check_backends(module, {"input_0": ids, "input_1": mask})
        assert report.worst("onnx") < 1e-4, (b, s, report.diffs)


def test_exporter_failure_is_one_line_without_ansi_codes(tmp_path, monkeypatch, caplog):
    module = optc.capture(tiny_model("distilbert"))

    def broken_export(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("\x1b[31mFailed to export\x1b[0m the model\nTraceback...\n  detail")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with caplog.at_level("DEBUG", logger="optc"), pytest.raises(BackendError) as info:
        export_onnx(module, tmp_path / "model.onnx")
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message
    assert message.startswith("onnx backend failed to export: Failed to export the model")
    assert "detail" in caplog.text  # the rest goes to the log (--verbose)
