"""optc finetune / optc eval (tools/cli/train.py) on a tiny model directory."""

from __future__ import annotations

import json

import pytest
import torch

import optc
from optc.artifacts import read_metadata
from optc.errors import InputError, OutputError
from optc.tools.cli.train import cmd_eval, cmd_finetune


@pytest.fixture(scope="module")
def finetuned(model_dir, task_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    code = cmd_finetune([str(model_dir), "--task", "text-classification", "--data", str(task_dir),
                         "-o", str(out), "--epochs", "2", "--lr", "0.003", "--batch-size", "16",
                         "-q"])
    assert code == 0
    return out


def test_finetune_writes_an_artifact_with_task_and_score(finetuned, capsys) -> None:
    meta = read_metadata(finetuned)
    assert meta["task"]["name"] == "text-classification"
    assert meta["label_names"] == ["0", "1"] and meta["metric"] == "accuracy"
    # the best epoch is chosen on the held-out part of train, never on dev (reported only)
    assert meta["eval_split"] == "val" and 0 <= meta["eval_score"] <= 100
    assert meta["pipeline"][-1].startswith("finetune{")
    module = optc.load_module(finetuned)
    assert list(module.graph.outputs) == ["logits"]
    assert module.meta["task"]["eval"]["metrics"]["accuracy"] == meta["eval_score"]
    assert module.meta["task"]["eval"]["split"] == "val"


def test_eval_an_artifact_uses_its_task_and_tokenizer(finetuned, task_dir, capsys) -> None:
    assert cmd_eval([str(finetuned), "--data", str(task_dir), "--split", "val", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "text-classification" and out["examples"] == 29  # 15% of 192
    assert out["score"] == read_metadata(finetuned)["eval_score"]
    assert out["examples_per_second"] > 0
    # scored on the split its checkpoint was chosen on: flagged as optimistic
    assert len(out["selection_warnings"]) == 1 and "(val;" in out["selection_warnings"][0]
    assert cmd_eval([str(finetuned), "--data", str(task_dir), "-q", "--limit", "8"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("text-classification dev: accuracy ") and "(8 examples" in line


def test_eval_onnx_and_torchscript_files_match_the_artifact(finetuned, task_dir, model_dir,
                                                           tmp_path, capsys) -> None:
    from optc.backends import write_backend

    module = optc.load_module(finetuned)
    scores = []
    for backend, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        write_backend(module, backend, tmp_path / name)
        assert cmd_eval([str(tmp_path / name), "--task", "text-classification", "--data",
                         str(task_dir), "--split", "val", "--tokenizer", str(model_dir), "--json",
                         "-q"]) == 0
        scores.append(json.loads(capsys.readouterr().out)["score"])
    assert scores == [read_metadata(finetuned)["eval_score"]] * 2
    bare = module.clone()  # a module that records neither task nor tokenizer
    del bare.meta["task"]
    bare.meta["source"] = {k: v for k, v in bare.meta["source"].items() if k != "tokenizer"}
    write_backend(bare, "onnx", tmp_path / "bare.onnx")
    with pytest.raises(InputError, match="records no task: pass --task"):
        cmd_eval([str(tmp_path / "bare.onnx"), "-q"])
    with pytest.raises(InputError, match="records no tokenizer: pass --tokenizer"):
        cmd_eval([str(tmp_path / "bare.onnx"), "--task", "sst2", "-q"])


def test_eval_a_hugging_face_directory(model_dir, task_dir, tmp_path, capsys) -> None:
    import transformers as tf

    classifier = tmp_path / "classifier"
    tf.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).save_pretrained(str(classifier))
    for f in model_dir.iterdir():
        if "token" in f.name or f.name.startswith("vocab"):
            (classifier / f.name).write_bytes(f.read_bytes())
    assert cmd_eval([str(classifier), "--task", "text-classification", "--data", str(task_dir),
                     "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 64


def test_eval_refuses_a_head_the_checkpoint_lacked(model_dir, task_dir) -> None:
    """A base checkpoint evaluated as a classifier would score a random head."""
    with pytest.raises(InputError, match="initialized at random .*train it first"):
        cmd_eval([str(model_dir), "--task", "text-classification", "--data", str(task_dir), "-q"])


def test_finetune_refuses_existing_output_and_bad_usage(finetuned, model_dir, task_dir,
                                                        capsys) -> None:
    with pytest.raises(OutputError):
        cmd_finetune([str(model_dir), "--task", "sst2", "-o", str(finetuned), "-q"])
    with pytest.raises(SystemExit) as info:
        cmd_finetune([str(model_dir), "--task", "sst2", "-o", "x", "--epochs", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err
    with pytest.raises(InputError, match="unknown task 'nope'"):
        cmd_finetune([str(model_dir), "--task", "nope", "-o", "x"])


def test_finetune_pooling_mean_is_recorded_and_kept(model_dir, task_dir, tmp_path) -> None:
    out = tmp_path / "mean"
    assert cmd_finetune([str(model_dir), "--task", "text-classification", "--data", str(task_dir),
                         "-o", str(out), "--max-steps", "2", "--eval-split", "none",
                         "--pooling", "mean", "-q"]) == 0
    meta = read_metadata(out)
    assert meta["task"]["pooling"] == "mean"
    assert "pooling=mean" in meta["pipeline"][-1]
    module = optc.load_module(out)
    assert "token_sum" in optc.print_module(module) and not module.params.get("pooler.dense.weight")
    # the artifact's head is mean-pooled: asking for cls is refused before any training
    with pytest.raises(InputError, match="already has a head on mean pooling"):
        cmd_finetune([str(out), "--data", str(task_dir), "-o", str(tmp_path / "cls"),
                      "--pooling", "cls", "-q"])
    assert not (tmp_path / "cls").exists()


def test_eval_defaults_to_the_token_limit_the_model_was_fine_tuned_with(finetuned, task_dir,
                                                                        monkeypatch, capsys) -> None:
    from optc.train import trained_max_length

    meta = optc.load_module(finetuned).meta
    # finetune's default, 128, clamped to the tiny model's 64 positions (tasks.limits)
    assert meta["task"]["max_length"] == 64 == trained_max_length(meta)
    assert trained_max_length({"task": {"max_length": True}}) is None
    assert trained_max_length({}) is None
    from optc import tasks

    seen = []
    real = tasks.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_length"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "evaluate", spy)
    assert cmd_eval([str(finetuned), "--data", str(task_dir), "-q", "--limit", "4"]) == 0
    assert cmd_eval([str(finetuned), "--data", str(task_dir), "-q", "--limit", "4",
                     "--max-length", "16"]) == 0
    assert seen == [64, 16]
    assert "--max-length 16 differs from the 64 tokens" in capsys.readouterr().err
    capsys.readouterr()


def test_eval_against_the_base_model_gives_the_change_with_an_interval(
        finetuned, model_dir, task_dir, tmp_path, capsys) -> None:
    from optc.artifacts import save

    module = optc.load_module(finetuned)
    against = ["--against", str(finetuned), "--data", str(task_dir), "-q"]
    assert cmd_eval([str(finetuned), *against, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)["against"]["change"]
    assert same["delta"] == 0 and same["low"] == 0 == same["high"] and not same["significant"]
    worse = module.clone()  # a classifier that always says the first label
    bias = next(n for n in worse.params if n.startswith("classifier") and n.endswith("bias"))
    worse.params[bias].data = torch.tensor([1e4, -1e4])
    save(worse, tmp_path / "worse", extra={"task": module.meta["task"]})
    assert cmd_eval([str(tmp_path / "worse"), *against, "--json", "--resamples", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    change = out["against"]["change"]
    assert change["before"] == out["against"]["score"] and change["after"] == out["score"]
    assert change["delta"] == pytest.approx(out["score"] - out["against"]["score"])
    assert change["low"] <= change["delta"] <= change["high"] and change["resamples"] == 200
    assert cmd_eval([str(tmp_path / "worse"), *against, "--resamples", "200"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"against {finetuned}: accuracy ") and "% CI " in line
    with pytest.raises(SystemExit):
        cmd_eval([str(finetuned), *against, "--confidence", "1"])


def test_a_checkpoint_chosen_on_dev_is_flagged_where_dev_is_reported(model_dir, task_dir, tmp_path,
                                                                       capsys) -> None:
    """--eval-split dev is an explicit choice: recorded, and flagged by optc eval on dev (the
    figure is optimistic) but not on the validation split; optc report flags it too."""
    from optc.tools.reports.report import build_report

    out = tmp_path / "on-dev"
    assert cmd_finetune([str(model_dir), "--task", "text-classification", "--data", str(task_dir),
                         "-o", str(out), "--max-steps", "2", "--eval-split", "dev", "-q"]) == 0
    assert read_metadata(out)["eval_split"] == "dev"
    capsys.readouterr()
    assert cmd_eval([str(out), "--data", str(task_dir), "--json", "-q"]) == 0
    captured = capsys.readouterr()
    warnings = json.loads(captured.out)["selection_warnings"]
    assert len(warnings) == 1 and "checkpoint chosen on the split being reported (dev" in warnings[0]
    assert captured.err.count("checkpoint chosen on the split being reported") == 1
    assert cmd_eval([str(out), "--data", str(task_dir), "--split", "val", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["selection_warnings"] == []
    module = optc.load_module(out)
    data = build_report(module, module.clone(), name="on-dev", baseline_name="base")
    assert sum("checkpoint chosen on the split being reported" in w for w in data["warnings"]) == 2
