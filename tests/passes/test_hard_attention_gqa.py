"""hard-attention on grouped-query attention (Llama, Mistral, Qwen2 with fewer kv heads than
query heads) lowers to ONNX with k = min(k, key length) taken at run time: one exported file
runs in ONNX Runtime at sequence lengths below k, equal to k and above it, and agrees with
eager (it used to freeze k into TopK and fail whenever the sequence was shorter than k)."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends import write_backend
from optc.backends.onnx import OnnxModule
from optc.tests.frontends.llm_cases import llm_captured, llm_inputs

K = 4


def inputs_of(model: torch.nn.Module, seq: int) -> dict[str, torch.Tensor]:
    """Padded rows when the sequence is long enough to pad, else a full mask."""
    if seq > 2:
        return llm_inputs(model, 2, seq, seed=seq)
    gen = torch.Generator().manual_seed(seq)
    ids = torch.randint(3, model.config.vocab_size, (2, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones(2, seq, dtype=torch.long)}


def assert_onnx_matches_eager(module: optc.Module, model: torch.nn.Module, path) -> None:
    written = write_backend(module, "onnx", path)
    runner = OnnxModule(written)
    eager = optc.to_eager(module)
    for seq in (1, 3, K, 9):
        inputs = inputs_of(model, seq)
        with torch.inference_mode():
            want = eager(**inputs)
        got = runner(**{n: inputs[n] for n in runner.input_names})
        for name, ref in want.items():
            assert (got[name] - ref).abs().max().item() <= 1e-4, (seq, name)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_gqa_hard_attention_runs_in_ort_below_k(family: str, tmp_path) -> None:
    model, base = llm_captured(family)
    module = base.clone()
    optc.run_pipeline(module, f"hard-attention{{k={K}}}")
    nodes = [n for n in module.graph if n.op == "attention"]
    assert nodes and all(n.attr("num_kv_heads") == 2 and n.attr("topk") == K for n in nodes)
    assert_onnx_matches_eager(module, model, tmp_path / "model.onnx")
    soft = optc.to_eager(base)(**inputs_of(model, 9))
    hard = optc.to_eager(module)(**inputs_of(model, 9))
    changed = any((hard[n] - soft[n]).abs().max() > 1e-4 for n in soft)
    # Mistral's tiny config has a sliding window of 3 keys, fewer than k: soft, exactly
    assert changed == (family != "mistral")


def test_gqa_with_uneven_groups_and_fraction(tmp_path) -> None:
    """After pruning one query head the groups are uneven (``kv_heads``); ``fraction`` keeps
    ceil(fraction * keys), also at run time."""
    model, base = llm_captured("llama")
    module = base.clone()
    optc.run_pipeline(module, "prune-heads{heads=0:1},hard-attention{fraction=0.5}")
    first = next(n for n in module.graph if n.op == "attention")
    assert first.attr("num_heads") == 3 and first.attr("topk_fraction") == 0.5
    assert_onnx_matches_eager(module, model, tmp_path / "model.onnx")
