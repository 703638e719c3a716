"""kv-cache: a causal LM with past key/values in and present key/values out; a prefix then the
rest with the prefix's cache equals the whole sequence at once, on every backend."""

from __future__ import annotations

import functools

import pytest
import torch

import optc
from optc.backends.differential import run_backend
from optc.errors import PassError
from optc.ir import collect_problems
from optc.ir.core import Module
from optc.passes import PassManager
from optc.tests.conftest import assert_refused_unchanged, backend_runner
from optc.tests.frontends.llm_cases import llm_captured, llm_model


@functools.cache
def causal_lm(family: str) -> tuple[torch.nn.Module, Module]:
    model = llm_model(family, causal_lm=True)
    return model, optc.capture(model)


def cached(module: Module) -> Module:
    module = module.clone()
    report = PassManager("kv-cache").run(module)
    assert report.records[0].modified
    assert not collect_problems(module)
    return module


def empty_cache(module: Module, batch: int) -> dict[str, torch.Tensor]:
    return {v.name: torch.zeros(batch, 0, v.tensor_type.shape[-1]) for v in module.graph.inputs
            if v.name.startswith(("past_key.", "past_value."))}


@functools.cache
def cached_llama(backend: str) -> tuple[Module, object]:
    """The kv-cached Llama and its runner on ``backend``: exported once for the tests below."""
    _, base = causal_lm("llama")
    module = cached(base)
    return module, backend_runner(module, backend)


def split_run(module: Module, backend: str, ids: torch.Tensor, mask: torch.Tensor,
              cut: int, run=None) -> torch.Tensor:
    """Logits of ``ids`` computed as ids[:, :cut] and then ids[:, cut:] with the first part's
    cache (both parts by ``run``, or by ``module`` lowered once with ``backend``)."""
    run = run or backend_runner(module, backend)
    batch = ids.shape[0]
    first = run({
        "input_ids": ids[:, :cut], "attention_mask": mask[:, :cut],
        "past_attention_mask": mask[:, :0], **empty_cache(module, batch)})
    past = {name: first[name.replace("past_", "present_", 1)] for name in empty_cache(module, batch)}
    second = run({
        "input_ids": ids[:, cut:], "attention_mask": mask[:, cut:],
        "past_attention_mask": mask[:, :cut], **past})
    for name, value in past.items():
        present = second[name.replace("past_", "present_", 1)]
        assert present.shape[1] == ids.shape[1]
        assert torch.equal(present[:, :cut], value)  # the past is kept, the new keys appended
    return torch.cat([first["logits"], second["logits"]], 1)


def ids_and_mask(seq: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, seq), generator=gen)
    mask = torch.ones(3, seq, dtype=torch.long)
    mask[1, -2:] = 0  # right padding (inside the second part)
    mask[2, :2] = 0  # left padding (inside the first part)
    return ids, mask


def test_cached_module_interface() -> None:
    _, base = causal_lm("llama")
    module = cached(base)
    names = [v.name for v in module.graph.inputs]
    assert names == ["input_ids", "attention_mask", "past_attention_mask", "past_key.0",
                     "past_value.0", "past_key.1", "past_value.1"]
    assert list(module.graph.outputs) == ["logits", "present_key.0", "present_value.0",
                                          "present_key.1", "present_value.1"]
    key = module.value_by_name("past_key.1").tensor_type
    assert key.shape == ("batch", "past", 16)  # 2 kv heads * head_dim 8
    assert module.graph.outputs["present_key.1"].tensor_type.shape == ("batch", "past + seq", 16)


