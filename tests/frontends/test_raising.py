"""Raising rules: each ATen pattern -> its high-level op, with unchanged numbers, and a reason in
``RaiseReport.misses`` when a candidate pattern does not qualify.

Models are captured with ``raise_ops=False`` so that each test runs the rules itself.
"""

from __future__ import annotations

import collections
import math

import pytest
import torch
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

import optc
from optc.frontends.raising import RaiseReport, raise_high_level_ops
from optc.ir import Module, collect_problems, print_module
from optc.ir.cleanup import eliminate_dead_code
from optc.tests.conftest import token_inputs
from optc.tests.frontends.hf_cases import make_model

TOLERANCE = 1e-5


def capture_aten(model: torch.nn.Module, inputs: tuple, dynamic: list | None = None) -> Module:
    return optc.capture(model.eval(), inputs, raise_ops=False, dynamic_shapes=dynamic)


def raise_ops(module: Module) -> RaiseReport:
    """Raise, remove the leftovers, and check the result verifies."""
    report = raise_high_level_ops(module)
    eliminate_dead_code(module)
    assert collect_problems(module) == []
    return report


def ops_of(module: Module) -> collections.Counter[str]:
    return collections.Counter(node.op for node in module.graph)


def assert_same_numbers(module: Module, model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        want = model(*inputs)
        got = optc.to_eager(module)(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for value, expected in zip(got.values(), want, strict=True):
        assert value.shape == expected.shape
        assert (value - expected).abs().max().item() <= TOLERANCE


def seq_dims() -> list[dict]:
    return [{0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)}]


# -- linear from Conv1D and matrix products -----------------------------------------------------
class Conv1DBlock(torch.nn.Module):
    """GPT-2's MLP: Conv1D (weight [in, out], view -> addmm -> view) twice, shared or not."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = Conv1D(24, 16)
        self.shared = shared
        self.proj = None if shared else Conv1D(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        return self.fc(h[..., :16]) if self.shared else self.proj(h)


def test_conv1d_becomes_linear_with_a_transposed_weight():
    model = Conv1DBlock()
    x = torch.randn(2, 5, 16)
    module = capture_aten(model, (x,), seq_dims())
    assert ops_of(module)["aten.addmm.default"] == 2
    report = raise_ops(module)
    assert report.raised == {"linear": 2, "relu": 1} and report.misses == []
    assert [n.op for n in module.graph] == ["linear", "relu", "linear"]
    first = next(iter(module.graph)).args[1]
    assert first.type.shape == (24, 16)
    assert torch.equal(first.data, model.fc.weight.t())
    assert first.data.is_contiguous()
    assert first.name == "fc.weight_1"  # a new parameter; the [in, out] one is gone
    assert set(module.params) == {"fc.weight_1", "fc.bias", "proj.weight_1", "proj.bias"}
    assert module.graph.outputs["output"].type.shape == module.graph.inputs[0].type.shape
    assert_same_numbers(module, model, x)
    assert_same_numbers(module, model, torch.randn(3, 11, 16))


def test_shared_conv1d_weight_is_transposed_once():
    model = Conv1DBlock(shared=True)
    x = torch.randn(2, 5, 16)
    module = capture_aten(model, (x,))
    report = raise_ops(module)
    assert report.raised["linear"] == 2
    weights = {n.args[1].name for n in module.graph if n.op == "linear"}
    assert weights == {"fc.weight_1"}
    assert_same_numbers(module, model, x)


class Products(torch.nn.Module):
    """Linear maps written as addmm/mm/matmul on a transposed [out, in] weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(12, 8))
        self.b1 = torch.nn.Parameter(torch.randn(12))
        self.w2 = torch.nn.Parameter(torch.randn(6, 12))
        self.w3 = torch.nn.Parameter(torch.randn(6, 5))
        self.b3 = torch.nn.Parameter(torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.addmm(self.b1, x, self.w1.t())
        h = torch.mm(h, self.w2.t())
        return h.unsqueeze(0) @ self.w3 + self.b3


def test_matrix_products_with_parameters_become_linear():
    model = Products()
    x = torch.randn(4, 8)
    module = capture_aten(model, (x,))
    report = raise_ops(module)
    assert report.raised == {"linear": 3} and report.misses == []
    linears = [n for n in module.graph if n.op == "linear"]
    assert [n.args[1].name for n in linears] == ["w1", "w2", "w3_1"]  # only w3 is [in, out]
    assert [n.args[2] is not None for n in linears] == [True, False, True]
    assert "aten.t.default" not in ops_of(module)
    assert_same_numbers(module, model, x)


class ComputedWeight(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.addmm(torch.ones(4), x, self.w * s) + torch.addmm(x[:, :4], x, self.w, beta=2)


def test_products_that_are_not_linear_maps_report_why():
    module = capture_aten(ComputedWeight(), (torch.randn(3, 8), torch.randn(8, 4)))
    report = raise_ops(module)
    assert "linear" not in report.raised
    assert len(report.misses) == 2
    assert "computed, not a parameter" in report.misses[0]
    assert "beta or alpha is not 1" in report.misses[1]
    assert ops_of(module)["aten.addmm.default"] == 2


def test_products_of_activations_are_left_alone_silently():
    class Bilinear(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x @ y.transpose(-1, -2)

    module = capture_aten(Bilinear(), (torch.randn(2, 3, 4), torch.randn(2, 5, 4)))
    report = raise_ops(module)
    assert report.raised == {} and report.misses == []


# -- gelu (tanh approximation) ----------------------------------------------------------------
class GeluNew(torch.nn.Module):
    def __init__(self, cubic: float = 0.044715, cube_by_mul: bool = False) -> None:
        super().__init__()
        self.cubic, self.cube_by_mul = cubic, cube_by_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cube = x * (x * x) if self.cube_by_mul else torch.pow(x, 3.0)
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + self.cubic * cube)))


