"""The TorchScript backend writes files that ``torch.jit.load`` runs at any batch and sequence size.

Each family is exported once per module, loaded back, and compared with the eager backend and
the Hugging Face model on several (batch, seq) sizes with padding in the attention mask. Writing
is atomic: an existing file needs ``force``, and no temporary file survives an export.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

import optc
from optc.backends.torchscript import export_torchscript, generate_source, to_torchscript
from optc.errors import BackendError, OutputError
from optc.ir.types import SymType, TensorType
from optc.tests.conftest import max_diff, padded_inputs, token_inputs
from optc.tests.frontends.hf_cases import OUTPUTS, SIZES, captured

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

FAMILIES = ["bert", "roberta", "distilbert", "electra", "gpt2"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (HF model, IR module, path of the saved TorchScript file), exported once."""
    root = tmp_path_factory.mktemp("torchscript")
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            model, module = captured(family)
            path = export_torchscript(module, root / f"{family}.pt")
            cache[family] = (model, module, path)
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_file_matches_eager_and_hugging_face_at_dynamic_sizes(exported, family):
    model, module, path = exported(family)
    scripted = torch.jit.load(str(path))
    eager = optc.to_eager(module)
    names = [v.name for v in module.graph.inputs]
    for seed, (batch, seq) in enumerate([*SIZES, (5, 64)]):
        inputs = padded_inputs(model, module, batch, seq, seed)
        with torch.no_grad():
            got = scripted(*[inputs[n] for n in names])
            want = eager(**inputs)
            hf = model(**inputs)
        assert isinstance(got, dict)
        assert list(got) == OUTPUTS[(family, "base")]
        for name, value in got.items():
            assert value.shape == want[name].shape == hf[name].shape, (name, batch, seq)
            assert max_diff(value, want[name]) <= TOLERANCE, (name, batch, seq)
            assert max_diff(value, hf[name]) <= TOLERANCE, (name, batch, seq)


