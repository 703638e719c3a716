"""Canonicalize: Before -> canonicalize -> Expected, stats, idempotence, unchanged numbers."""

from __future__ import annotations

import torch

import optc
from optc.ir import Module, collect_problems, parse_module, print_module
from optc.passes import run_pipeline
from optc.passes.base import PassResult
from optc.passes.canonicalize import Canonicalize


def run_canon(before: str, weights=None) -> tuple[Module, PassResult]:
    module = parse_module(before, weights=weights)
    result = Canonicalize().run(module)
    assert collect_problems(module) == []
    return module, result


def assert_ir(module: Module, expected: str) -> None:
    assert print_module(module, canonical=True) == print_module(parse_module(expected), canonical=True)


def test_eval_dropout_is_bypassed():
    before = """module @m {
      graph(%x : f32[2,4]) {
        %d : f32[2,4] = aten.dropout.default(%x, 0.1, false)
        %y : f32[2,4] = aten.relu.default(%d)
        %d2 : f32[2,4] = aten.dropout.default(%y, 0.0, true)
        return (y=%d2)
      }
    }"""
    expected = """module @m {
      graph(%x : f32[2,4]) {
        %y : f32[2,4] = aten.relu.default(%x)
        return (y=%y)
      }
    }"""
    module, result = run_canon(before)
    assert_ir(module, expected)
    assert result.modified is True
    assert result.stats == {"identities_removed": 2, "asserts_removed": 0, "inplace_functionalized": 0, "nodes_removed": 0}


def test_training_dropout_is_kept():
    before = """module @m {
  graph(%x : f32[2,4]) {
    %d : f32[2,4] = aten.dropout.default(%x, 0.1, true)
    return (y=%d)
  }
}
"""
    module, result = run_canon(before)
    assert print_module(module) == before
    assert result.modified is False
    assert result.stats == {"identities_removed": 0, "asserts_removed": 0, "inplace_functionalized": 0, "nodes_removed": 0}


def test_assert_tensor_metadata_is_removed():
    before = """module @m {
      graph(%x : f32[2,4]) {
        aten._assert_tensor_metadata.default(%x, dtype=torch.float32)
        %y : f32[2,4] = aten.relu.default(%x)
        aten._assert_scalar.default(true, "kept: not a metadata assertion")
        return (y=%y)
      }
    }"""
    expected = """module @m {
      graph(%x : f32[2,4]) {
        %y : f32[2,4] = aten.relu.default(%x)
        aten._assert_scalar.default(true, "kept: not a metadata assertion")
        return (y=%y)
      }
    }"""
    module, result = run_canon(before)
    assert_ir(module, expected)
    assert result.stats == {"identities_removed": 0, "asserts_removed": 1, "inplace_functionalized": 0, "nodes_removed": 0}
    assert module.graph.inputs[0].users() == [module.graph.nodes[0]]


def test_aliases_are_removed_including_on_params_and_outputs():
    before = """module @m {
      param @w : f32[3,4]
      graph(%x : f32[2,4]) {
        %a : f32[2,4] = aten.alias.default(%x)
        %wd : f32[3,4] = aten.detach.default(@w)
        %y : f32[2,3] = linear(%a, %wd)
        %out : f32[2,3] = aten.alias.default(%y)
        return (y=%out, x=%a)
      }
    }"""
    expected = """module @m {
      param @w : f32[3,4]
      graph(%x : f32[2,4]) {
        %y : f32[2,3] = linear(%x, @w)
        return (y=%y, x=%x)
      }
    }"""
    module, result = run_canon(before)
    assert_ir(module, expected)
    assert result.stats["identities_removed"] == 3


def test_dead_code_left_behind_is_removed_but_params_are_kept():
    before = """module @m {
      param @w : f32[3,4]
      graph(%x : f32[2,4]) {
        %t : f32[2,4] = aten.neg.default(%x)
        %d : f32[2,4] = aten.dropout.default(%t, 0.5, false)
        %y : f32[2,3] = linear(%x, @w)
        %unused : f32[2,3] = aten.relu.default(%y)
        return (y=%y)
      }
    }"""
    expected = """module @m {
      param @w : f32[3,4]
      graph(%x : f32[2,4]) {
        %y : f32[2,3] = linear(%x, @w)
        return (y=%y)
      }
    }"""
    module, result = run_canon(before)
    assert_ir(module, expected)
    assert result.stats == {"identities_removed": 1, "asserts_removed": 0, "inplace_functionalized": 0, "nodes_removed": 2}
    assert "w" in module.params


