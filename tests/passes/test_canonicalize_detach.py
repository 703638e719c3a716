"""An in-place ``aten.detach_`` on a view (seen in captured graphs) is an inference no-op:
canonicalize (run by capture and as the ``canonicalize`` pass) removes it, so every backend
runs the graph; left in, torch refuses to run it ("Can't detach views in-place")."""

from __future__ import annotations

import pytest
import torch

from optc.backends.differential import run_backend
from optc.backends.eager import to_eager
from optc.ir import collect_problems, parse_module
from optc.ir.cleanup import canonicalize
from optc.passes import PassManager

TEXT = """module @m {
  dim batch = [1, 64]
  param @w : f32[4,4]
  graph(%x : f32[batch,4]) {
    %t : f32[4,4] = aten.t.default(@w)
    %d : f32[4,4] = aten.detach_.default(%t)
    %y : f32[batch,4] = aten.mm.default(%x, %d)
    %v : f32[batch,2,2] = aten.view.default(%y, [-1, 2, 2])
    %e : f32[batch,2,2] = aten.detach_.default(%v)
    %s : f32[batch,2] = aten.sum.dim_IntList(%e, [-1])
    return (out=%s)
  }
}"""


def weights() -> dict[str, torch.Tensor]:
    return {"w": torch.randn(4, 4, generator=torch.Generator().manual_seed(0))}


def test_left_in_it_is_what_crashed() -> None:
    module = parse_module(TEXT, weights=weights())
    with pytest.raises(RuntimeError, match="detach views in-place"):
        to_eager(module)(x=torch.ones(3, 4))


def test_canonicalize_removes_detach_and_every_backend_runs(backend: str) -> None:
    w = weights()["w"]
    module = parse_module(TEXT, weights=weights())
    report = PassManager("canonicalize").run(module)
    assert report.records[0].modified
    assert not any(n.op.startswith("aten.detach") for n in module.graph)
    assert not collect_problems(module)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    expected = (x @ w.t()).view(-1, 2, 2).sum(-1)
    got = run_backend(module, backend, {"x": x})["out"]
    assert (got - expected).abs().max() < 1e-6


def test_capture_cleanup_counts_it() -> None:
    module = parse_module(TEXT, weights=weights())
    stats = canonicalize(module)  # what capture runs on every imported graph
    assert stats["identities_removed"] == 2
    assert canonicalize(module)["identities_removed"] == 0
