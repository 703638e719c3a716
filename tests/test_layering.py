"""The import graph follows DESIGN.md's layering: no upward arrows, no cycles."""

from __future__ import annotations

from optc.tools.import_graph import LAYERS, import_edges, violations


def test_no_upward_imports_and_no_cycles():
    assert violations() == []


def test_every_package_is_in_a_layer():
    tops = {name.split(".")[1] for name in import_edges() if name.count(".") >= 1}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_the_checker_catches_an_upward_arrow_and_a_cycle():
    edges = {
        "optc.ir.core": {"optc.passes.base"},           # ir (1) -> passes (4): upward
        "optc.passes.base": {"optc.passes.spec"},
        "optc.passes.spec": {"optc.passes.base"},       # a cycle
    }
    found = violations(edges)
    assert any(p.startswith("upward import: optc.ir.core") for p in found)
    assert "import cycle: optc.passes.base <-> optc.passes.spec" in found
