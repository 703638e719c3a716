"""Tools: the ``optc`` CLI, reports, measurements, benchmarks and checks, one sub-package each.

    common.py, progress.py   what every tool shares: one-line usage errors, quiet libraries,
                             the progress display
    measure/                 fair interleaved timing, ``optc bench``'s runners, per-op profiles
    reports/                 inspection tables and diffs, ``--compare``, graph pictures, the
                             ``optc report`` page
    cli/                     the ``optc`` command: console script, dispatcher, one module per
                             subcommand, targets, ``--task``, preflight checks, process launcher
    checks/                  checks of optc itself: coverage, fuzzer, import layering, GPU paths
    bench/                   benchmark scripts (``python -m optc.tools.bench.NAME``)

Imports run down this list (:data:`optc.tools.checks.import_graph.TOOLS_LAYERS`): the CLI
uses reports and measurements, never a benchmark; a benchmark may drive the CLI's commands.
"""

__all__: list[str] = []