def test_canonicalize_is_idempotent():
    before = """module @m {
      graph(%x : f32[2,4]) {
        aten._assert_tensor_metadata.default(%x, dtype=torch.float32)
        %a : f32[2,4] = aten.alias.default(%x)
        %d : f32[2,4] = aten.dropout.default(%a, 0.1, false)
        %k : f32[2,4] = aten.dropout.default(%d, 0.1, true)
        return (y=%k)
      }
    }"""
    module = parse_module(before)
    report = run_pipeline(module, "canonicalize,canonicalize")
    assert [r.modified for r in report.records] == [True, False]
    assert report.records[1].stats == {"identities_removed": 0, "asserts_removed": 0, "inplace_functionalized": 0, "nodes_removed": 0}
    text = print_module(module)
    assert Canonicalize().run(module).modified is False
    assert print_module(module) == text
    assert [n.op for n in module.graph] == ["aten.dropout.default"]


def test_outputs_are_numerically_unchanged():
    before = """module @m {
      dim batch = [1, inf]
      param @w : f32[3,4]
      param @b : f32[3]
      graph(%x : f32[batch,4]) {
        %a : f32[batch,4] = aten.alias.default(%x)
        %d : f32[batch,4] = aten.dropout.default(%a, 0.3, false)
        %y : f32[batch,3] = linear(%d, @w, @b)
        %wd : f32[3,4] = aten.detach.default(@w)
        %z : f32[batch,3] = linear(%x, %wd)
        %s : f32[batch,3] = aten.add.Tensor(%y, %z)
        return (s=%s)
      }
    }"""
    gen = torch.Generator().manual_seed(0)
    weights = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(3, generator=gen)}
    original = parse_module(before, weights=weights)
    module, result = run_canon(before, weights=weights)
    assert result.modified is True
    assert all("dropout" not in n.op and "alias" not in n.op for n in module.graph)
    x = torch.randn(6, 4, generator=gen)
    with torch.no_grad():
        want = optc.to_eager(original)(x)["s"]
        got = optc.to_eager(module)(x)["s"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_in_place_ops_on_temporaries_become_out_of_place_and_others_stay():
    """``t.add_(b)`` on a temporary nothing else reads is ``add(t, b)`` (pure: DCE and raising see
    it); in place on an input, or on a value read again later, stays as it is."""
    before = """module @m {
      graph(%x : f32[2,4], %b : f32[2,4]) {
        %t : f32[2,4] = aten.mul.Tensor(%x, 2.0)
        %u : f32[2,4] = aten.add_.Tensor(%t, %b)
        %dead : f32[2,4] = aten.relu.default(%x)
        %dead2 : f32[2,4] = aten.mul_.Tensor(%dead, 3.0)
        %s : f32[2,4] = aten.mul.Tensor(%x, 3.0)
        %v : f32[2,4] = aten.add_.Tensor(%s, %b)
        %w : f32[2,4] = aten.add.Tensor(%v, %s)
        %i : f32[2,4] = aten.add_.Tensor(%x, %u)
        %c : f32[2,4] = aten.mul.Tensor(%x, 1.0)
        %view : f32[8] = aten.view.default(%c, [8])
        %m : f32[8] = aten.mul_.Tensor(%view, 2.0)
        return (y=%w, z=%i, c=%c)
      }
    }"""
    expected = """module @m {
      graph(%x : f32[2,4], %b : f32[2,4]) {
        %t : f32[2,4] = aten.mul.Tensor(%x, 2.0)
        %u : f32[2,4] = aten.add.Tensor(%t, %b)
        %s : f32[2,4] = aten.mul.Tensor(%x, 3.0)
        %v : f32[2,4] = aten.add_.Tensor(%s, %b)
        %w : f32[2,4] = aten.add.Tensor(%v, %s)
        %i : f32[2,4] = aten.add_.Tensor(%x, %u)
        %c : f32[2,4] = aten.mul.Tensor(%x, 1.0)
        %view : f32[8] = aten.view.default(%c, [8])
        %m : f32[8] = aten.mul_.Tensor(%view, 2.0)
        return (y=%w, z=%i, c=%c)
      }
    }"""
    x, b = torch.randn(2, 4), torch.randn(2, 4)
    module = parse_module(before)
    want = optc.to_eager(module)(x=x.clone(), b=b)
    module, result = run_canon(before)
    assert_ir(module, expected)
    assert result.stats == {"identities_removed": 0, "asserts_removed": 0,
                            "inplace_functionalized": 2, "nodes_removed": 2}
    got = optc.to_eager(module)(x=x.clone(), b=b)
    for name in ("y", "z", "c"):  # c: doubled through its view, in place
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert Canonicalize().run(module).modified is False  # a second run is a no-op
