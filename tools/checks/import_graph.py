"""The package's import graph, checked against the layering of DESIGN.md.

    python -m optc.tools.checks.import_graph          # arrows between layers, then any violation

Layers, bottom to top (a module may import its own layer or any layer below it):

    0  errors, outputs          typed errors, safe output writing
    1  ir                       the IR and its analyses
    2  frontends, backends, artifacts
    3  tasks, train
    4  passes
    5  search
    6  tools
    7  optc (the package root), __main__

Inside tools, its sub-packages have layers of their own (:data:`TOOLS_LAYERS`), bottom to top:
what every tool shares (``common``, ``progress``), ``measure``, ``reports``, ``cli``, ``checks``,
``bench``: the command never imports a benchmark or a check; a benchmark may drive a command.

Every import counts, at module level or inside a function. An import inside a function is
fine for a heavy optional library or a slow start-up path, but not to dodge a cycle: cycles
among optc modules are reported whatever the import's position.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["LAYERS", "TOOLS_LAYERS", "import_edges", "violations", "main"]

ROOT = Path(__file__).resolve().parents[2]

LAYERS = {
    "errors": 0, "outputs": 0,
    "ir": 1,
    "frontends": 2, "backends": 2, "artifacts": 2,
    "tasks": 3, "train": 3,
    "passes": 4,
    "search": 5,
    "tools": 6,
    "__init__": 7, "__main__": 7,
}
"""Rank of each top-level module or subpackage of optc."""

TOOLS_LAYERS = {
    "__init__": 0, "common": 0, "progress": 0,
    "measure": 1,
    "reports": 2,
    "cli": 3,
    "checks": 4,
    "bench": 5,
}
"""Rank of each module or sub-package directly under optc.tools."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(["optc", *parts])


def _sources() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).parts
        if rel[0] in ("tests", ".venv", "build") or rel[0].startswith("."):
            continue
        found[_module_name(path)] = path
    return found


def import_edges() -> dict[str, set[str]]:
    """optc module -> the optc modules it imports (at any depth of its code), plus its parent
    package (Python runs a package's ``__init__`` before any module in it)."""
    modules = _sources()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target or not target.startswith("optc") or target == name:
                    continue
                if path.name == "__init__.py" and target.startswith(name + "."):
                    continue  # a package importing its own modules: they import it first
                edges[name].add(target)
    for name in modules:  # importing a.b.c first runs a.b's __init__
        parent = name.rpartition(".")[0]
        if parent in modules and parent != "optc":
            edges[name].add(parent)
    return edges


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS.get(top, -1)


def _tools_layer(module: str) -> tuple[str, int] | None:
    """Name and rank of the part of optc.tools that ``module`` is in; None outside tools."""
    parts = module.split(".")
    if parts[1:2] != ["tools"]:
        return None
    part = parts[2] if len(parts) > 2 else "__init__"
    return part, TOOLS_LAYERS.get(part, -1)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(edges: dict[str, set[str]] | None = None) -> list[str]:
    """Upward arrows (between top-level layers and between tools' sub-packages), modules in no
    layer, and import cycles, one line each."""
    edges = import_edges() if edges is None else edges
    problems = []
    for src, targets in sorted(edges.items()):
        top, rank = _layer(src)
        if rank < 0:
            problems.append(f"{src} is in no layer: add '{top}' to LAYERS")
            continue
        tools = _tools_layer(src)
        if tools is not None and tools[1] < 0:
            problems.append(f"{src} is in no tools layer: add '{tools[0]}' to TOOLS_LAYERS")
            continue
        for dst in sorted(targets):
            dst_top, dst_rank = _layer(dst)
            if dst_rank > rank and not (rank == 7 and dst_rank <= 7):
                problems.append(f"upward import: {src} ({top}, layer {rank}) -> {dst} "
                                f"({dst_top}, layer {dst_rank})")
            dst_tools = _tools_layer(dst)
            if tools is not None and dst_tools is not None and dst_tools[1] > tools[1]:
                problems.append(f"upward import: {src} (tools.{tools[0]}, tools layer {tools[1]}) "
                                f"-> {dst} (tools.{dst_tools[0]}, tools layer {dst_tools[1]})")
    for cycle in _cycles(edges):
        problems.append("import cycle: " + " <-> ".join(cycle))
    return problems


def main() -> int:
    edges = import_edges()
    arrows: dict[tuple[str, str], int] = {}
    for src, targets in edges.items():
        for dst in targets:
            a, b = _layer(src)[0], _layer(dst)[0]
            if a != b:
                arrows[(a, b)] = arrows.get((a, b), 0) + 1
    for (a, b), n in sorted(arrows.items(), key=lambda x: (-LAYERS.get(x[0][0], -1), x[0])):
        print(f"{a:>10} ({LAYERS.get(a, '?')}) -> {b} ({LAYERS.get(b, '?')})  x{n}")
    problems = violations(edges)
    print("\n" + ("\n".join(problems) if problems else "no upward arrows, no cycles"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
