"""Measuring models: fair interleaved timing, ``optc bench``'s runners and its per-op-kind
profile (used by the CLI, the reports and the benchmarks)."""
