"""The differential harness runs one IR module on every backend and names any disagreement.

Also exercises the shared ``backend`` fixture and ``assert_backends_agree`` helper from
tests/conftest.py, which pass tests use to run on all three backends with one line.
"""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends import differential
from optc.backends.differential import (
    BACKEND_NAMES,
    TOLERANCES,
    BackendMismatch,
    check_backends,
    run_backend,
)
from optc.errors import BackendError, OptcError
from optc.tests.conftest import assert_backends_agree, token_inputs
from optc.tests.frontends.hf_cases import OUTPUTS, captured

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def bert():
    model, module = captured("bert")
    inputs = token_inputs(model, 3, 9, seed=1)
    inputs["token_type_ids"] = (torch.arange(9) >= 4).long().expand(3, 9)
    return model, module, inputs


def perturb(monkeypatch, backend: str, edit) -> None:  # noqa: ANN001
    """Make ``run_backend`` return ``edit(outputs)`` for ``backend``."""
    real = differential.run_backend

    def fake(module, name, inputs):  # noqa: ANN001
        outputs = real(module, name, inputs)
        return edit(dict(outputs)) if name == backend else outputs

    monkeypatch.setattr(differential, "run_backend", fake)


def test_every_backend_agrees_on_tiny_bert(bert):
    _, module, inputs = bert
    report = check_backends(module, inputs)
    assert set(report.diffs) == {"torchscript", "onnx", "hf"}  # hf writes BERT: checked too
    for backend, diffs in report.diffs.items():
        assert set(diffs) == {"last_hidden_state", "pooler_output"}
        assert report.worst(backend) <= TOLERANCES[backend]
    assert report.worst("eager") == 0.0


def test_perturbed_backend_is_named_with_its_output(bert, monkeypatch):
    _, module, inputs = bert

    def shift(outputs):  # noqa: ANN001
        outputs["pooler_output"] = outputs["pooler_output"] + 1e-3
        return outputs

    perturb(monkeypatch, "torchscript", shift)
    with pytest.raises(BackendMismatch) as info:
        check_backends(module, inputs, backends=("eager", "torchscript"))
    message = str(info.value)
    assert "torchscript output 'pooler_output' differs from eager by 0.001" in message
    assert "last_hidden_state" not in message
    report = check_backends(module, inputs, backends=("eager", "torchscript"),
                            tolerances={"torchscript": 1e-2})
    assert 0.9e-3 < report.diffs["torchscript"]["pooler_output"] < 1.1e-3
    assert report.diffs["torchscript"]["last_hidden_state"] <= TOLERANCES["torchscript"]


def test_nan_missing_and_misshapen_outputs_are_mismatches(bert, monkeypatch):
    _, module, inputs = bert

    def corrupt(outputs):  # noqa: ANN001
        outputs["last_hidden_state"] = outputs["last_hidden_state"].clone()
        outputs["last_hidden_state"][0, 0, 0] = float("nan")
        del outputs["pooler_output"]
        return outputs

    perturb(monkeypatch, "torchscript", corrupt)
    with pytest.raises(BackendMismatch) as info:
        check_backends(module, inputs, backends=("eager", "torchscript"))
    assert "torchscript output 'last_hidden_state' differs from eager by nan" in str(info.value)
    assert "torchscript has no output 'pooler_output'" in str(info.value)

    perturb(monkeypatch, "torchscript", lambda o: {k: v[:1] for k, v in o.items()})
    with pytest.raises(BackendMismatch, match=r"torchscript output 'last_hidden_state' has shape "
                       r"\(1, 9, 64\), eager \(3, 9, 64\)"):
        check_backends(module, inputs, backends=("eager", "torchscript"))


def test_assert_backends_agree_fails_the_test_with_the_mismatch(bert, monkeypatch):
    _, module, inputs = bert
    perturb(monkeypatch, "torchscript", lambda o: {k: v + 1 for k, v in o.items()})
    with pytest.raises(pytest.fail.Exception, match="torchscript output 'last_hidden_state'"):
        assert_backends_agree(module, inputs, backends=("eager", "torchscript"))


def test_omitted_inputs_take_recorded_defaults(bert):
    model, module, inputs = bert
    ids = inputs["input_ids"]
    got = run_backend(module, "torchscript", {"input_ids": ids})
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                     token_type_ids=torch.zeros_like(ids))
    for name in OUTPUTS[("bert", "base")]:
        assert (got[name] - want[name]).abs().max().item() <= 1e-5


def test_unknown_backend_and_missing_inputs_are_errors(bert):
    _, module, inputs = bert
    with pytest.raises(OptcError, match="unknown backend 'tvm'; choose one of eager, torchscript, onnx"):
        run_backend(module, "tvm", inputs)
    with pytest.raises(OptcError, match="missing input 'input_ids'"):
        run_backend(module, "torchscript", {"attention_mask": inputs["attention_mask"]})


def test_backend_fixture_runs_a_capture(backend, bert):
    """The one-line pattern for pass tests: ``run_backend(module, backend, inputs)``."""
    model, module, inputs = bert
    assert backend in BACKEND_NAMES
    got = run_backend(module, backend, inputs)
    with torch.no_grad():
        want = model(**inputs)
    assert list(got) == OUTPUTS[("bert", "base")]
    for name, value in got.items():
        assert (value - want[name]).abs().max().item() <= 1e-4, (backend, name)


def test_helper_on_a_plain_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    module = optc.capture(net, {"input": torch.randn(2, 8)})
    report = assert_backends_agree(module, {"input": torch.randn(5, 8)}, backends=("eager", "torchscript"))
    assert set(report.diffs) == {"torchscript"}


def test_ir_text_without_weights_is_a_backend_error_on_eager(bert):
    _, module, inputs = bert
    weightless = optc.parse_module(optc.print_module(module))
    with pytest.raises(BackendError, match=r"parameter @\S+ has no data \(IR text was loaded without weights\)"):
        run_backend(weightless, "eager", inputs)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda x: {**x, "input_ids": x["input_ids"].int()},
     "input 'input_ids' is int32 but the module takes int64: pass input_ids.long()"),
    (lambda x: {**x, "attention_mask": x["attention_mask"].bool()},
     "input 'attention_mask' is bool but the module takes int64: pass attention_mask.long()"),
    (lambda x: {**x, "input_ids": x["input_ids"][0]}, "input 'input_ids' has 1 dimensions"),
    (lambda x: {**x, "input_ids": x["input_ids"].tolist()}, "input 'input_ids' must be a torch.Tensor"),
    (lambda x: {**x, "ids": x["input_ids"]}, "the module has no input 'ids'; its inputs are input_ids"),
    (lambda x: list(x.values()), "inputs must be a dict"),
], ids=["int32-ids", "bool-mask", "rank", "list", "unknown-name", "not-a-dict"])
def test_bad_inputs_are_typed_errors(bert, edit, message):
    from optc.errors import InputError

    _, module, inputs = bert
    for call in (lambda: check_backends(module, edit(inputs)),
                 lambda: run_backend(module, "onnx", edit(inputs))):
        with pytest.raises(InputError) as info:
            call()
        assert message in str(info.value)


def test_a_hugging_face_model_is_not_a_module(bert):
    from optc.errors import InputError

    model, _, inputs = bert
    with pytest.raises(InputError, match="expected an optc IR module.*optc.capture"):
        check_backends(model, inputs)
