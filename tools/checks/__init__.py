"""Checks of optc itself: model coverage, the fuzzer, the import layering, GPU paths and
sentence-transformers' loading of what optc writes."""
