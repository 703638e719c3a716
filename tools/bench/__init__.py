"""Benchmark scripts (``python -m optc.tools.bench.NAME``): each prints a table; the README's
numbers come from them. Not part of the ``optc`` command."""
