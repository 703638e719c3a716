"""Sparse and int8 modules on the backends: the ONNX integer ops and sparsity annotations (ONNX
Runtime ignores them and runs the model), sparse_initializer storage, TorchScript files,
compressed artifacts loaded back bit-exactly, and inspection's per-layer columns."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import optc
from optc.artifacts import load_module
from optc.backends.onnx import OnnxModule, export_onnx
from optc.backends.sparse_kernels import read_annotations
from optc.backends.torchscript import export_torchscript
from optc.passes import PassManager
from optc.tools.reports.inspection import diff_modules, format_summary, summarize, summarize_onnx

QUERY = "encoder.layer.0.attention.self.query.weight"
UP = "encoder.layer.0.intermediate.dense.weight"


@pytest.fixture(scope="module")
def bert():
    """(model, captured module, padded inputs) of the tiny BERT; clone the module to mutate."""
    from optc.tests.conftest import token_inputs
    from optc.tests.frontends.hf_cases import captured

    model, module = captured("bert")
    return model, module, token_inputs(model, 3, 7)


@pytest.fixture(scope="module")
def compressed(bert):
    _, base, inputs = bert
    module = base.clone()
    PassManager("sparsify{sparsity=0.9,pattern=block,block=4x4},quantize{targets=ffn}").run(module)
    return module, inputs


def _onnx_inputs(module, inputs):
    out = dict(inputs)
    for v in module.graph.inputs:
        out.setdefault(v.name, torch.zeros_like(inputs["input_ids"]))
    return out


@pytest.mark.parametrize("sparse_storage", [False, True])
def test_onnx_runs_integer_ops_and_carries_annotations(compressed, tmp_path: Path, sparse_storage) -> None:
    module, inputs = compressed
    path = export_onnx(module, tmp_path / "m.onnx", sparse_initializers=sparse_storage)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeMatMul" in ops
    doc = read_annotations(model)
    parts = {p["param"]: (e, p) for e in doc["initializers"] for p in e["parts"]}
    sparse = [n for n, p in module.params.items() if "sparsity" in p.attrs]
    assert set(parts) == set(sparse)  # every sparse weight found, packed q/k/v included
    entry, part = parts[UP]
    assert entry["transposed"] and part["block_in_storage"] == [4, 4]
    assert part["density"] == module.params[UP].attrs["sparsity"].density
    assert (len(model.graph.sparse_initializer) > 0) == sparse_storage
    assert {e["storage"] for e in doc["initializers"]} == (
        {"sparse_initializer"} if sparse_storage else {"dense"})
    got = OnnxModule(path)(**_onnx_inputs(module, inputs))
    ref = optc.to_eager(module)(**inputs)
    for name in ref:
        assert (got[name] - ref[name]).abs().max() <= 1e-4
    info = summarize_onnx(str(path))
    assert info["ops"]["com.microsoft.DynamicQuantizeMatMul"] == 4
    assert info["sparsity"] == doc


def test_n_m_groups_are_annotated_along_the_stored_axis(bert, tmp_path: Path) -> None:
    module = bert[1].clone()
    PassManager("sparsify{pattern=2:4,targets=up},quantize{targets=up}").run(module)
    model = onnx.load(str(export_onnx(module, tmp_path / "nm.onnx")))
    entry = read_annotations(model)["initializers"][0]
    part = entry["parts"][0]
    assert (part["pattern"], part["n"], part["m"], part["group_axis"]) == ("n:m", 2, 4, 0)
    stored = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == entry["name"]))
    groups = torch.from_numpy(stored.copy()).T.reshape(-1, 4)
    assert ((groups != 0).sum(1) <= 2).all()


def test_torchscript_file_runs_int8(compressed, tmp_path: Path) -> None:
    module, inputs = compressed
    path = export_torchscript(module, tmp_path / "m.pt")
    loaded = torch.jit.load(str(path))
    names = [v.name for v in module.graph.inputs]
    full = _onnx_inputs(module, inputs)
    got = loaded(*[full[n] for n in names])
    ref = optc.to_eager(module)(**inputs)
    assert (got["last_hidden_state"] - ref["last_hidden_state"]).abs().max() <= 1e-5


def test_artifact_stores_sparse_weights_compressed_and_loads_them_bit_exactly(compressed, tmp_path: Path) -> None:
    module, inputs = compressed
    module = module.clone()
    w = module.params[QUERY].data.clone()
    w[w == 0] = 0.0
    w[0, 0] = -0.0 if w[0, 0] == 0 else w[0, 0]  # a negative zero must survive
    nz = (w == 0).nonzero()[0]
    w[nz[0], nz[1]] = -0.0
    module.params[QUERY].data = w
    dense_dir, sparse_dir = tmp_path / "dense", tmp_path / "sparse"
    plain = module.clone()
    for p in plain.params.values():
        p.attrs.pop("sparsity", None)
    optc.save(plain, dense_dir)
    optc.save(module, sparse_dir)
    size = lambda d: (d / "weights.safetensors").stat().st_size  # noqa: E731
    assert size(sparse_dir) < 0.5 * size(dense_dir)
    back = load_module(sparse_dir)
    for name, p in module.params.items():
        q = back.params[name].data
        assert q.dtype == p.data.dtype and q.shape == p.data.shape
        bits = {1: torch.int8, 4: torch.int32, 8: torch.int64}[q.element_size()]
        assert torch.equal(q.view(bits), p.data.view(bits)), name
    assert back.params[QUERY].attrs == module.params[QUERY].attrs


def test_damaged_compressed_weights_are_an_artifact_error(compressed, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from optc.errors import ArtifactError

    module, _ = compressed
    optc.save(module, tmp_path / "a")
    path = tmp_path / "a" / "weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    tensors[QUERY + "#values"] = tensors[QUERY + "#values"][:-1]
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(ArtifactError, match="damaged compressed sparse weights"):
        load_module(tmp_path / "a")


def test_inspection_shows_density_and_precision_per_layer(bert, compressed) -> None:
    module, _ = compressed
    info = summarize(module)
    assert [(round(x["density"], 2), x["precision"]) for x in info["layers"]] == [(0.1, "f32+i8")] * 2
    assert "density" in format_summary(info) and "f32+i8" in format_summary(info)
    d = diff_modules(bert[1], module)
    assert d["layers"][0]["precision"] == ["f32", "f32+i8"]
    assert d["layers"][0]["density"][0] == 1.0