@pytest.mark.parametrize("model", [NewGELUActivation(), GeluNew(cube_by_mul=True)],
                         ids=["transformers", "x*x*x"])
def test_gelu_new_becomes_gelu_tanh(model):
    x = torch.linspace(-8, 8, 400).reshape(4, 100)
    module = capture_aten(model, (x,))
    report = raise_ops(module)
    assert report.raised == {"gelu": 1} and report.misses == []
    (node,) = module.graph.nodes
    assert node.op == "gelu" and node.attr("approximate") == "tanh"
    assert_same_numbers(module, model, x)
    assert_same_numbers(module, model, torch.randn(4, 100) * 3)


def test_gelu_like_pattern_with_other_constants_reports_them():
    module = capture_aten(GeluNew(cubic=0.05), (torch.randn(2, 3),))
    report = raise_ops(module)
    assert "gelu" not in report.raised
    (miss,) = report.misses
    assert "cubic=0.05" in miss and "tanh approximation" in miss
    assert ops_of(module)["tanh"] == 1  # the tanh inside is still raised on its own


# -- attention ----------------------------------------------------------------------------------
class EagerAttention(torch.nn.Module):
    """matmul(q, k^T) -> scale -> (+ additive mask) -> softmax -> matmul(., v), heads merged."""

    def __init__(self, scale_by: str = "mul", return_probs: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.dim = 4, 8
        self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))
        self.scale_by, self.return_probs = scale_by, return_probs

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | tuple:
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.scale_by == "mul":
            scores = scores * self.dim**-0.5
        elif self.scale_by == "div":
            scores = scores / math.sqrt(self.dim)
        probs = torch.softmax(scores + mask, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(b, s, -1)
        return (out, probs) if self.return_probs else out


def attention_inputs(batch: int = 2, seq: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, seq, 32)
    mask = torch.zeros(batch, 1, 1, seq)
    mask[0, ..., seq - 2:] = torch.finfo(torch.float32).min
    return x, mask


@pytest.mark.parametrize(("scale_by", "scale"), [("mul", 8**-0.5), ("div", 8**-0.5), ("none", 1.0)])
def test_eager_attention_becomes_attention_with_additive_mask(scale_by, scale):
    model = EagerAttention(scale_by)
    x, mask = attention_inputs()
    module = capture_aten(model, (x, mask))
    report = raise_ops(module)
    assert report.raised == {"attention": 1, "linear": 3} and report.misses == []
    (node,) = [n for n in module.graph if n.op == "attention"]
    assert (node.attr("num_heads"), node.attr("head_dim"), node.attr("causal")) == (4, 8, False)
    assert node.attr("scale") == pytest.approx(scale, rel=1e-12)
    assert node.args[3] is module.graph.inputs[1]  # the additive float mask, unchanged
    assert [a.producer.op for a in node.args[:3]] == ["linear"] * 3
    assert not any(n.op.startswith(("aten.matmul", "aten.softmax")) for n in module.graph)
    assert_same_numbers(module, model, x, mask)


def test_eager_attention_whose_probabilities_are_returned_is_kept():
    model = EagerAttention(return_probs=True)
    x, mask = attention_inputs()
    module = capture_aten(model, (x, mask))
    report = raise_ops(module)
    assert "attention" not in report.raised
    (miss,) = report.misses
    assert "aten.softmax" in miss and "probabilities are used elsewhere" in miss
    assert_same_numbers(module, model, x, mask)


def test_sdpa_on_operands_that_are_not_head_splits_reports_why():
    class RawSDPA(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    qkv = tuple(torch.randn(2, 4, 6, 8) for _ in range(3))
    module = capture_aten(RawSDPA(), qkv)
    report = raise_ops(module)
    assert report.raised == {}
    (miss,) = report.misses
    assert "scaled_dot_product_attention" in miss and "not raised to attention" in miss
    assert "%input_0 is not a [batch, seq, 4*8] tensor split into heads" in miss
    assert ops_of(module)["aten.scaled_dot_product_attention.default"] == 1


# -- whole models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_aten():
    model = make_model("gpt2")
    return model, optc.capture(model, raise_ops=False)


def test_gpt2_rules_all_fire(gpt2_aten):
    model, aten = gpt2_aten
    module = aten.clone()
    report = raise_ops(module)
    assert report.misses == []
    # 8 linears from Conv1D, then one split-projection rewrite per layer (its packed c_attn
    # becomes separate q, k, v projections)
    assert report.raised == {"linear": 10, "gelu": 2, "embedding": 2, "layer_norm": 5, "attention": 2}
    ops = ops_of(module)
    assert not {"aten.addmm.default", "aten.tanh.default", "aten.pow.Tensor_Scalar",
                "aten.scaled_dot_product_attention.default"} & set(ops)
    # attention reads three separate projections of one input (the packed c_attn split into
    # q, k, v); the FFN is linear -> gelu -> linear
    for node in module.graph:
        if node.op == "attention":
            assert {a.producer.op for a in node.args[:3]} == {"linear"}
            assert len({a.producer.args[0] for a in node.args[:3]}) == 1
        if node.op == "gelu":
            (user,) = node.output.users()
            assert node.args[0].producer.op == "linear" and user.op == "linear"
    assert all(p.endswith(("weight_1", "part0", "part1", "part2"))
               for p in module.params if ".c_" in p and "weight" in p)
    inputs = token_inputs(model, 3, 7)
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
        got = optc.to_eager(module)(**inputs)["last_hidden_state"]
    assert (got - want).abs().max().item() <= TOLERANCE


def test_raising_twice_is_a_no_op(gpt2_aten):
    module = gpt2_aten[1].clone()
    raise_ops(module)
    before = print_module(module)
    report = raise_ops(module)
    assert report.raised == {} and report.misses == []
    assert print_module(module) == before


def test_bert_eager_attention_is_raised_like_sdpa():
    model = make_model("bert", attn="eager")
    module = optc.capture(model, raise_ops=False)
    report = raise_ops(module)
    assert report.misses == []
    assert report.raised["attention"] == 2 and report.raised["linear"] == 13
