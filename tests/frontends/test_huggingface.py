"""load_model: local directories and hub ids (from the offline cache), never unpickling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import optc
from optc.errors import InputError
from optc.frontends.huggingface import load_model
from optc.tests.conftest import tiny_model, token_inputs

REVISION = "0123456789abcdef0123456789abcdef01234567"
"""The commit hash of the snapshot in the fake hub cache."""


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def saved(bert, tmp_path_factory) -> Path:
    """A tiny BERT saved with save_pretrained (safetensors)."""
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    bert.save_pretrained(path, safe_serialization=True)
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_local_directory_loads(bert, saved):
    assert (saved / "model.safetensors").is_file()
    model, source = load_model(saved)
    assert type(model).__name__ == "BertModel" and not model.training
    assert same_weights(model, bert)
    assert source == {"model": str(saved), "class": "BertModel", "model_type": "bert",
                      "tokenizer": str(saved.resolve())}
    model, _ = load_model(str(saved))  # a string path works the same
    assert same_weights(model, bert)


def test_safetensors_file_next_to_its_config_loads_the_model(bert, saved):
    model, source = load_model(saved / "model.safetensors")
    assert same_weights(model, bert)
    assert source["model"] == str(saved)


def test_ambiguous_safetensors_file_is_refused(saved, tmp_path):
    import shutil

    copy = tmp_path / "two"
    shutil.copytree(saved, copy)
    shutil.copy(copy / "model.safetensors", copy / "other.safetensors")
    with pytest.raises(InputError, match="several safetensors"):
        load_model(copy / "other.safetensors")


def test_task_selects_the_head(saved):
    model, source = load_model(saved, task="sequence-classification")
    assert source["class"] == "BertForSequenceClassification"
    module = optc.capture(model, source=source)
    assert list(module.graph.outputs) == ["logits"]
    assert module.meta["source"]["model"] == str(saved)
    inputs = token_inputs(model, 2, 6)
    with torch.no_grad():
        want = model(**inputs).logits
    got = optc.to_eager(module)(**inputs)["logits"]
    assert got.shape == (2, model.config.num_labels)
    assert (got - want).abs().max().item() <= 1e-5


def test_unknown_task_is_an_input_error(saved):
    with pytest.raises(InputError, match="unknown task 'summarize'.*sequence-classification"):
        load_model(saved, task="summarize")


def test_capture_accepts_a_model_directory(saved):
    module = optc.capture(saved)
    assert module.meta["source"]["model"] == str(saved)
    assert sum(n.op == "attention" for n in module.graph) == 2


def test_pickle_only_directory_is_refused(bert, tmp_path):
    bert.config.save_pretrained(tmp_path)
    torch.save(bert.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError) as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "pickle" in message and "pytorch_model.bin" in message
    assert "save_pretrained" in message and "safe_serialization=True" in message


def test_pickle_file_is_refused(bert, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(bert.state_dict(), path)
    with pytest.raises(InputError, match="pickle"):
        load_model(path)


def test_directory_without_config_is_refused(saved, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path)


def test_directory_with_broken_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_model(tmp_path)


def test_directory_without_weights_is_refused(bert, tmp_path):
    bert.config.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="no model.safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize("path", ["/nonexistent/optc/model", "./no-such-model", "a/b/c"])
def test_nonexistent_path_is_an_input_error(path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(path)


@pytest.fixture
def hub_cache(saved, tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache holding ``optc-test/tiny-bert`` (huggingface_hub layout)."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--optc-test--tiny-bert"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((saved / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the environment once, at import: set the values it uses.
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hub_id_loads_offline_from_the_cache(bert, hub_cache, monkeypatch):
    monkeypatch.chdir(hub_cache)  # no local directory shadows the id
    model, source = load_model("optc-test/tiny-bert")
    assert type(model).__name__ == "BertModel"
    assert same_weights(model, bert)
    assert source["model"] == "optc-test/tiny-bert"
    model, source = load_model("optc-test/tiny-bert", task="sequence-classification")
    assert source["class"] == "BertForSequenceClassification"


def test_unknown_hub_id_offline_fails_fast(hub_cache):
    start = time.perf_counter()
    with pytest.raises(InputError, match="cannot load model 'optc-test/no-such-model'"):
        load_model("optc-test/no-such-model")
    assert time.perf_counter() - start < 5


# -- heads the checkpoint lacks -----------------------------------------------------------------
def test_missing_head_is_seeded_recorded_and_warned(saved, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="optc"):
        first, source = load_model(saved, task="sequence-classification")
    warnings = [r for r in caplog.records if r.name == "optc"]
    second, again = load_model(saved, task="sequence-classification")
    assert same_weights(first, second)  # two compiles give the same model
    assert source["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    assert again == source
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "classifier.weight" in warnings[0].getMessage()
    module = optc.capture(first, source=source)
    assert module.meta["source"]["newly_initialized"] == ["classifier.bias", "classifier.weight"]


def test_loading_leaves_the_global_rng_alone(saved):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(saved, task="question-answering")
    assert torch.equal(torch.rand(3), expected)


def test_complete_checkpoint_records_nothing(saved, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="optc"):
        _, source = load_model(saved)
    assert "newly_initialized" not in source
    assert [r for r in caplog.records if r.name == "optc"] == []


# -- files that are not models ------------------------------------------------------------------
def test_torchscript_file_is_named_as_such(saved, tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    with pytest.raises(InputError) as info:
        load_model(path)
    message = str(info.value)
    assert "TorchScript file" in message and "torch.jit.load" in message and "optc bench" in message
    assert "pickle" not in message


def test_onnx_file_is_named_as_such(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(InputError, match="ONNX model.*optc bench"):
        load_model(path)


# -- tokenizers ---------------------------------------------------------------------------------
def test_directory_without_tokenizer_files_is_refused(saved):
    from optc.frontends.huggingface import load_tokenizer

    with pytest.raises(InputError, match="no tokenizer files.*tokenizer="):
        load_tokenizer(saved)


def test_placeholder_tokenizer_is_refused(saved, tmp_path, monkeypatch):
    import transformers

    from optc.frontends.huggingface import load_tokenizer

    placeholder = transformers.AutoTokenizer.from_pretrained(saved)  # 5 special tokens only
    (tmp_path / "vocab.txt").write_text("")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda ref, **options: placeholder)
    with pytest.raises(InputError, match="only its 5 special tokens.*tokenizer="):
        load_tokenizer(tmp_path)


def test_embedded_tokenizer_loads():
    from optc.frontends.huggingface import load_tokenizer

    assert len(load_tokenizer(None)) > 1000
