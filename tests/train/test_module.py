"""The trainable module: same numbers as the eager backend, gradients everywhere, dropout in
train mode only, masks, and write-back that never edits IR tensors in place."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.errors import InputError
from optc.ir import print_module
from optc.ir.attributes import Sparsity
from optc.tests.frontends.hf_cases import captured
from optc.tests.train.conftest import tiny_bert
from optc.train import DEFAULT_DROPOUT, add_task_head, dropout_probability, trainable, write_back


def test_eval_mode_equals_the_eager_backend(bert, batch) -> None:
    _, module = bert
    model = trainable(module).eval()
    expected = optc.to_eager(module)(**batch)
    got = model(**batch)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_eval_mode_equals_eager_on_a_captured_classifier() -> None:
    model, module = captured("bert", "sequence-classification")
    ids = torch.randint(3, 120, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    got = trainable(module).eval()(input_ids=ids, attention_mask=mask)["logits"]
    torch.testing.assert_close(got, optc.to_eager(module)(input_ids=ids, attention_mask=mask)["logits"],
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(got, model(input_ids=ids, attention_mask=mask).logits, rtol=1e-4,
                               atol=1e-5)


def test_float_params_become_parameters_and_int_buffers_stay(bert) -> None:
    _, module = bert
    model = trainable(module)
    params = dict(model.named_ir_parameters())
    for name, param in module.params.items():
        if param.data.is_floating_point():
            assert name in params and params[name].requires_grad
            assert params[name].data_ptr() != param.data.data_ptr()  # a copy, not the IR tensor
        else:
            assert name not in params
            assert not isinstance(model.tensor(name), torch.nn.Parameter)


def test_gradients_reach_every_float_parameter_and_match_hugging_face(bert, batch) -> None:
    hf, module = bert
    model = trainable(module).eval()
    weights = torch.randn(32, generator=torch.Generator().manual_seed(1))
    out = model(**batch)
    ((out["pooler_output"] @ weights).sum() + out["last_hidden_state"].pow(2).mean()).backward()
    hf.zero_grad()
    ref = hf(**batch)
    ((ref.pooler_output @ weights).sum() + ref.last_hidden_state.pow(2).mean()).backward()
    hf_params = dict(hf.named_parameters())
    for name, param in model.named_ir_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for @{name}"
        torch.testing.assert_close(param.grad, hf_params[name].grad, rtol=1e-4, atol=1e-6)


def test_dropout_only_in_train_mode_and_where_bert_has_it(bert, batch) -> None:
    _, module = bert
    model = trainable(module)
    assert model.dropout == DEFAULT_DROPOUT
    assert model.dropout_layers == 1 + 2 * 2  # embeddings, attention and FFN of 2 layers
    torch.manual_seed(0)
    a = model(**batch)["last_hidden_state"]
    b = model(**batch)["last_hidden_state"]
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(**batch)["last_hidden_state"], model(**batch)["last_hidden_state"])
    assert not any("dropout" in n.op for n in module.graph)  # never written into the IR
    head = module.clone()
    add_task_head(head, "sst2")
    assert trainable(head).dropout_layers == 6  # and before the classifier
    assert trainable(module, dropout=0).dropout_layers == 0


def test_dropout_probability_from_the_recorded_source(bert) -> None:
    _, module = bert
    assert dropout_probability(module) == DEFAULT_DROPOUT
    module.meta["source"]["hidden_dropout_prob"] = 0.25
    assert dropout_probability(module) == 0.25
    assert trainable(module).dropout == 0.25


def test_trainable_leaves_the_ir_unchanged(bert) -> None:
    _, module = bert
    text = print_module(module)
    tensors = {n: p.data for n, p in module.params.items()}
    trainable(module, hidden_states=True)
    assert print_module(module) == text
    assert all(module.params[n].data is t for n, t in tensors.items())


def test_hidden_states_are_the_layer_outputs(bert, batch) -> None:
    _, module = bert
    out = trainable(module, hidden_states=True).eval()(**batch)
    assert [k for k in out if k.startswith("hidden_state.")] == ["hidden_state.0", "hidden_state.1"]
    torch.testing.assert_close(out["hidden_state.1"], out["last_hidden_state"])


def test_write_back_replaces_tensors_and_leaves_the_originals(bert, batch) -> None:
    _, module = bert
    snapshot = module.clone()  # shares the tensors (copy-on-write)
    before = {n: p.data for n, p in module.params.items()}
    values = {n: t.clone() for n, t in before.items()}
    model = trainable(module)
    with torch.no_grad():
        for _, param in model.named_ir_parameters():
            param.add_(1.0)
    written = write_back(model, module)
    assert sorted(written) == sorted(n for n, t in before.items() if t.is_floating_point())
    for name, tensor in before.items():
        assert torch.equal(tensor, values[name])  # the original tensor objects are untouched
        assert snapshot.params[name].data is tensor
        if name in written:
            assert module.params[name].data is not tensor
            torch.testing.assert_close(module.params[name].data, values[name] + 1.0)
        else:
            assert module.params[name].data is tensor
    optc.verify(module)
    torch.testing.assert_close(optc.to_eager(module)(**batch)["last_hidden_state"],
                               model.eval()(**batch)["last_hidden_state"], rtol=0, atol=1e-6)


def test_write_back_refuses_a_changed_module(bert) -> None:
    _, module = bert
    model = trainable(module)
    other = module.clone()
    name = next(n for n, p in other.params.items() if p.data.dim() == 2)
    other.params[name].data = other.params[name].data[:, :4].clone()
    tensors = {n: p.data for n, p in other.params.items()}
    with pytest.raises(InputError, match=f"cannot write back @{name}"):
        write_back(model, other)
    assert all(other.params[n].data is t for n, t in tensors.items())  # nothing written


def test_masks_keep_sparsity_zeros_zero(bert, batch) -> None:
    _, module = bert
    name = next(n for n, p in module.params.items() if n.endswith("intermediate.dense.weight"))
    param = module.params[name]
    data = param.data.clone()
    data[:, ::2] = 0
    param.data = data
    param.attrs["sparsity"] = Sparsity("unstructured", 0.5)
    extra = next(n for n in module.params if n.endswith("output.dense.weight"))
    model = trainable(module, masked=[extra])
    assert set(model.masks) == {name, extra}
    optimizer = torch.optim.SGD([p for _, p in model.named_ir_parameters()], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch)["last_hidden_state"].pow(2).mean().backward()
        model.mask_gradients()
        optimizer.step()
        model.apply_masks()
    assert torch.count_nonzero(model.tensor(name)[:, ::2]) == 0
    assert torch.count_nonzero(model.tensor(name)[:, 1::2]) > 0


def test_unknown_masked_or_frozen_parameter_is_refused(bert) -> None:
    _, module = bert
    with pytest.raises(InputError, match="masked parameter @nope does not exist"):
        trainable(module, masked=["nope"])
    frozen = next(iter(module.params))
    model = trainable(module, frozen=[frozen])
    assert frozen not in dict(model.named_ir_parameters())


def test_tiny_model_without_source_tokenizer_still_trains_forward() -> None:
    _, module = tiny_bert(layers=1)
    model = trainable(module)
    ids = torch.tensor([[2, 5, 6, 3]])
    assert model(input_ids=ids)["last_hidden_state"].shape == (1, 4, 32)


def test_the_padding_row_gets_no_gradient_as_in_hugging_face(bert) -> None:
    """``embedding``'s padding_idx is honoured: ids equal to it (padding) leave that row's
    gradient 0, as nn.Embedding(padding_idx=...) does, so training matches Hugging Face."""
    hf, module = bert
    pad = hf.config.pad_token_id
    nodes = [n for n in module.graph if n.op == "embedding" and n.attr("padding_idx") is not None]
    assert nodes and nodes[0].attr("padding_idx") == pad
    ids = torch.tensor([[5, 6, 7, pad, pad], [8, 9, pad, pad, pad]])
    batch = {"input_ids": ids, "attention_mask": (ids != pad).long()}
    model = trainable(module).eval()
    model(**batch)["last_hidden_state"].pow(2).mean().backward()
    name = nodes[0].args[1].name
    grad = dict(model.named_ir_parameters())[name].grad
    assert grad[pad].abs().sum() == 0 and grad[5].abs().sum() > 0
    hf.zero_grad()
    hf(**batch).last_hidden_state.pow(2).mean().backward()
    torch.testing.assert_close(grad, dict(hf.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)
