"""Python API misuse raises typed OptcErrors that say what to pass, never a raw
AttributeError or TypeError from deep inside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optc
from optc.errors import InputError, OptcError, PipelineSpecError
from optc.passes.spec import parse_pipeline
from optc.tests.conftest import tiny_model, token_inputs


@pytest.fixture(scope="module")
def hf_bert() -> torch.nn.Module:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def module(hf_bert) -> optc.Module:
    return optc.capture(hf_bert)


def test_pipeline_as_a_list_of_specs():
    passes = parse_pipeline(["canonicalize", "dce{keep_params=true}"])
    assert [p.spec() for p in passes] == ["canonicalize", "dce{keep_params=true}"]
    assert [p.spec() for p in parse_pipeline(["canonicalize,dce"])] == ["canonicalize", "dce"]
    assert parse_pipeline(passes) == passes
    assert parse_pipeline([]) == []


@pytest.mark.parametrize("bad, message", [
    ([1], "item 0 of the pipeline is a int"),
    (["dce", None], "item 1 of the pipeline is a NoneType"),
    (42, "not int"),
    ({"dce": {}}, "not dict"),
], ids=["int-item", "none-item", "int", "dict"])
def test_bad_pipelines_are_spec_errors(bad, message):
    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(bad)


def test_unknown_pass_in_a_list_names_the_valid_ones():
    with pytest.raises(PipelineSpecError, match="valid passes"):
        parse_pipeline(["dce", "frobnicate"])


def test_run_pipeline_takes_a_list_of_specs(module):
    report = optc.run_pipeline(module.clone(), ["canonicalize", "dce"])
    assert [r.spec for r in report.records] == ["canonicalize", "dce"]


def test_run_pipeline_on_a_hugging_face_model_says_capture_first(hf_bert):
    with pytest.raises(OptcError, match="optc.capture"):
        optc.run_pipeline(hf_bert, "dce")


def test_save_of_a_hugging_face_model_says_capture_first(hf_bert, tmp_path: Path):
    with pytest.raises(InputError, match=r"torch module BertModel: capture it first"):
        optc.save(hf_bert, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", [None, 3, ""])
def test_load_without_a_path(path):
    with pytest.raises(InputError, match="needs the path of an artifact directory"):
        optc.load(path)


def test_check_backends_with_int32_ids(module, hf_bert):
    from optc.backends.differential import check_backends

    inputs = token_inputs(hf_bert, 2, 5)
    with pytest.raises(InputError, match=r"int32 .* pass input_ids.long\(\)"):
        check_backends(module, {**inputs, "input_ids": inputs["input_ids"].int()})
    with pytest.raises(InputError, match=r"bool .* pass attention_mask.long\(\)"):
        check_backends(module, {**inputs, "attention_mask": inputs["attention_mask"].bool()})


# -- tensors that do not fit a compiled module: one ModelInputError (a ValueError) each --------
@pytest.fixture(scope="module")
def compiled(module) -> torch.nn.Module:
    return optc.to_eager(module)


def _misfits(hf_bert) -> dict[str, tuple[dict[str, object], str]]:
    ins = token_inputs(hf_bert, 2, 5)
    ids = ins["input_ids"]
    return {
        "id-past-vocab": ({**ins, "input_ids": ids.clone().fill_(120)},
                          r"'input_ids' holds id 120, but the embedding table it indexes has 120 "
                          r"rows: its ids must be in 0\.\.119"),
        "negative-id": ({**ins, "input_ids": ids.clone().fill_(-1)}, r"holds id -1"),
        "float-ids": ({**ins, "input_ids": ids.float()},
                      r"'input_ids' must hold integers \(token ids: \.long\(\)\), got float32"),
        "past-positions": ({"input_ids": torch.randint(3, 120, (2, 65))},
                           r"'input_ids' has seq 65 along axis 1, but the model's position table "
                           r"allows at most 64"),
        "mask-shape": ({**ins, "attention_mask": torch.ones(2, 6, dtype=torch.long)},
                       r"'attention_mask' has seq 6 along axis 1 but 'input_ids' has seq 5"),
        "3-d-ids": ({"input_ids": ids[None]}, r"'input_ids' must be 2-D \(batch, seq\), got 3-D"),
        "a-list": ({"input_ids": ids.tolist()}, r"'input_ids' must be a torch.Tensor, got list"),
    }


@pytest.mark.parametrize("case", ["id-past-vocab", "negative-id", "float-ids", "past-positions",
                                  "mask-shape", "3-d-ids", "a-list"])
def test_inputs_that_do_not_fit_a_compiled_module(compiled, hf_bert, case, tmp_path: Path):
    from optc.errors import ModelInputError

    inputs, message = _misfits(hf_bert)[case]
    with pytest.raises(ModelInputError, match=message) as caught:
        compiled(**inputs)
    assert isinstance(caught.value, ValueError) and len(str(caught.value).splitlines()) == 1
    if case == "past-positions":  # the same from a loaded artifact and from check_backends
        from optc.backends.differential import check_backends

        optc.save(compiled.ir, tmp_path / "a")
        with pytest.raises(ModelInputError, match=message):
            optc.load(tmp_path / "a")(**inputs)
        with pytest.raises(ModelInputError, match=message):
            check_backends(compiled.ir, inputs)


def test_fitting_inputs_still_run(compiled, hf_bert):
    ins = token_inputs(hf_bert, 2, 64)
    expected = hf_bert(**ins).last_hidden_state
    assert (compiled(**ins)["last_hidden_state"] - expected).abs().max() < 1e-4


def test_to_eager_of_a_hugging_face_model_says_capture_first(hf_bert):
    with pytest.raises(InputError, match=r"got the torch module BertModel: call optc.capture"):
        optc.to_eager(hf_bert)


@pytest.mark.parametrize("bad", [int, 3, "dce"])
def test_register_pass_of_a_non_pass(bad):
    with pytest.raises(PipelineSpecError, match="register_pass decorates a Pass subclass"):
        optc.register_pass(bad)
