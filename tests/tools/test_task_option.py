"""``--task`` names a data task on compile as in optc finetune/eval (it implies its head);
``--head`` names a head alone; the old spelling (``--task sequence-classification``) still
works with a note. Data the passes read is checked before the model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optc.passes.spec import parse_pipeline
from optc.tools.cli.main import main
from optc.tools.cli.task_option import fill_task


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_data_task_implies_its_head_and_is_recorded(capsys, model_dir: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "sst2"
    code, _, err = _run(capsys, model_dir, "--task", "sst2", "-o", out, "-q")
    assert code == 0, err
    meta = json.loads((out / "model.optc").read_text().splitlines()[1][len("  meta "):])
    assert meta["task"]["name"] == "sst2" and meta["task"]["num_labels"] == 2
    assert meta["source"]["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    assert "logits" in (out / "model.optc").read_text()
    # a random head is not scored (optc eval asks to train it first)
    from optc.errors import InputError
    from optc.tools.cli.train import cmd_eval

    with pytest.raises(InputError, match="initialized at random"):
        cmd_eval([str(out), "--data", "x", "-q"])


def test_head_alone_and_the_old_spelling(capsys, model_dir: Path, tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    code, _, err = _run(capsys, model_dir, "--head", "sequence-classification", "-o", new, "-q")
    assert code == 0 and "note" not in err
    code, _, err = _run(capsys, model_dir, "--task", "sequence-classification", "-o", old, "-q")
    assert code == 0
    note = [line for line in err.splitlines() if "note" in line]
    assert len(note) == 1 and "use --head sequence-classification" in note[0]
    assert (new / "weights.safetensors").read_bytes() == (old / "weights.safetensors").read_bytes()
    for out in (new, old):
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["source"]["class"] == "BertForSequenceClassification"
    code, _, err = _run(capsys, model_dir, "--task", "question-answering", "--head", "base", "-q")
    assert code == 2 and "disagree" in err


def test_bad_task_and_head_are_bad_options(capsys, model_dir: Path) -> None:
    code, _, err = _run(capsys, model_dir, "--task", "nope", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown task 'nope'" in err
    code, _, err = _run(capsys, model_dir, "--head", "nope", "-q")
    assert code == 2


def test_a_head_that_does_not_fit_the_task_is_refused(capsys, model_dir: Path,
                                                      no_loading) -> None:
    code, _, err = _run(capsys, model_dir, "--head", "question-answering", "--task", "sst2", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--head question-answering is not the head task sst2 reads" in err


def test_the_task_fills_the_passes_that_read_data() -> None:
    passes = parse_pipeline("finetune{max_steps=1},prune-heads{amount=0.5,criterion=taylor},"
                            "distill{task=mrpc},quantize{mode=static},dce")
    filled = fill_task(passes, "sst2")
    assert filled[0].task == "sst2" and filled[2].task == "mrpc"  # a spec's own task wins
    assert filled[3].task == "sst2"  # quantize{mode=static} calibrates on the task's data
    assert filled[1] is passes[1]  # calibration passes get the task in their context
    assert all(p.data is None for p in filled[:4])  # each reads its task's directory itself


def test_compile_checks_the_passes_data_before_loading(capsys, model_dir: Path, tmp_path: Path,
                                                       no_loading) -> None:
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tgrade\na\t1\n")  # no 'label' column
    code, _, err = _run(capsys, model_dir, "--task", "sst2", "--data", data,
                        "--passes", "finetune{max_steps=1}", "-q")
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert "label" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na\tmaybe\n")  # a label sst2 does not have
    code, _, err = _run(capsys, model_dir, "--passes", "finetune{task=sst2,max_steps=1}",
                        "--data", bad, "-q")
    assert code == 3 and "maybe" in err, err
    code, _, err = _run(capsys, model_dir, "--passes",
                        "prune-heads{amount=0.5,criterion=taylor}", "--data", tmp_path / "none.tsv",
                        "-q")
    assert code == 3 and "none.tsv" in err, err


def test_inspect_takes_the_same_task_and_head(capsys, model_dir: Path) -> None:
    code, out, err = _run(capsys, "inspect", model_dir, "--task", "mrpc", "--json", "-q")
    assert code == 0, err
    info = json.loads(out)
    assert "classifier.weight" in info["ir"] and "logits" in info["ir"]  # mrpc's 2-label head
    code, out, err = _run(capsys, "inspect", model_dir, "--head", "question-answering", "--json",
                          "-q")
    assert code == 0 and "qa_outputs" in json.loads(out)["ir"], err
    code, out, err = _run(capsys, "inspect", model_dir, "--task", "question-answering", "--json",
                          "-q")
    assert code == 0 and "qa_outputs" in json.loads(out)["ir"] and "use --head" in err


def test_calibration_data_is_read_as_the_task_reads_it(capsys, model_dir: Path,
                                                       tmp_path: Path) -> None:
    """One reader: a CSV with the user's own columns calibrates a pass when --task names them;
    without a task its header is not one optc recognizes, refused before loading (exit 3)."""
    from optc.tests.train.conftest import write_tokenizer

    write_tokenizer(tmp_path / "tok")
    data = tmp_path / "reviews.csv"
    data.write_text("review,stars\n" + "".join(f'"the film, {w}",{"pos" if i % 2 else "neg"}\n'
                                               for i, w in enumerate("good bad fun not".split())))
    passes = f"drop-layers{{strategy=contribution,count=1,samples=4,tokenizer={tmp_path / 'tok'}}}"
    code, _, err = _run(capsys, model_dir, "--passes", passes, "--data", data, "-q")
    assert code == 3 and "reviews.csv:1: unrecognized CSV header 'review, stars'" in err, err
    task = "text-classification{text_column=review,label_column=stars,labels=neg,pos}"
    out = tmp_path / "out"
    code, _, err = _run(capsys, model_dir, "--task", task, "--passes", passes, "--data", data,
                        "-o", out, "--json")
    assert code == 0, err
    meta = json.loads((out / "model.optc").read_text().splitlines()[1][len("  meta "):])
    (record,) = meta["pass_stats"]
    assert record["modified"] and len(record["stats"]["similarity"].split(",")) == 2
