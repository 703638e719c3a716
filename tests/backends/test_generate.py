"""Greedy generation with a key/value cache: a pruned tiny Llama generates the same 20 tokens
with the cached eager module, the cached ONNX Runtime session and the pruned IR re-run on the
whole sequence at every step; unpruned, the tokens equal Hugging Face's generate."""

from __future__ import annotations

import functools

import pytest
import torch

import optc
from optc.backends.eager import to_eager
from optc.backends.generate import cache_layout, greedy_generate
from optc.backends.onnx import OnnxModule, export_onnx
from optc.errors import InputError
from optc.ir.core import Module
from optc.passes import PassManager
from optc.tests.frontends.llm_cases import llm_model

NEW = 20


@functools.cache
def llama() -> tuple[torch.nn.Module, Module]:
    model = llm_model("llama", causal_lm=True)  # hidden 32, 2 layers, 4 heads, 2 kv heads
    return model, optc.capture(model)


@functools.cache
def pruned() -> Module:
    module = llama()[1].clone()
    PassManager("prune-heads{heads=0:1,1:0,1:1},prune-neurons{neurons=0:0,0:17,0:63,1:5},"
                "dce").run(module)
    return module


def with_cache(module: Module) -> Module:
    module = module.clone()
    PassManager("kv-cache").run(module)
    return module


def prompt(batch: int = 2, seq: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randint(3, 120, (batch, seq), generator=gen)


def test_pruned_llama_generates_the_same_tokens_with_the_cache_in_eager_and_onnx(tmp_path) -> None:
    module = pruned()
    ids = prompt()
    reference = greedy_generate(to_eager(module), ids, NEW)  # no cache: whole sequence each step
    assert reference.shape == (2, 5 + NEW)
    assert torch.equal(reference[:, :5], ids)
    cached = with_cache(module)
    eager = to_eager(cached)
    assert set(cache_layout(eager)) == {f"past_{kv}.{i}" for kv in ("key", "value") for i in (0, 1)}
    assert torch.equal(greedy_generate(eager, ids, NEW), reference)
    onnx = OnnxModule(export_onnx(cached, tmp_path / "llama.onnx"))
    assert cache_layout(onnx) == cache_layout(eager)
    assert torch.equal(greedy_generate(onnx, ids, NEW), reference)
    # the pruning changed what the model says: the test would not see a cache that ignored it
    unpruned = greedy_generate(to_eager(llama()[1]), ids, NEW)
    assert not torch.equal(unpruned, reference)


def test_unpruned_llama_matches_hugging_face_generate() -> None:
    model, base = llama()
    ids = prompt()
    with torch.inference_mode():
        expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                  pad_token_id=0)
    got = greedy_generate(to_eager(with_cache(base)), ids, NEW)
    assert torch.equal(got, expected)


def test_left_padded_prompt_cache_equals_full_recompute() -> None:
    module = pruned()
    ids = prompt(3, 6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    reference = greedy_generate(to_eager(module), ids, 8, attention_mask=mask)
    got = greedy_generate(to_eager(with_cache(module)), ids, 8, attention_mask=mask)
    assert torch.equal(got, reference)


def test_eos_stops_rows_and_generation() -> None:
    module = pruned()
    ids = prompt()
    free = greedy_generate(to_eager(module), ids, 6)
    eos = int(free[0, 5 + 2])  # row 0's third new token
    got = greedy_generate(to_eager(with_cache(module)), ids, 6, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got[0, :8], free[0, :8])
    assert (got[0, 8:] == 0).all()  # row 0 is padded after its eos
    if not (free[1, 5:] == eos).any():  # row 1 never says eos: it runs to the end
        assert torch.equal(got[1], free[1])
    only_row0 = greedy_generate(to_eager(with_cache(module)), ids[:1], 6, eos_token_id=eos)
    assert torch.equal(only_row0, free[:1, :8])  # every row done: generation stops


def test_bad_inputs_are_refused() -> None:
    eager = to_eager(with_cache(pruned()))
    with pytest.raises(InputError, match="input_ids must be"):
        greedy_generate(eager, torch.ones(4, dtype=torch.long), 3)
    with pytest.raises(InputError, match="attention_mask"):
        greedy_generate(eager, prompt(), 3, attention_mask=torch.ones(2, 3))
    with pytest.raises(InputError, match="input_ids input"):
        greedy_generate(object(), prompt(), 3)
