"""A Hugging Face directory written by optc's hf backend whose config.json was edited to sizes
that cannot describe the model is bad input (exit 3, one line naming the field), never an
internal error from inside the generated modeling code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import optc
from optc.backends import write_backend
from optc.errors import InputError
from optc.frontends.huggingface import load_model
from optc.tests.conftest import tiny_model
from optc.tools.cli.main import main


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "out"
    write_backend(optc.capture(tiny_model("bert")), "hf", path)
    return path


def _tampered(export: Path, tmp_path: Path, key: str, value: object) -> Path:
    path = tmp_path / "tampered"
    shutil.copytree(export, path)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("key, value, message", [
    ("num_attention_heads_per_layer", [-2, 4], r"num_attention_heads_per_layer\[0\] is -2, which "
     r"must be an integer >= 0"),
    ("intermediate_size_per_layer", [128, 10**11], r"intermediate_size_per_layer\[1\] is "
     r"100000000000, more than the [\d,]+ weights model.safetensors holds"),
    ("num_attention_heads_per_layer", [4, 4, 4], r"num_attention_heads_per_layer must list one "
     r"value per layer \(2\), got 3 entries"),
    ("attention_head_size_per_layer", "16", r"attention_head_size_per_layer must list one value "
     r"per layer \(2\), got \"16\""),
    ("hidden_size", -64, r"hidden_size is -64, which must be an integer >= 1"),
    ("attention_topk_per_layer", [None, 0], r"attention_topk_per_layer\[1\] is 0, which must be "
     r"an integer >= 1"),
    ("intermediate_size_per_layer", [128, 129], r"the sizes in its config.json do not fit the "
     r"weights in model.safetensors"),
], ids=["negative-heads", "huge-ffn", "list-too-long", "not-a-list", "negative-hidden",
        "zero-topk", "plausible-but-wrong"])
def test_tampered_export_is_bad_input(export: Path, tmp_path: Path, key, value, message):
    path = _tampered(export, tmp_path, key, value)
    with pytest.raises(InputError, match=message) as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_tampered_export_exits_3_with_one_line(export: Path, tmp_path: Path, capsys):
    path = _tampered(export, tmp_path, "num_attention_heads_per_layer", [100000, 4])
    capsys.readouterr()
    assert main(["inspect", str(path), "--no-ir", "-q"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("optc: error: ") and err.count("\n") == 1, err
    assert "num_attention_heads_per_layer[0] is 100000" in err
    load_model(export)  # the untouched export still loads
