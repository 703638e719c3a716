"""Structural passes after sparsify / quantize: attributes and scales follow the slices, or
the pass refuses with the fix; and the self-check's int8 tolerance."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.selfcheck import INT8_TOLERANCES, TOLERANCES, tolerance_for, write_checked
from optc.ir import print_module
from optc.ir.analysis import analyze
from optc.ir.attributes import Sparsity
from optc.tests.conftest import assert_backends_agree, tiny_model, token_inputs

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def bert():
    model = tiny_model("bert")
    return model, optc.capture(model)


def test_pruning_after_unstructured_sparsity_keeps_a_true_density(bert):
    model, base = bert
    module = base.clone()
    optc.run_pipeline(module, "sparsify{sparsity=0.5,pattern=unstructured},"
                              "prune-heads{heads=0:1,1:2},prune-neurons{neurons=0:3,1:7}")
    optc.verify(module)  # every declared density still holds
    sparse = [p for p in module.params.values() if isinstance(p.attrs.get("sparsity"), Sparsity)]
    assert sparse
    for p in sparse:
        assert float((p.data != 0).float().mean()) <= p.attrs["sparsity"].density + 1e-6
    assert_backends_agree(module, token_inputs(model, 2, 7))


def test_pruning_after_n_m_sparsity_is_refused_with_the_fix(bert):
    _, base = bert
    module = base.clone()
    optc.run_pipeline(module, "sparsify{pattern=2:4}")
    text = print_module(module)
    with pytest.raises(optc.OptcError, match="run structural passes before sparsify"):
        optc.run_pipeline(module, "prune-neurons{neurons=0:3}")
    assert print_module(module) == text


def test_pruning_a_quantized_model_slices_the_int8_scales(bert):
    model, base = bert
    module = base.clone()
    optc.run_pipeline(module, "quantize{mode=dynamic},prune-heads{heads=0:1},prune-neurons{neurons=1:4,1:9}")
    optc.verify(module)
    layer = analyze(module).layers[0]
    query = layer.attention.query
    assert query.args[1].data.dtype == torch.int8
    assert query.arg(3).data.shape[0] == query.args[1].data.shape[0] == 48
    float_pruned = base.clone()
    optc.run_pipeline(float_pruned, "prune-heads{heads=0:1},prune-neurons{neurons=1:4,1:9}")
    inputs = token_inputs(model, 2, 7)
    got = optc.to_eager(module)(**inputs)["last_hidden_state"]
    want = optc.to_eager(float_pruned)(**inputs)["last_hidden_state"]
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.98


def test_int8_modules_get_the_int8_onnx_tolerance(bert, tmp_path):
    _, base = bert
    module = base.clone()
    assert tolerance_for(module, "onnx") == TOLERANCES["onnx"]
    optc.run_pipeline(module, "quantize{mode=dynamic}")
    assert tolerance_for(module, "onnx") == INT8_TOLERANCES["onnx"]
    assert tolerance_for(module, "torchscript") == TOLERANCES["torchscript"]
    report = write_checked(module, "onnx", tmp_path / "int8.onnx")
    assert report.worst() <= INT8_TOLERANCES["onnx"]
    assert (tmp_path / "int8.onnx").is_file()


@pytest.mark.parametrize("spec", ["quantize,prune-heads{heads=0:0}",
                                  "quantize,prune-neurons{neurons=1:4},drop-layers{layers=0}"])
def test_structural_passes_after_quantize_run_as_the_readme_says(bert, spec):
    """README (Sparsity and int8): structural passes after quantize slice the int8 weights and
    their scales (they are not refused); the backends agree on the result."""
    model, base = bert
    module = base.clone()
    optc.run_pipeline(module, spec)
    assert any(p.data.dtype == torch.int8 for p in module.params.values())
    assert_backends_agree(module, token_inputs(model, 2, 7))
