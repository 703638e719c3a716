"""A short budget of the fuzzer (tools/fuzz.py; the long run is a script with its own report)."""

from __future__ import annotations

import pytest

from optc.tools import fuzz

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


def test_short_fuzz_budget_finds_no_crash_or_disagreement():
    report = fuzz.fuzz(8, seed=1000, onnx_every=4)
    assert report.failures == [], report.table()
    assert report.counts()["ok"] >= 5
    checked = {c for r in report.results for c in r.checks}
    assert {"torchscript", "onnx", "reference"} <= checked


def test_the_fuzzer_catches_a_wrong_neuron_removal(monkeypatch):
    """Plant a bug (the down projection keeps the wrong columns): some try must fail."""
    import optc.passes.structural as structural

    real = structural.slice_param

    def shifted(module, node, arg, dim, index):  # noqa: ANN001, ANN202
        if dim == 1 and len(index) > 1:
            index = [*index[1:], index[0]]
        return real(module, node, arg, dim, index)

    monkeypatch.setattr(structural, "slice_param", shifted)
    seeds = [s for s in range(2000, 2100)
             if [kind for _, kind in fuzz.draw(s)[1] if kind != "cleanup"] == ["neurons"]][:2]
    assert seeds
    outcomes = {fuzz.run_try(s, onnx=False).outcome for s in seeds}
    assert outcomes & {"reference", "disagree"}, outcomes
