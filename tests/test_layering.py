"""The import graph follows DESIGN.md's layering: no upward arrows, no cycles."""

from __future__ import annotations

from optc.tools.checks.import_graph import LAYERS, import_edges, violations


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


def test_tools_sub_packages_have_layers_of_their_own():
    edges = {
        "optc.tools.cli.main": {"optc.tools.reports.report", "optc.tools.common"},  # downward
        "optc.tools.reports.graph": {"optc.tools.cli.main"},     # reports (2) -> cli (3): upward
        "optc.tools.scratch": set(),                            # in no tools layer
    }
    found = violations(edges)
    assert found == [
        "upward import: optc.tools.reports.graph (tools.reports, tools layer 2) -> "
        "optc.tools.cli.main (tools.cli, tools layer 3)",
        "optc.tools.scratch is in no tools layer: add 'scratch' to TOOLS_LAYERS",
    ]
