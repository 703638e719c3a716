"""CLI reliability: the self-check before an output is installed, Ctrl-C at any moment, heads
the checkpoint lacks, --task on artifacts, files that cannot be compiled, and calibration data
that does not fit the model — each one line on stderr with its exit code, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from optc.backends import onnx as onnx_backend
from optc.tests.conftest import TINY
from optc.tools.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, prefix: str = "optc: error:") -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# -- self-check ---------------------------------------------------------------------------------
def _wrong_onnx(monkeypatch) -> None:
    real = onnx_backend.lower_for_onnx

    def wrong(module):  # noqa: ANN001
        result = real(module)
        lowered = result[0] if isinstance(result, tuple) else result  # (module, translations)
        name = next(n for n in lowered.params if n.endswith("pooler.dense.bias"))
        lowered.params[name].data = lowered.params[name].data + 1.0
        return result

    monkeypatch.setattr(onnx_backend, "lower_for_onnx", wrong)


def test_wrong_output_exit_6_and_nothing_written(capsys, artifact: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    _wrong_onnx(monkeypatch)
    out = tmp_path / "m.onnx"
    code, stdout, err = run(capsys, artifact, "--backend", "onnx", "-o", out, "-q")
    assert code == 6
    line = one_line(err)
    assert "onnx self-check" in line and "pooler_output" in line and "differs from the eager IR by" in line
    assert stdout == ""
    assert listing(tmp_path) == []


def test_wrong_output_does_not_replace_the_old_one(capsys, artifact: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    _wrong_onnx(monkeypatch)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous build")
    code, _, err = run(capsys, artifact, "--backend", "onnx", "-o", out, "--force", "-q")
    assert code == 6, err
    assert out.read_bytes() == b"previous build"
    assert listing(tmp_path) == ["m.onnx"]


def test_no_check_skips_the_self_check(capsys, artifact: Path, tmp_path: Path, monkeypatch) -> None:
    _wrong_onnx(monkeypatch)
    out = tmp_path / "m.onnx"
    code, _, err = run(capsys, artifact, "--backend", "onnx", "-o", out, "--no-check", "-q")
    assert code == 0, err
    assert listing(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("backend, name", [("eager", "out"), ("torchscript", "out.pt")])
def test_correct_outputs_pass_the_check(capsys, artifact: Path, tmp_path: Path, backend: str,
                                        name: str) -> None:
    code, stdout, err = run(capsys, artifact, "--backend", backend, "-o", tmp_path / name, "-q")
    assert code == 0, err
    assert err == "" and f"wrote {tmp_path / name}" in stdout
    assert listing(tmp_path) == [name]


# -- heads the checkpoint lacks, --head ---------------------------------------------------------
def test_missing_head_is_seeded_warned_and_recorded(model_dir: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        proc = _console(model_dir, "--head", "sequence-classification", "-o", out, "-q",
                        cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        warning = one_line(proc.stderr, prefix="optc: ")
        assert "classifier.weight" in warning and "initialized randomly" in warning
    metas = [json.loads((out / "metadata.json").read_text()) for out in outs]
    assert metas[0]["source"]["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    assert (outs[0] / "weights.safetensors").read_bytes() == (outs[1] / "weights.safetensors").read_bytes()


def test_task_on_an_artifact_is_refused(capsys, artifact: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, artifact, "--head", "sequence-classification", "-o", tmp_path / "o", "-q")
    assert code == 3
    assert "head is fixed" in one_line(err)
    assert listing(tmp_path) == []
    code, _, err = run(capsys, artifact, "--head", "base", "-q")  # the head it has: fine
    assert code == 0, err


# -- files that cannot be compiled ---------------------------------------------------------------
def test_torchscript_file_as_model_says_what_it_is(capsys, artifact: Path, tmp_path: Path) -> None:
    pt = tmp_path / "m.pt"
    assert main([str(artifact), "--backend", "torchscript", "-o", str(pt), "-q"]) == 0
    code, _, err = run(capsys, pt, "-o", tmp_path / "again", "-q")
    assert code == 3
    line = one_line(err)
    assert "TorchScript file" in line and "optc bench" in line and "pickle" not in line


# -- calibration data ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-label BERT classifier with a 15-token tokenizer."""
    import transformers as tf

    path = tmp_path_factory.mktemp("cls") / "c"
    torch.manual_seed(0)
    tf.BertForSequenceClassification(tf.BertConfig(**TINY, num_labels=3)).eval().save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film",
                                "is", "good", "bad", "a", "movie", "not", "fun", "very"]) + "\n")
    tf.BertTokenizer(str(vocab)).save_pretrained(path)
    return path


def test_scores_for_a_classifier_exit_3(capsys, classifier_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "sts.tsv"
    data.write_text("sentence1\tsentence2\tscore\nthe film\ta movie\t3.8\nnot fun\tvery bad\t0.2\n")
    code, _, err = run(capsys, classifier_dir, "--passes", "prune-heads{amount=0.25,criterion=taylor}",
                       "--data", data, "-o", tmp_path / "o", "-q")
    assert code == 3
    assert "has 3 labels" in one_line(err)
    assert not (tmp_path / "o").exists()


def test_model_without_tokenizer_exit_3(capsys, artifact: Path, tmp_path: Path) -> None:
    data = tmp_path / "calib.txt"
    data.write_text("one sentence\n")
    code, _, err = run(capsys, artifact, "--passes", "prune-heads{amount=0.25,criterion=taylor}",
                       "--data", data, "-q")
    assert code == 3
    assert "tokenizer=" in one_line(err)


# -- Ctrl-C ---------------------------------------------------------------------------------------
def _console(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-m", "optc", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def import_seconds() -> float:
    """How long ``import optc`` takes in a fresh interpreter here (torch dominates)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import optc.tools.cli.main"], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": ""})
    return time.perf_counter() - start


def _interrupt(args: list[object], cwd: Path, delay: float | None = None,
               when_exists: Path | None = None) -> tuple[int, str]:
    """Start ``python -m optc ARGS``, send SIGINT after ``delay`` seconds or as soon as a
    staging entry appears in ``when_exists``; returns (exit code, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen([sys.executable, "-m", "optc", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    if delay is not None:
        time.sleep(delay)
    else:
        while proc.poll() is None and time.monotonic() < deadline:
            if any(".tmp-" in p.name for p in when_exists.iterdir()):
                break
            time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("moment", [
    "importing", "loading", "capturing", "exporting", "writing",
])
def test_ctrl_c_exits_130_with_one_line_and_no_leftovers(model_dir: Path, tmp_path: Path,
                                                         import_seconds: float, moment: str) -> None:
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    args = [model_dir, "--backend", "onnx", "-o", out_dir / "m.onnx", "-q"]
    delays = {"importing": 0.3, "loading": import_seconds + 0.3, "capturing": import_seconds + 1.5,
              "exporting": import_seconds + 3.0, "writing": None}
    code, err = _interrupt(args, tmp_path, delays[moment], when_exists=out_dir)
    assert "Traceback" not in err
    if code == 0:  # finished before the signal: a complete output, nothing else
        assert listing(out_dir) == ["m.onnx"]
        return
    assert code == 130, err
    assert err == "optc: interrupted\n"
    assert listing(out_dir) == []
