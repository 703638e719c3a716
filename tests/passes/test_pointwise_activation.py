"""FFN activations written out in elementwise ATen ops (squared ReLU as Persimmon and Primer
use it, SiLU as ``x * sigmoid(x)``, a gated form, learned scalars as xIELU): the analysis finds the FFN, its neurons are
removed exactly on every backend, and a lone tanh (a pooler) is still no FFN."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import optc
from optc.backends.differential import run_backend
from optc.ir import collect_problems
from optc.ir.analysis import analyze
from optc.passes import PassManager
from optc.tests.conftest import assert_outputs_equal, zero_slices

_ACTIVATIONS = {
    "relu2": lambda x: torch.relu(x) ** 2,
    "swish": lambda x: x * torch.sigmoid(x),
    "gated-relu2": None,  # square(relu(gate)) * up
    "learned-scalars": None,  # xIELU-like: learned scalars, a comparison and where
}


class _Layer(nn.Module):
    def __init__(self, kind: str, d: int = 16, width: int = 32) -> None:
        super().__init__()
        self.kind = kind
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, width), nn.Linear(width, d)
        self.gate = nn.Linear(d, width) if kind.startswith("gated") else None
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.alpha, self.beta = nn.Parameter(torch.tensor([0.3])), nn.Parameter(torch.tensor([0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, 2, d // 2).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.o(att))
        if self.gate is not None:
            hidden = torch.square(torch.relu(self.gate(x))) * self.up(x)
        elif self.kind == "learned-scalars":
            h = self.up(x)
            a = nn.functional.softplus(self.alpha)
            hidden = torch.where(h > 0, a * h * h + self.beta * h, torch.expm1(h) * a + self.beta * h)
        else:
            hidden = _ACTIVATIONS[self.kind](self.up(x))
        return self.ln2(x + self.down(hidden))


@functools.cache
def captured(kind: str) -> tuple[nn.Module, optc.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(_Layer(kind), _Layer(kind)).eval()
    seq = torch.export.Dim("seq", max=32)
    return model, optc.capture(model, (torch.randn(2, 5, 16),), dynamic_shapes=[{1: seq}])


@pytest.mark.parametrize("kind", list(_ACTIVATIONS))
def test_the_ffn_is_found_and_its_neurons_removed_exactly(kind: str) -> None:
    model, base = captured(kind)
    layers = analyze(base).layers
    assert len(layers) == 2 and all(x.ffn is not None and x.ffn.width == 32 for x in layers)
    assert all(len(x.ffn.pointwise) >= 2 for x in layers)
    assert (layers[0].ffn.gated is not None) == kind.startswith("gated")
    inputs = {"input_0": torch.randn(3, 7, 16)}
    with torch.no_grad():
        want = model(inputs["input_0"])
    (got,) = run_backend(base, "eager", inputs).values()
    assert torch.allclose(got, want, atol=1e-5)
    module = base.clone()
    for n in (0, 5, 31):
        zero_slices(module, analyze(module).layers[1].ffn.neuron_slices(n))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-neurons{neurons=1:0,1:5,1:31},dce").run(module)
    assert [x.ffn.width for x in analyze(module).layers] == [32, 29]
    assert not collect_problems(module)
    assert_outputs_equal(run_backend(module, "eager", inputs), expected)


def test_squared_relu_prunes_on_the_exported_backends(backend: str) -> None:
    _, base = captured("relu2")
    inputs = {"input_0": torch.randn(2, 6, 16)}
    module = base.clone()
    zero_slices(module, analyze(module).layers[0].ffn.neuron_slices(3))
    expected = run_backend(module, "eager", inputs)
    PassManager("prune-neurons{neurons=0:3},dce").run(module)
    assert_outputs_equal(run_backend(module, backend, inputs), expected)


class _Pooler(nn.Module):
    """A width-preserving dense + tanh + dense (a pooler and a head that happens to keep the
    width): a lone tanh is no FFN activation."""

    def __init__(self) -> None:
        super().__init__()
        self.dense, self.out = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(x)))


def test_a_pooler_tanh_is_not_an_ffn() -> None:
    module = optc.capture(_Pooler().eval(), (torch.randn(2, 16),))
    assert analyze(module).layers == []