def test_loaded_file_is_not_specialized_to_one_shape(exported):
    model, module, path = exported("bert")
    scripted = torch.jit.load(str(path))
    shapes = set()
    for batch, seq in [(1, 1), (7, 3), (2, 64)]:
        inputs = padded_inputs(model, module, batch, seq, seed=batch)
        with torch.no_grad():
            out = scripted(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        shapes.add(tuple(out["last_hidden_state"].shape))
    assert shapes == {(1, 1, 64), (7, 3, 64), (2, 64, 64)}


def test_generated_source_is_a_scriptable_module(exported):
    _, module, _ = exported("bert")
    src = generate_source(module)
    assert "class OptcModule(torch.nn.Module):" in src
    assert "def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor)" in src
    assert "k_attention(" in src and "k_linear(" in src
    assert src == generate_source(module)  # deterministic
    compile(src, "<generated>", "exec")


def test_topk_attention_agrees_with_eager():
    model, captured_module = captured("bert")
    module = captured_module.clone()
    for node in module.graph:
        if node.op == "attention":
            node.set_attr("kind", "topk")
            node.set_attr("topk", 3)
    optc.verify(module)
    scripted = to_torchscript(module)
    eager = optc.to_eager(module)
    softmax = optc.to_eager(captured_module)
    inputs = padded_inputs(model, module, 3, 11, seed=4)
    with torch.no_grad():
        got = scripted(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        want = eager(**inputs)
        dense = softmax(**inputs)
    for name in want:
        assert max_diff(got[name], want[name]) <= TOLERANCE, name
    assert max_diff(want["last_hidden_state"], dense["last_hidden_state"]) > 1e-3  # topk changed numbers


def test_existing_output_needs_force_and_force_replaces(exported, tmp_path):
    _, module, _ = exported("distilbert")
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a torchscript file")
    with pytest.raises(OutputError, match="already exists"):
        export_torchscript(module, path)
    assert path.read_bytes() == b"not a torchscript file"
    export_torchscript(module, path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    loaded = torch.jit.load(str(path))
    ids = torch.randint(3, 120, (2, 6))
    assert loaded(ids, torch.ones_like(ids))["last_hidden_state"].shape == (2, 6, 64)


def test_missing_output_directory_is_an_output_error(exported, tmp_path):
    _, module, _ = exported("distilbert")
    with pytest.raises(OutputError, match="does not exist"):
        export_torchscript(module, tmp_path / "absent" / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_export_leaves_no_temporary_files(exported, tmp_path, monkeypatch):
    _, module, _ = exported("distilbert")
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))  # where the generated source goes
    export_torchscript(module, out / "model.pt")
    assert [p.name for p in out.iterdir()] == ["model.pt"]
    assert list(system_tmp.iterdir()) == []


def test_failed_export_leaves_no_file(exported, tmp_path, monkeypatch):
    _, module, _ = exported("distilbert")

    def broken_save(obj, f, **kwargs):  # noqa: ANN001 - torch.jit.save's _extra_files too
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_torchscript(module, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("op", ["py.operator.getitem", "frobnicate"])
def test_op_without_torchscript_lowering_is_a_backend_error(op, tmp_path):
    module = captured("distilbert")[1].clone()
    ids = module.graph.inputs[0]
    module.graph.create_node(op, (ids, 0), {}, [TensorType(torch.int64, ("seq",))], names="odd")
    with pytest.raises(BackendError, match=f"torchscript backend cannot lower .*'{op}'"):
        export_torchscript(module, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_aten_op_is_a_backend_error(tmp_path):
    module = captured("distilbert")[1].clone()
    ids = module.graph.inputs[0]
    module.graph.create_node("aten.no_such_op.default", (ids,), {},
                             [TensorType(torch.int64, ("batch", "seq"))], names="odd")
    with pytest.raises(BackendError, match="aten.no_such_op.default"):
        export_torchscript(module, tmp_path / "model.pt")


def test_symbolic_scalar_inputs_are_typed():
    module = optc.Module("scalars")
    x = module.graph.add_input("x", TensorType(torch.float32, ("n",)))
    module.graph.add_input("k", SymType("int"))
    node = module.graph.create_node("aten.mul.Tensor", (x, x), {}, [TensorType(torch.float32, ("n",))])
    module.graph.set_output("y", node.outputs[0])
    assert "def forward(self, x: Tensor, k: int)" in generate_source(module)
    out = to_torchscript(module)(torch.tensor([1.0, 2.0]), 3)
    assert torch.equal(out["y"], torch.tensor([1.0, 4.0]))


def test_weights_without_data_are_a_backend_error(tmp_path):
    text = optc.print_module(captured("distilbert")[1])
    with pytest.raises(BackendError, match="no data"):
        export_torchscript(optc.parse_module(text), tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


# -- command line ---------------------------------------------------------------------------
def test_cli_writes_a_loadable_torchscript_file_and_refuses_to_overwrite(tmp_path, capsys):
    from optc.tools.cli.main import main

    model = captured("bert")[0]
    model_dir = tmp_path / "tiny-bert"
    model.save_pretrained(model_dir)
    out = tmp_path / "out.pt"
    assert main([str(model_dir), "--backend", "torchscript", "-o", str(out), "-q"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    scripted = torch.jit.load(str(out))
    inputs = token_inputs(model, 2, 7)
    types = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        got = scripted(inputs["input_ids"], inputs["attention_mask"], types)
        want = model(**inputs, token_type_ids=types)
    assert list(got) == ["last_hidden_state", "pooler_output"]
    assert max_diff(got["last_hidden_state"], want["last_hidden_state"]) <= TOLERANCE

    before = (out.read_bytes(), out.stat().st_mtime_ns)
    assert main([str(model_dir), "--backend", "torchscript", "-o", str(out), "-q"]) == 4
    assert "already exists" in capsys.readouterr().err
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt", "tiny-bert"]
