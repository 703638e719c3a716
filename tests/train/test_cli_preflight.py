"""optc finetune / optc eval check their data and options before the model is loaded (a bad
column or label fails in a second, not after loading and capture), read each file once, and
optc eval shows how far it is."""

from __future__ import annotations

import json

import pytest

import optc
from optc.errors import InputError
from optc.tools.cli.train import cmd_eval, cmd_finetune


@pytest.fixture(scope="module")
def classifier(model_dir, task_dir, tmp_path_factory):
    """An artifact recording text-classification (a trained head, as finetune writes it)."""
    from optc.artifacts import save
    from optc.frontends.huggingface import load_model
    from optc.train import add_task_head

    model, source = load_model(str(model_dir))
    module = optc.capture(model, source=source)
    add_task_head(module, "text-classification")
    module.meta["task"]["trained_steps"] = 1
    out = tmp_path_factory.mktemp("cls") / "a"
    save(module, out, extra={"task": module.meta["task"]})
    return out


def _bad_data(tmp_path):
    """Task directories with a missing label column and with an unknown label."""
    column, label = tmp_path / "column", tmp_path / "label"
    for d, header, value in ((column, "text\tgrade", "1"), (label, "text\tlabel", "maybe")):
        d.mkdir()
        for split in ("train", "dev"):
            (d / f"{split}.tsv").write_text(f"{header}\ngood film\t{value}\nbad film\t1\n")
    return column, label


def test_finetune_checks_data_before_loading(model_dir, classifier, tmp_path, no_loading) -> None:
    column, label = _bad_data(tmp_path)
    spec = "text-classification{labels=neg,pos}"
    with pytest.raises(InputError, match="label"):
        cmd_finetune([str(model_dir), "--task", spec, "--data", str(column), "-o",
                      str(tmp_path / "o"), "-q"])
    with pytest.raises(InputError, match="maybe"):
        cmd_finetune([str(model_dir), "--task", spec, "--data", str(label), "-o",
                      str(tmp_path / "o"), "-q"])
    # an artifact's recorded task is read without loading it, and its data checked
    with pytest.raises(InputError, match="maybe"):
        cmd_finetune([str(classifier), "--data", str(label), "-o", str(tmp_path / "o"), "-q"])
    with pytest.raises(InputError, match="does not exist"):
        cmd_finetune([str(model_dir), "--task", spec, "--data", str(tmp_path / "nope"), "-o",
                      str(tmp_path / "o"), "-q"])
    assert not (tmp_path / "o").exists()


def test_eval_checks_task_and_data_before_loading(model_dir, classifier, tmp_path,
                                                  no_loading) -> None:
    column, label = _bad_data(tmp_path)
    with pytest.raises(InputError, match="maybe"):  # the task the artifact records
        cmd_eval([str(classifier), "--data", str(label), "-q"])
    with pytest.raises(InputError, match="label"):
        cmd_eval([str(classifier), "--data", str(column), "-q"])
    with pytest.raises(InputError, match="unknown task 'nope'"):
        cmd_eval([str(model_dir), "--task", "nope", "-q"])
    with pytest.raises(InputError, match="does not fit"):  # other labels than recorded
        cmd_eval([str(classifier), "--task", "mnli", "--data", str(label), "-q"])
    with pytest.raises(InputError, match="maybe"):  # --against is checked first as well
        cmd_eval([str(classifier), "--against", str(classifier), "--data", str(label), "-q"])


def test_recorded_meta_matches_what_loading_gives(classifier, tmp_path) -> None:
    from optc.backends import write_backend
    from optc.backends.record import load_torchscript, read_onnx_record
    from optc.tools.cli.preflight import recorded_meta

    module = optc.load_module(classifier)
    assert recorded_meta(classifier) == module.meta
    write_backend(module, "onnx", tmp_path / "m.onnx")
    write_backend(module, "torchscript", tmp_path / "m.pt")
    from optc.backends.onnx import OnnxModule

    session = OnnxModule(str(tmp_path / "m.onnx")).session
    loaded = read_onnx_record(session.get_modelmeta().custom_metadata_map).meta
    assert recorded_meta(tmp_path / "m.onnx") == loaded and loaded["task"]
    assert recorded_meta(tmp_path / "m.pt") == load_torchscript(tmp_path / "m.pt")[1].meta
    assert recorded_meta(tmp_path / "nothing") == {}


def test_files_read_before_loading_are_parsed_once(task_dir, monkeypatch) -> None:
    from optc.tasks import get_task, reuse_reads
    from optc.tasks import task as task_module

    parsed = []
    real = task_module.read_table

    def counting(file, *args, **kwargs):
        parsed.append(file.name)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(task_module, "read_table", counting)
    task = get_task("text-classification")
    with reuse_reads():
        first = task.read("train", task_dir, val_size=0)
        again = get_task("text-classification").read("val", task_dir)  # an equal task
        assert parsed == ["train.tsv"] and set(again) <= set(first)
    task.read("train", task_dir)
    assert parsed == ["train.tsv", "train.tsv"]  # nothing is kept outside the block


def test_eval_shows_progress_in_a_few_lines(classifier, task_dir, monkeypatch, capsys) -> None:
    from optc.tools.progress import Progress

    monkeypatch.setattr(Progress, "default_delay", 0.0)
    assert cmd_eval([str(classifier), "--data", str(task_dir), "--batch-size", "2",
                     "--against", str(classifier), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["examples"] == 64
    for name in ("text-classification", str(classifier)):
        counts = [line for line in captured.err.splitlines()
                  if line.startswith(f"optc: evaluating {name} (dev): ") and "/64" in line]
        assert 1 <= len(counts) <= 10, captured.err  # 32 batches, at most 10 lines
        assert counts[-1].split(": ")[2].startswith("64/64 examples (100%)")
    assert cmd_eval([str(classifier), "--data", str(task_dir), "-q"]) == 0
    assert "evaluating" not in capsys.readouterr().err  # -q: nothing


def test_progress_counts_on_a_terminal_redraw_one_line() -> None:
    import io

    from optc.tools.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(stream=stream, delay=0.0).counting("evaluating x") as count:
        for done in range(1, 1001):
            count(done, 1000)
    text = stream.getvalue()
    assert text.count("\n") == 1 and "1000/1000 examples (100%)" in text
    assert text.count("\r\033[K") < 100  # redraws are throttled


def test_specialize_checks_data_before_loading(model_dir, classifier, tmp_path,
                                               no_loading) -> None:
    from optc.tools.cli.specialize import cmd_specialize

    column, label = _bad_data(tmp_path)
    out = tmp_path / "s"
    with pytest.raises(InputError, match="maybe"):  # the task the artifact records
        cmd_specialize([str(classifier), "--data", str(label), "-o", str(out), "-q"])
    with pytest.raises(InputError, match="label"):
        cmd_specialize([str(model_dir), "--task", "text-classification{labels=neg,pos}",
                        "--data", str(column), "-o", str(out), "-q"])
    with pytest.raises(InputError, match="maybe"):  # --val-data is read too
        cmd_specialize([str(classifier), "--val-data", str(label / "dev.tsv"), "-o", str(out),
                        "-q"])
    assert not out.exists()
