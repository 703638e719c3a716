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
