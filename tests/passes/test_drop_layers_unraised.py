"""An attention form no raising rule knows (here: single-head attention on [batch, seq, dim]
scores) is reported as a miss with a reason, and drop-layers refuses instead of silently
removing only the FFN blocks (which analysis still finds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optc
from optc.errors import PassError
from optc.frontends.raising import raise_high_level_ops
from optc.ir.analysis import analyze
from optc.ir.printer import print_module
from optc.passes import PassManager


class _Layer(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / 4.0, -1)
        x = self.norm1(x + self.o(probs @ self.v(x)))
        return self.norm2(x + self.down(torch.relu(self.up(x))))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Layer(), _Layer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def captured() -> optc.Module:
    torch.manual_seed(0)
    return optc.capture(_Encoder().eval(), (torch.randn(2, 5, 16),))


def test_an_unknown_attention_form_is_reported_with_a_reason() -> None:
    module = captured()
    misses = raise_high_level_ops(module.clone()).misses
    attention = [m for m in misses if "not raised to attention" in m]
    assert len(attention) == 2, misses
    assert all("probabilities weight values" in m for m in attention)
    layers = analyze(module).layers
    assert len(layers) == 2 and all(x.attention is None and x.ffn is not None for x in layers)


@pytest.mark.parametrize("spec", ["drop-layers{layers=0}", "drop-layers{strategy=top,count=1}",
                                  "drop-layers{layers=1,blocks=attention}"])
def test_drop_layers_refuses_and_leaves_the_module_unchanged(spec: str) -> None:
    module = captured()
    before = print_module(module)
    with pytest.raises(PassError, match="not raised.*blocks=ffn"):
        PassManager(spec).run(module)
    assert print_module(module) == before


def test_drop_layers_blocks_ffn_still_runs_when_asked() -> None:
    module = captured()
    report = PassManager("drop-layers{layers=0,blocks=ffn}").run(module)
    assert report.modified and report.records[0].stats["blocks_removed"] == 1


class _SinkLayer(_Layer):
    """Multi-head attention with a learned sink logit per head (GPT-OSS): the softmax runs over
    the scores and the sink column, which is sliced off before the values."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__(dim)
        self.sinks = nn.Parameter(torch.randn(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, 2, d // 2).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / 4.0
        sink = self.sinks.view(1, 2, 1, 1).expand(b, 2, s, 1)
        probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        out = (probs @ v).transpose(1, 2).reshape(b, s, d)
        x = self.norm1(x + self.o(out))
        return self.norm2(x + self.down(torch.relu(self.up(x))))


def test_attention_with_a_sliced_off_sink_column_is_a_miss_with_a_reason() -> None:
    torch.manual_seed(0)
    module = optc.capture(nn.Sequential(_SinkLayer()).eval(), (torch.randn(2, 5, 16),))
    misses = raise_high_level_ops(module.clone()).misses
    assert any("not raised to attention" in m and "probabilities weight values" in m for m in misses), misses
    with pytest.raises(PassError, match="not raised"):
        PassManager("drop-layers{layers=0}").run(module)
