"""The eager backend runs captured Hugging Face models with the source model's numbers.

Every family is compared with the Hugging Face model on several (batch, seq) sizes with padding
in the attention mask; inputs may be given by position or by name, and inputs with a recorded
default (attention_mask, token_type_ids) may be omitted.
"""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.eager import EagerModule
from optc.errors import BackendError, InputError
from optc.tests.conftest import token_inputs
from optc.tests.frontends.hf_cases import ENCODERS, OUTPUTS, SIZES, captured

TOLERANCE = 1e-5


def assert_matches_hf(model: torch.nn.Module, compiled: EagerModule, inputs: dict,
                      compiled_inputs: dict | None = None) -> None:
    with torch.no_grad():
        expected = model(**inputs)
        got = compiled(**(inputs if compiled_inputs is None else compiled_inputs))
    assert isinstance(got, dict) and list(got) == compiled.output_names
    for name, value in got.items():
        want = expected[name]
        assert value.shape == want.shape, name
        diff = (value - want).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff}"


@pytest.fixture(scope="module")
def compiled():
    """family/head/attention -> (model, EagerModule), built once per module."""
    cache: dict = {}

    def get(family: str, head: str = "base", attn: str = "sdpa"):
        key = (family, head, attn)
        if key not in cache:
            model, module = captured(family, head, attn)
            cache[key] = (model, optc.to_eager(module))
        return cache[key]

    return get


@pytest.mark.parametrize(("family", "head"), ENCODERS + [("gpt2", "base")])
def test_outputs_match_hugging_face(compiled, family, head):
    model, eager = compiled(family, head)
    assert eager.output_names == OUTPUTS[(family, head)]
    for seed, (batch, seq) in enumerate(SIZES):
        inputs = token_inputs(model, batch, seq, seed=seed)
        if family not in ("distilbert", "gpt2"):
            inputs["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(batch, seq)
        assert_matches_hf(model, eager, inputs)


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2"])
def test_eager_attention_implementation_matches_hugging_face(compiled, family):
    model, eager = compiled(family, attn="eager")
    assert sum(n.op == "attention" for n in eager.ir.graph) == 2
    for seed, (batch, seq) in enumerate(SIZES):
        assert_matches_hf(model, eager, token_inputs(model, batch, seq, seed=seed))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "gpt2"])
def test_omitted_inputs_take_hugging_face_defaults(compiled, family):
    model, eager = compiled(family)
    inputs = token_inputs(model, 2, 9)
    assert_matches_hf(model, eager, {"input_ids": inputs["input_ids"]})
    if "token_type_ids" in eager.input_names:
        assert_matches_hf(model, eager, inputs)  # mask given, token types defaulted


def test_positional_and_keyword_calls_agree(compiled):
    model, eager = compiled("bert")
    inputs = token_inputs(model, 3, 7)
    types = torch.zeros_like(inputs["input_ids"])
    by_name = eager(**inputs, token_type_ids=types)
    by_position = eager(inputs["input_ids"], inputs["attention_mask"], types)
    mixed = eager(inputs["input_ids"], attention_mask=inputs["attention_mask"])
    for name in eager.output_names:
        assert torch.equal(by_name[name], by_position[name])
        assert torch.equal(by_name[name], mixed[name])


def test_input_errors(compiled):
    model, eager = compiled("bert")
    inputs = token_inputs(model, 2, 5)
    with pytest.raises(InputError, match="unknown input 'pixel_values'"):
        eager(**inputs, pixel_values=inputs["input_ids"])
    with pytest.raises(InputError, match="missing input 'input_ids'"):
        eager(attention_mask=inputs["attention_mask"])
    with pytest.raises(InputError, match="missing input 'input_ids'"):
        eager()
    with pytest.raises(InputError, match="given twice"):
        eager(inputs["input_ids"], input_ids=inputs["input_ids"])
    with pytest.raises(InputError, match="4 positional inputs"):
        eager(*(inputs["input_ids"],) * 4)


def test_inputs_without_defaults_are_required():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    eager = optc.to_eager(optc.capture(model, {"input": torch.randn(2, 4)}))
    assert list(eager(torch.ones(2, 4))) == ["output"]
    with pytest.raises(InputError, match="missing input 'input'"):
        eager()


def test_eager_module_is_deterministic_and_keeps_the_ir(compiled):
    """No dropout survives into the compiled module even after train(): two calls agree and
    equal the source model in eval mode."""
    model, eager = compiled("bert")
    inputs = token_inputs(model, 2, 9)
    eager.train()
    first, second = eager(**inputs), eager(**inputs)
    assert torch.equal(first["last_hidden_state"], second["last_hidden_state"])
    assert torch.allclose(first["last_hidden_state"], model(**inputs).last_hidden_state, atol=1e-5)
    assert isinstance(eager.ir, optc.Module)
    assert eager.input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_weights_without_data_are_a_backend_error():
    torch.manual_seed(0)
    module = optc.capture(torch.nn.Linear(4, 3).eval(), (torch.randn(2, 4),))
    text = optc.print_module(module)
    with pytest.raises(BackendError, match="no data"):
        optc.to_eager(optc.parse_module(text))
