"""A short budget of the fuzzer (tools/checks/fuzz.py; the long run is a script with its own report)."""

from __future__ import annotations

import json

import pytest

from optc.tools.checks import fuzz

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

SMALL = ("bert", "gpt2", "llama")
"""Families the deterministic tests draw from (each is captured once per test process)."""


def test_a_short_time_budget_finds_no_crash_or_disagreement():
    report = fuzz.fuzz(None, seed=1000, onnx_every=3, hf_every=2, time_budget=10)
    assert report.stopped == "time-budget"
    assert report.failures == [], report.table()
    assert report.counts()["ok"] >= 1, report.table()
    assert "torchscript" in {c for r in report.results for c in r.checks}


def _fake_tries(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Replace run_try by an instant one (optionally Ctrl-C on the try ``interrupt_at``)."""
    seen: list[int] = []

    def run_try(seed, onnx=True, hf=True, families=fuzz.FAMILIES):  # noqa: ANN001, ANN202
        if len(seen) == interrupt_at:
            raise KeyboardInterrupt
        seen.append(seed)
        return fuzz.TryResult(seed, "bert", "dce", "ok", checks=("torchscript",))

    monkeypatch.setattr(fuzz, "run_try", run_try)
    return seen


def test_ctrl_c_prints_the_partial_report_and_exits_130(monkeypatch, capsys):
    seen = _fake_tries(monkeypatch, interrupt_at=3)
    assert fuzz.main(["--tries", "10", "--json"]) == 130
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["stopped"] == "interrupted" and report["tries"] == 3 == len(seen)
    assert report["counts"]["ok"] == 3 and "Traceback" not in err


def test_the_time_budget_stops_drawing_tries(monkeypatch, capsys):
    _fake_tries(monkeypatch)
    clock = iter(range(0, 1000, 4))  # each reading of the clock: 4 s later
    monkeypatch.setattr(fuzz.time, "perf_counter", lambda: float(next(clock)))
    assert fuzz.main(["--time-budget", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stopped"] == "time-budget" and 1 <= report["tries"] <= 3


def test_backends_are_judged_with_the_self_checks_tolerance(monkeypatch):
    """An int8 module gets the self-check's int8 ONNX tolerance (0.1), an fp32 one 1e-3: a
    difference of 0.05 passes the first and fails the second."""
    monkeypatch.setattr(fuzz, "_difference", lambda want, got: 0.05)
    monkeypatch.setattr(fuzz, "BACKENDS", ("onnx",))
    seeds = {}
    for s in range(3000, 3200):
        specs = [spec for spec, _ in fuzz.draw(s, ("bert",))[1]]
        int8 = any(spec.startswith("quantize{targets=attention") for spec in specs)
        if all(spec.split("{")[0] in ("quantize", "dce", "canonicalize") for spec in specs):
            seeds.setdefault(int8, s)
        if len(seeds) == 2:
            break
    assert fuzz.run_try(seeds[True], families=("bert",)).outcome == "ok"
    result = fuzz.run_try(seeds[False], families=("bert",))
    assert result.outcome == "disagree" and "tolerance 0.001" in result.detail, result


def test_the_fuzzer_catches_a_wrong_neuron_removal(monkeypatch):
    """Plant a bug (the down projection keeps the wrong columns): some try must fail."""
    import optc.ir.surgery as surgery

    real = surgery.slice_param

    def shifted(module, node, arg, dim, index):  # noqa: ANN001, ANN202
        if dim == 1 and len(index) > 1:
            index = [*index[1:], index[0]]
        return real(module, node, arg, dim, index)

    monkeypatch.setattr(surgery, "slice_param", shifted)
    seeds = [s for s in range(2000, 2100)
             if [kind for _, kind in fuzz.draw(s, SMALL)[1] if kind != "cleanup"] == ["neurons"]][:2]
    assert seeds
    outcomes = {fuzz.run_try(s, onnx=False, hf=False, families=SMALL).outcome for s in seeds}
    assert outcomes & {"reference", "disagree"}, outcomes