def test_empty_past_equals_the_original(backend: str) -> None:
    _, base = causal_lm("llama")
    module, run = cached_llama(backend)
    ids, mask = ids_and_mask()
    expected = run_backend(base, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = run({"input_ids": ids, "attention_mask": mask, "past_attention_mask": mask[:, :0],
               **empty_cache(module, 3)})
    assert (got["logits"] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("cut", [1, 5, 8])
def test_prefix_then_rest_equals_whole_sequence(cut: int) -> None:
    _, base = causal_lm("llama")
    module = cached(base)
    ids, mask = ids_and_mask()
    expected = run_backend(base, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = split_run(module, "eager", ids, mask, cut)
    keep = mask.bool()  # padded query rows are not compared (HF leaves them unspecified too)
    assert (got - expected)[keep].abs().max() < 1e-5


def test_prefix_then_rest_on_every_backend(backend: str) -> None:
    _, base = causal_lm("llama")
    module, run = cached_llama(backend)
    ids, mask = ids_and_mask()
    expected = run_backend(base, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = split_run(module, backend, ids, mask, 6, run)
    keep = mask.bool()  # padded query rows are not compared (HF leaves them unspecified too)
    assert (got - expected)[keep].abs().max() < 1e-5


@pytest.mark.parametrize("family", ["phi3", "gemma", "qwen2"])
def test_other_families(family: str) -> None:
    """Fused qkv (Phi-3), head_dim != hidden/heads (Gemma), qkv biases (Qwen2)."""
    _, base = causal_lm(family)
    module = cached(base)
    ids, mask = ids_and_mask()
    expected = run_backend(base, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = split_run(module, "eager", ids, mask, 4)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5


def test_pruned_model_gets_a_cache_of_its_kv_widths() -> None:
    _, base = causal_lm("llama")
    module = base.clone()
    PassManager("prune-heads{heads=0:1,1:0,1:1},prune-neurons{neurons=0:0,1:5},dce").run(module)
    pruned = module.clone()
    module = cached(module)
    assert module.value_by_name("past_key.0").tensor_type.shape[-1] == 16  # kv heads 0 and 1 kept
    assert module.value_by_name("past_key.1").tensor_type.shape[-1] == 8  # kv head 0 removed
    ids, mask = ids_and_mask()
    expected = run_backend(pruned, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = split_run(module, "eager", ids, mask, 3)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5


def test_second_run_is_a_no_op() -> None:
    _, base = causal_lm("llama")
    module = cached(base)
    report = PassManager("kv-cache").run(module)
    assert not report.records[0].modified


def test_refuses_a_sliding_window_mask() -> None:
    """Mistral's window (3) is shorter than the probe: a cache with a plain causal mask would
    be wrong, so the pass refuses and leaves the IR as it was."""
    _, base = llm_captured("mistral")
    assert_refused_unchanged(base.clone(), "kv-cache", "not causal + padding")


def test_refuses_a_module_without_attention() -> None:
    module = optc.capture(torch.nn.Sequential(torch.nn.Linear(4, 4)), example_inputs=(torch.ones(2, 4),))
    with pytest.raises(PassError, match="no attention ops"):
        PassManager("kv-cache").run(module)


@functools.cache
def gpt2() -> tuple[torch.nn.Module, Module]:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=1, eos_token_id=2)
    model = tf.GPT2LMHeadModel(config).eval()
    model.config._attn_implementation = "sdpa"
    return model, optc.capture(model)


def test_gpt2_learned_positions_start_at_past(backend: str) -> None:
    """GPT-2's positions index a learned table (no rotary): the arange over the new tokens is
    offset by past, or the second part would read positions 0.. again. Equal head counts: ONNX
    runs ORT's fused MultiHeadAttention with more keys than queries."""
    model, base = gpt2()
    module = cached(base)
    ids, mask = ids_and_mask()
    mask[2] = 1  # HF GPT-2 does not shift positions for left padding either; keep rows plain
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).logits
    got = split_run(module, backend, ids, mask, 4)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5


def test_causal_flag_becomes_part_of_the_mask() -> None:
    """An attention with causal=True (SDPA's is_causal, aligned top-left) must not keep the flag
    once keys outnumber queries: the pass folds it into the new mask."""
    _, base = causal_lm("llama")
    module = base.clone()
    for node in module.graph:
        if node.op == "attention":
            node.set_attr("causal", True)  # the mask is causal already: same outputs
    module = cached(module)
    assert not any(n.attr("causal") for n in module.graph if n.op == "attention")
    ids, mask = ids_and_mask()
    expected = run_backend(base, "eager", {"input_ids": ids, "attention_mask": mask})["logits"]
    got = split_run(module, "eager", ids, mask, 5)
    assert (got - expected)[mask.bool()].abs().max() < 1e-5


def test_refuses_a_causal_flag_that_ignores_padding() -> None:
    _, base = causal_lm("llama")
    module = base.clone()
    for node in module.graph:
        if node.op == "attention":
            node.args = node.args[:3]
            node.set_attr("causal", True)
    assert_refused_unchanged(module, "kv-cache", "no mask (causal=True) is not causal + padding")
