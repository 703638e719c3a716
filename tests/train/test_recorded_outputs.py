"""Every output carries its task: an artifact, an .onnx, a .pt and a Hugging Face directory
written from a model fine-tuned on a generic CSV task (own columns, named labels, own max
length) are scored by ``optc eval OUT --data D`` alone, with the same metric; the .onnx and .pt
carry their tokenizer's files."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch

import optc
from optc.errors import InputError
from optc.tasks import get_task
from optc.tests.train.conftest import VOCAB, sentences, write_tokenizer
from optc.tools.cli.main import main
from optc.tools.cli.train import cmd_eval, cmd_finetune
from optc.train import task_from_meta, task_meta, task_spec

SPEC = "text-classification{text_column=review,label_column=sentiment,labels=neg,pos}"


def _bert_dir(path, head="BertModel", **options):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64,
                           **options)
    getattr(tf, head)(config).save_pretrained(str(path))
    write_tokenizer(path)
    return path


def _write_csv_task(directory):
    directory.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", 192, 0), ("dev", 48, 1)):
        rows = ["id,review,sentiment"] + [f'{i},"{s}",{("neg", "pos")[y]}'
                                          for i, (s, y) in enumerate(sentences(count, seed))]
        (directory / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return directory


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """(data dir, tokenizer-holding model dir, {backend: output}) of a model fine-tuned on SPEC
    with --max-length 24."""
    root = tmp_path_factory.mktemp("recorded")
    model_dir = _bert_dir(root / "hf")
    data = _write_csv_task(root / "data")
    art = root / "model"
    assert cmd_finetune([str(model_dir), "--task", SPEC, "--data", str(data), "-o", str(art),
                         "--epochs", "4", "--lr", "0.003", "--batch-size", "16",
                         "--max-length", "24", "-q"]) == 0
    written = {"eager": art}
    for backend, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        written[backend] = root / name  # through the CLI's -o, which every backend writes with
        assert main([str(art), "--backend", backend, "-o", str(root / name), "-q"]) == 0
    return data, model_dir, written


def test_artifact_records_the_whole_task_spec(outputs) -> None:
    _, _, written = outputs
    recorded = optc.load_module(written["eager"]).meta["task"]
    assert recorded["spec"] == SPEC and recorded["max_length"] == 24
    assert recorded["labels"] == ["neg", "pos"] and recorded["pooling"] == "pooler"
    assert task_from_meta({"task": recorded}) == get_task(SPEC)


def test_onnx_and_torchscript_carry_task_labels_length_pooling_and_tokenizer(outputs) -> None:
    import onnx

    _, model_dir, written = outputs
    props = {p.key: p.value for p in onnx.load(str(written["onnx"])).metadata_props}
    assert props["optc.task"] == SPEC and props["optc.max_length"] == "24"
    assert json.loads(props["optc.labels"]) == ["neg", "pos"] and props["optc.pooling"] == "pooler"
    assert props["optc.tokenizer"] == str(model_dir.resolve())
    assert json.loads(props["optc.json"])["task"]["spec"] == SPEC
    files = json.loads(props["optc.tokenizer_files"])
    assert files["vocab.txt"]["text"] == (model_dir / "vocab.txt").read_text()
    extra = {"optc.json": "", "optc/tokenizer_files.json": ""}
    torch.jit.load(str(written["torchscript"]), _extra_files=extra)
    record = json.loads(extra["optc.json"])
    assert record["task"]["spec"] == SPEC and record["task"]["max_length"] == 24
    assert record["tokenizer"] == str(model_dir.resolve())
    assert set(json.loads(extra["optc/tokenizer_files.json"])) == set(files)


def test_eval_needs_only_the_output_and_the_data(outputs, capsys) -> None:
    data, model_dir, written = outputs
    scores = {}
    for backend in ("eager", "onnx", "torchscript"):
        assert cmd_eval([str(written[backend]), "--data", str(data), "--json", "-q"]) == 0
        captured = capsys.readouterr()
        out = json.loads(captured.out)
        assert out["task_spec"] == SPEC and out["max_length"] == 24 and out["examples"] == 48
        assert "warning" not in captured.err
        scores[backend] = out["score"]
    assert scores["eager"] == scores["onnx"] == scores["torchscript"]
    assert scores["eager"] > 50  # labels read as neg/pos from the sentiment column


def test_onnx_and_torchscript_are_self_contained(outputs, tmp_path, capsys) -> None:
    """Copied away from the model directory their tokenizer came from, they still score."""
    data, _, written = outputs
    scores = []
    for backend in ("onnx", "torchscript"):
        moved = tmp_path / written[backend].name
        shutil.copyfile(written[backend], moved)
        with _tokenizer_moved_away(outputs):
            assert cmd_eval([str(moved), "--data", str(data), "--json", "-q"]) == 0
        scores.append(json.loads(capsys.readouterr().out)["score"])
    assert scores[0] == scores[1]


@contextlib.contextmanager
def _tokenizer_moved_away(outputs):
    """Renames the model directory the tokenizer was recorded from for the duration."""
    path = outputs[1]
    away = path.with_name(path.name + "-away")
    path.rename(away)
    try:
        yield
    finally:
        away.rename(path)


def test_a_task_with_other_labels_is_refused(outputs) -> None:
    data, _, written = outputs
    other = "text-classification{text_column=review,label_column=sentiment,labels=a,b,c}"
    for backend in ("eager", "onnx", "torchscript"):
        with pytest.raises(InputError, match=r"does not fit .* records task text-classification"
                                             r"\{text_column=review"):
            cmd_eval([str(written[backend]), "--task", other, "--data", str(data), "-q"])


def test_other_columns_or_length_win_with_one_warning_line(outputs, tmp_path, capsys) -> None:
    data, _, written = outputs
    renamed = tmp_path / "data"
    renamed.mkdir()
    for split in ("train", "dev"):
        text = (data / f"{split}.csv").read_text().replace("id,review,", "id,text,", 1)
        (renamed / f"{split}.csv").write_text(text)
    given = "text-classification{label_column=sentiment,labels=neg,pos}"
    assert cmd_eval([str(written["onnx"]), "--task", given, "--data", str(renamed), "--json",
                     "-q", "--max-length", "16"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(lines) == 2
    assert f"--task {given} differs from the task" in lines[0] and SPEC in lines[0]
    assert "--max-length 16 differs from the 24 tokens" in lines[1]
    out = json.loads(captured.out)
    assert out["task_spec"] == given and out["max_length"] == 16 and out["examples"] == 48


def test_a_hugging_face_directory_records_the_task_too(outputs, tmp_path, capsys) -> None:
    """--backend hf writes the task into config.json (optc.task, id2label from its labels)."""
    data = outputs[0]
    source = _bert_dir(tmp_path / "clf", "BertForSequenceClassification", num_labels=2)
    art, exported = tmp_path / "art", tmp_path / "art-hf"
    assert cmd_finetune([str(source), "--task", SPEC, "--data", str(data), "-o", str(art),
                         "--max-steps", "3", "--eval-split", "none", "--max-length", "20",
                         "-q"]) == 0
    assert main([str(art), "--backend", "hf", "-o", str(exported), "-q"]) == 0
    assert f"wrote {exported}:" in capsys.readouterr().out
    config = json.loads((exported / "config.json").read_text())
    assert config["optc"]["task"]["spec"] == SPEC and config["optc"]["task"]["max_length"] == 20
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    scores = []
    for target in (art, exported):
        assert cmd_eval([str(target), "--data", str(data), "--json", "-q"]) == 0
        text = capsys.readouterr().out
        assert text.startswith("{"), text[:300]
        out = json.loads(text)
        assert out["task_spec"] == SPEC and out["max_length"] == 20
        scores.append(out["score"])
    assert scores[0] == scores[1]


def test_task_spec_rebuilds_every_task_exactly() -> None:
    for spec in ("sst2", SPEC, "text-classification{regression=true,pair_column=b}",
                 "text-classification{num_labels=3}", "text-classification{labels=0,1}",
                 "text-classification{metrics=accuracy,f1,main_metric=f1}"):
        task = get_task(spec)
        assert get_task(task_spec(task)) == task
        assert task_spec(task, spec) == spec
        assert task_from_meta({"task": task_meta(task)}) == task
    assert task_spec(get_task("sst2"), "mrpc") == "sst2"  # a given spec must rebuild the task
