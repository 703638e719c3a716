"""Tools: the ``optc`` CLI, inspection, progress display and benchmarks."""

__all__: list[str] = []
