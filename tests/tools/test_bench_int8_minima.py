"""tools/bench/int8.py's kernel minima: per model, the sum of per-node minimum kernel times."""

from __future__ import annotations

from pathlib import Path

import torch

from optc.backends.onnx import export_onnx
from optc.passes import PassManager
from optc.tools.bench.int8 import kernel_minima


def test_kernel_minima_are_finite_positive_sums_per_model(tmp_path: Path) -> None:
    from optc.tests.frontends.hf_cases import captured

    module = captured("bert")[1].clone()
    PassManager("quantize").run(module)
    paths = {"int8": export_onnx(module, tmp_path / "q.onnx"),
             "f32": export_onnx(captured("bert")[1], tmp_path / "f.onnx")}
    ids = torch.randint(3, 100, (2, 16))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    k = kernel_minima(paths, threads=1, feeds=feeds, sessions=2, runs=3)
    assert set(k) == {"int8", "f32"}
    assert all(0 < v < 1 for v in k.values())  # seconds, every node seen (no inf)
    assert not list(tmp_path.glob("*.json"))  # profiles are not left behind
