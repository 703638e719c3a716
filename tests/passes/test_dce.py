"""Dead-code elimination: Before -> dce -> Expected, stats, idempotence, unchanged numbers."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.ir import Module, collect_problems, parse_module, print_module
from optc.passes import PassManager
from optc.passes.base import PassResult
from optc.passes.dce import DeadCodeElimination


def run_dce(before: str, weights=None, **options) -> tuple[Module, PassResult]:
    module = parse_module(before, weights=weights)
    result = DeadCodeElimination(**options).run(module)
    assert collect_problems(module) == []
    return module, result


def assert_ir(module: Module, expected: str) -> None:
    assert print_module(module, canonical=True) == print_module(parse_module(expected), canonical=True)


def test_unused_chain_is_removed():
    before = """module @m {
      graph(%x : f32[4]) {
        %a : f32[4] = aten.relu.default(%x)
        %b : f32[4] = aten.neg.default(%a)
        %c : f32[4] = aten.mul.Tensor(%b, %a)
        %y : f32[4] = aten.exp.default(%x)
        return (y=%y)
      }
    }"""
    expected = """module @m {
      graph(%x : f32[4]) {
        %y : f32[4] = aten.exp.default(%x)
        return (y=%y)
      }
    }"""
    module, result = run_dce(before)
    assert_ir(module, expected)
    assert result.modified is True
    assert result.stats == {"nodes_removed": 3, "params_removed": 0, "param_elements_removed": 0}


def test_nodes_used_by_outputs_are_kept_including_multi_output_nodes():
    before = """module @m {
      graph(%x : f32[4,3]) {
        %v : f32[4], %i : i64[4] = aten.max.dim(%x, 1)
        %a : f32[4,3] = aten.relu.default(%x)
        %dead : f32[4,3] = aten.neg.default(%a)
        %o : f32[4] = aten.neg.default(%v)
        return (o=%o, a=%a)
      }
    }"""
    expected = """module @m {
      graph(%x : f32[4,3]) {
        %v : f32[4], %i : i64[4] = aten.max.dim(%x, 1)
        %a : f32[4,3] = aten.relu.default(%x)
        %o : f32[4] = aten.neg.default(%v)
        return (o=%o, a=%a)
      }
    }"""
    module, result = run_dce(before)
    assert_ir(module, expected)
    assert result.stats["nodes_removed"] == 1


def test_impure_nodes_are_kept_with_their_operands():
    before = """module @m {
      dim seq = [1, 64]
      graph(%x : f32[seq]) {
        %n : sym_int(seq) = aten.sym_size.int(%x, 0)
        %ok : sym_bool() = py.operator.ge(%n, 2)
        aten._assert_scalar.default(%ok, "seq must be >= 2")
        %unused : sym_int() = py.operator.mul(%n, 2)
        %z : f32[seq] = aten.zeros_like.default(%x)
        %w : f32[seq] = aten.add_.Tensor(%z, 1)
        return (x=%x)
      }
    }"""
    expected = """module @m {
      dim seq = [1, 64]
      graph(%x : f32[seq]) {
        %n : sym_int(seq) = aten.sym_size.int(%x, 0)
        %ok : sym_bool() = py.operator.ge(%n, 2)
        aten._assert_scalar.default(%ok, "seq must be >= 2")
        %z : f32[seq] = aten.zeros_like.default(%x)
        %w : f32[seq] = aten.add_.Tensor(%z, 1)
        return (x=%x)
      }
    }"""
    module, result = run_dce(before)
    assert_ir(module, expected)
    assert result.stats["nodes_removed"] == 1


PARAMS = """module @m {
  param @w : f32[3,4]
  param @b : f32[3]
  param @dead.weight : f32[5,4]
  param @unused : f32[7]
  param @returned : f32[2]
  graph(%x : f32[2,4]) {
    %y : f32[2,3] = linear(%x, @w, @b)
    %d : f32[2,5] = linear(%x, @dead.weight)
    return (y=%y, r=@returned)
  }
}"""


def test_unused_params_are_removed():
    expected = """module @m {
      param @w : f32[3,4]
      param @b : f32[3]
      param @returned : f32[2]
      graph(%x : f32[2,4]) {
        %y : f32[2,3] = linear(%x, @w, @b)
        return (y=%y, r=@returned)
      }
    }"""
    module, result = run_dce(PARAMS)
    assert_ir(module, expected)
    assert result.modified is True
    assert result.stats == {"nodes_removed": 1, "params_removed": 2, "param_elements_removed": 27}
    assert list(module.params) == ["w", "b", "returned"]


def test_keep_params_keeps_unused_params():
    expected = PARAMS.replace("    %d : f32[2,5] = linear(%x, @dead.weight)\n", "")
    module, result = run_dce(PARAMS, keep_params=True)
    assert_ir(module, expected)
    assert result.stats == {"nodes_removed": 1, "params_removed": 0, "param_elements_removed": 0}
    assert "unused" in module.params and "dead.weight" in module.params


def test_only_unused_params_counts_as_modified():
    before = """module @m {
      param @unused : f32[7]
      graph(%x : f32[2]) {
        return (x=%x)
      }
    }"""
    module, result = run_dce(before)
    assert result.modified is True
    assert result.stats == {"nodes_removed": 0, "params_removed": 1, "param_elements_removed": 7}
    module, result = run_dce(before, keep_params=True)
    assert result.modified is False


def test_nothing_to_do_reports_unmodified_and_leaves_text_unchanged():
    before = """module @m {
  param @w : f32[3,4]
  graph(%x : f32[2,4]) {
    %y : f32[2,3] = linear(%x, @w) loc("fc")
    aten._assert_scalar.default(true, "always")
    return (y=%y)
  }
}
"""
    module = parse_module(before)
    result = DeadCodeElimination().run(module)
    assert result == PassResult(False, {"nodes_removed": 0, "params_removed": 0, "param_elements_removed": 0})
    assert print_module(module, locations=True) == before


def test_second_run_is_a_no_op():
    module = parse_module(PARAMS)
    first = PassManager("dce,dce").run(module)
    assert [r.modified for r in first.records] == [True, False]
    text = print_module(module)
    again = DeadCodeElimination().run(module)
    assert again.modified is False
    assert print_module(module) == text


# -- numbers -----------------------------------------------------------------------------------
MLP = """module @mlp {
  dim batch = [1, inf]
  param @fc1.weight : f32[16,8]
  param @fc1.bias : f32[16]
  param @fc2.weight : f32[4,16]
  param @side.weight : f32[3,8]
  graph(%x : f32[batch,8]) {
    %h : f32[batch,16] = linear(%x, @fc1.weight, @fc1.bias)
    %side : f32[batch,3] = linear(%x, @side.weight)
    %side_act : f32[batch,3] = tanh(%side)
    %a : f32[batch,16] = gelu(%h, approximate="tanh")
    %unused : f32[batch,16] = aten.mul.Tensor(%a, %h)
    %y : f32[batch,4] = linear(%a, @fc2.weight)
    %z : f32[batch,4] = aten.add.Tensor(%y, 1.5)
    return (logits=%z, hidden=%a)
  }
}"""


def mlp_weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = {"fc1.weight": (16, 8), "fc1.bias": (16,), "fc2.weight": (4, 16), "side.weight": (3, 8)}
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def test_outputs_are_numerically_unchanged():
    weights = mlp_weights()
    original = parse_module(MLP, weights=weights)
    module, result = run_dce(MLP, weights=weights)
    assert result.stats == {"nodes_removed": 3, "params_removed": 1, "param_elements_removed": 24}
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = optc.to_eager(original)(x)
        got = optc.to_eager(module)(x)
    assert set(got) == {"logits", "hidden"}
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


@pytest.mark.parametrize("keep_params", [False, True])
def test_pass_manager_runs_dce_with_verification(keep_params):
    module = parse_module(MLP, weights=mlp_weights())
    report = PassManager([DeadCodeElimination(keep_params=keep_params)]).run(module)
    assert report.records[0].stats["nodes_removed"] == 3
    assert ("side.weight" in module.params) is keep_params
