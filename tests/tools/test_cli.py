"""The ``optc`` command line: compile, instruments, help, errors (one line, exit code, no
partial output, input untouched), the progress display, and the MiniLM done-when check."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import optc
from optc.artifacts import FORMAT_VERSION
from optc.errors import FrontendError
from optc.ir import collect_problems, parse_module
from optc.tests.conftest import tiny_model, token_inputs
from optc.tools.cli.main import main
from optc.tools.progress import Progress

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5


# -- helpers ------------------------------------------------------------------------------------
def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path (to prove an input is untouched)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_one_error_line(err: str, prefix: str = "optc: error:") -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in err
    return lines[0]


def assert_no_output(out: Path) -> None:
    """No OUT and no temporary/backup siblings left by a failed save."""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()
                 if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-"))]
    assert leftovers == []


def outputs_close(compiled: torch.nn.Module, reference: torch.nn.Module,
                  inputs: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        got = compiled(**inputs)
        want = reference(**inputs)
    assert set(got) == {"last_hidden_state", "pooler_output"}
    for key, value in got.items():
        assert value.shape == want[key].shape, key
        assert (value - want[key]).abs().max().item() <= ATOL, key


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_bert() -> torch.nn.Module:
    return tiny_model("bert")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, hf_bert: torch.nn.Module) -> Path:
    """A tiny random BERT (hidden 64, 2 layers, 4 heads) saved with safetensors."""
    path = tmp_path_factory.mktemp("tiny") / "m"
    hf_bert.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[Path, int, str, str]:
    """``optc MODEL_DIR --passes=dce -o OUT``: (OUT, exit code, stdout, stderr). Do not modify."""
    out = tmp_path_factory.mktemp("compiled") / "out"
    before = snapshot(model_dir)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(model_dir), "--passes=dce", "-o", str(out)])
    assert snapshot(model_dir) == before
    return out, code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def artifact(compiled: tuple[Path, int, str, str]) -> Path:
    return compiled[0]


# -- compile ------------------------------------------------------------------------------------
def test_compile_writes_artifact_with_metadata(compiled, model_dir: Path) -> None:
    out, code, stdout, _ = compiled
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.optc", "weights.safetensors"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "optc-artifact"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["pipeline"] == ["dce"]
    assert meta["backend"] == "eager"
    assert meta["source"]["model"] == str(model_dir)
    assert meta["source"]["class"] == "BertModel"
    assert set(meta["versions"]) == {"optc", "torch", "transformers"}
    assert meta["versions"]["optc"] == optc.__version__
    assert meta["versions"]["torch"] == torch.__version__
    assert f"wrote {out}" in stdout
    assert "dce" in stdout  # the pass table
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_compiled_artifact_matches_hf_model(artifact: Path, hf_bert) -> None:
    compiled_model = optc.load(artifact)
    for batch, seq in ((3, 10), (1, 5)):
        inputs = token_inputs(hf_bert, batch, seq, pad=True)
        assert (inputs["attention_mask"] == 0).any()  # padded rows exercise the mask
        outputs_close(compiled_model, hf_bert, inputs)


def test_load_module_gives_verified_ir(artifact: Path) -> None:
    module = optc.load_module(artifact)
    assert collect_problems(module) == []
    assert module.meta["pipeline"] == ["dce"]
    assert not any(p.data.is_meta for p in module.params.values())


def test_artifact_as_input_accumulates_pipeline(capsys, artifact: Path, hf_bert, tmp_path: Path) -> None:
    before = snapshot(artifact)
    out2 = tmp_path / "out2"
    code, stdout, _ = run(capsys, artifact, "--passes=canonicalize,dce", "-o", out2, "-q")
    assert code == 0, stdout
    assert snapshot(artifact) == before
    meta = json.loads((out2 / "metadata.json").read_text())
    first = json.loads((artifact / "metadata.json").read_text())
    assert meta["pipeline"] == ["dce", "canonicalize", "dce"]
    assert meta["source"] == first["source"]
    outputs_close(optc.load(out2), hf_bert, token_inputs(hf_bert, 2, 7))


def test_no_output_writes_nothing(capsys, artifact: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = snapshot(artifact)
    code, stdout, err = run(capsys, artifact, "--passes=dce", "-q")
    assert code == 0
    assert err == ""
    assert "compiled (no -o given, nothing written)" in stdout
    assert "parameters" in stdout and "nodes" in stdout
    assert list(tmp_path.iterdir()) == []
    assert snapshot(artifact) == before


def test_json_report(capsys, artifact: Path) -> None:
    spec = "prune-heads{heads=0:0},canonicalize,dce{keep_params=true}"
    code, stdout, _ = run(capsys, artifact, f"--passes={spec}", "--json", "-q")
    assert code == 0
    report = json.loads(stdout)
    assert report["output"] is None
    # one head of a hidden-64, 4-head layer: q/k/v rows and biases (3 * (16*64 + 16)) and
    # 16 output-projection columns of 64 rows
    head = 3 * (16 * 64 + 16) + 64 * 16
    assert report["parameters"] == optc.load_module(artifact).num_parameters() - head
    assert [p["pass"] for p in report["passes"]] == ["prune-heads{heads=0:0}", "canonicalize",
                                                     "dce{keep_params=true}"]
    assert [p["modified"] for p in report["passes"]] == [True, False, False]
    assert report["passes"][0]["stats"]["heads_removed"] == 1
    assert report["passes"][0]["stats"]["params_removed"] == head
    assert all(record["seconds"] > 0 for record in report["passes"])


def test_print_after_all_goes_to_stderr(capsys, artifact: Path) -> None:
    code, stdout, err = run(capsys, artifact, "--passes=canonicalize,dce", "--print-after-all", "-q")
    assert code == 0
    assert "IR after canonicalize (pass 1)" in err
    assert "IR after dce (pass 2)" in err
    assert err.index("IR after canonicalize") < err.index("IR after dce")
    assert err.count("module @") == 2
    assert "module @" not in stdout


def test_dump_dir_writes_numbered_parseable_files(capsys, artifact: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump" / "nested"  # created on demand
    code, _, _ = run(capsys, artifact, "--passes=canonicalize,dce", "--dump-dir", dump, "-q")
    assert code == 0
    names = sorted(p.name for p in dump.iterdir())
    assert names == ["00-input.optc", "01-canonicalize.optc", "02-dce.optc"]
    for name in names:
        module = parse_module((dump / name).read_text())
        assert module.name == "BertModel"
        assert len(module.graph) > 0


@pytest.mark.parametrize("command", [[], ["inspect"], ["passes"]], ids=["compile", "inspect", "passes"])
def test_help_exits_zero(capsys, command: list[str]) -> None:
    code, stdout, err = run(capsys, *command, "--help")
    assert code == 0
    assert stdout.startswith("usage: optc")
    assert "exit codes" in stdout
    assert err == ""


def test_version(capsys) -> None:
    code, stdout, _ = run(capsys, "--version")
    assert code == 0
    assert stdout.strip() == f"optc {optc.__version__}"


# -- optc passes --------------------------------------------------------------------------------
def test_passes_lists_passes_options_and_docs(capsys) -> None:
    code, stdout, _ = run(capsys, "passes")
    assert code == 0
    lines = stdout.splitlines()
    assert any(line.startswith("canonicalize ") for line in lines)
    dce = next(i for i, line in enumerate(lines) if line.startswith("dce "))
    assert "Remove nodes whose results are unused" in lines[dce]
    option = lines[dce + 1]
    assert "keep_params=false" in option and "(bool)" in option
    assert "Keep unreferenced parameters" in option


def test_passes_json(capsys) -> None:
    code, stdout, _ = run(capsys, "passes", "--json")
    assert code == 0
    passes = {p["name"]: p for p in json.loads(stdout)}
    assert {"canonicalize", "dce"} <= set(passes)
    (keep,) = passes["dce"]["options"]
    assert keep == {"name": "keep_params", "type": "bool", "default": "false",
                    "doc": keep["doc"]}
    assert keep["doc"].startswith("Keep unreferenced parameters")
    assert passes["dce"]["summary"].startswith("Remove nodes")


# -- errors: one line, exit code, no partial output, input untouched ---------------------------
@pytest.mark.parametrize(("spec", "needle"), [
    ("bogus", "valid passes: canonicalize, dce"),
    ("dce{foo=1}", "valid options: keep_params"),
    ("dce{keep_params=maybe}", "'maybe' is not a boolean"),
    ("dce{keep_params=true", "missing '}'"),
    ("dce,,canonicalize", "empty pass name"),
], ids=["unknown-pass", "unknown-option", "bad-value", "unbalanced", "empty-name"])
def test_bad_spec_exit_2(capsys, model_dir: Path, tmp_path: Path, spec: str, needle: str) -> None:
    before = snapshot(model_dir)
    out = tmp_path / "OUT"
    code, stdout, err = run(capsys, model_dir, f"--passes={spec}", "-o", out)
    assert code == 2
    assert needle in assert_one_error_line(err)
    assert stdout == ""
    assert_no_output(out)
    assert snapshot(model_dir) == before


def test_missing_model_path_exit_3(capsys, tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    code, _, err = run(capsys, tmp_path / "no-such-model", "-o", out, "-q")
    assert code == 3
    assert "does not exist" in assert_one_error_line(err)
    assert_no_output(out)


def test_directory_without_config_exit_3(capsys, model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "noconfig"
    src.mkdir()
    shutil.copy(model_dir / "model.safetensors", src)
    before = snapshot(src)
    out = tmp_path / "OUT"
    code, _, err = run(capsys, src, "-o", out, "-q")
    assert code == 3
    assert "no config.json" in assert_one_error_line(err)
    assert_no_output(out)
    assert snapshot(src) == before


def test_unreadable_model_dir_exit_3(capsys, model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "locked"
    shutil.copytree(model_dir, src)
    before = snapshot(src)
    src.chmod(0)
    try:
        if os.access(src, os.R_OK):
            pytest.skip("running with privileges that bypass directory permissions")
        out = tmp_path / "OUT"
        code, _, err = run(capsys, src, "-o", out, "-q")
        assert code == 3
        assert "permission denied" in assert_one_error_line(err)
        assert_no_output(out)
    finally:
        src.chmod(0o755)
    assert snapshot(src) == before


def test_pickle_only_checkpoint_refused_exit_3(capsys, hf_bert, model_dir: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(model_dir / "config.json", src)
    torch.save(hf_bert.state_dict(), src / "pytorch_model.bin")
    before = snapshot(src)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("optc must never unpickle a model file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    out = tmp_path / "OUT"
    code, _, err = run(capsys, src, "-o", out, "-q")
    assert code == 3
    line = assert_one_error_line(err)
    assert "pytorch_model.bin" in line and "never unpickles" in line
    assert_no_output(out)
    assert snapshot(src) == before


def test_corrupted_artifact_weights_exit_3(capsys, artifact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(broken)
    out = tmp_path / "OUT"
    code, _, err = run(capsys, broken, "--passes=dce", "-o", out, "-q")
    assert code == 3
    assert "weights.safetensors" in assert_one_error_line(err)
    assert_no_output(out)
    assert snapshot(broken) == before


def test_corrupted_model_safetensors_exit_3(capsys, model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "truncated"
    shutil.copytree(model_dir, src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "OUT"
    code, _, err = run(capsys, src, "-o", out, "-q")
    assert_one_error_line(err)
    assert code == 3
    assert_no_output(out)


def test_output_exists_exit_4_then_force_replaces(capsys, artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    shutil.copytree(artifact, out)
    (out / "model.optc").write_text("module @old {}\n")
    code, _, err = run(capsys, artifact, "--passes=dce", "-o", out, "-q")
    assert code == 4
    assert "--force" in assert_one_error_line(err)
    assert (out / "model.optc").read_text() == "module @old {}\n"

    code, _, err = run(capsys, artifact, "--passes=dce", "-o", out, "--force", "-q")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.optc", "weights.safetensors"]
    assert optc.load_module(out).meta["pipeline"] == ["dce", "dce"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT"]


def test_output_in_missing_directory_exit_4(capsys, artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "OUT"
    code, _, err = run(capsys, artifact, "-o", out, "-q")
    assert code == 4
    assert "does not exist" in assert_one_error_line(err)
    assert not out.parent.exists()


def test_unwritable_output_directory_exit_4(capsys, artifact: Path, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running with privileges that bypass directory permissions")
        out = parent / "OUT"
        code, _, err = run(capsys, artifact, "-o", out, "-q")
        assert code == 4
        assert "not writable" in assert_one_error_line(err)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_failed_save_leaves_nothing_exit_4(capsys, artifact: Path, tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = tmp_path / "OUT"
    code, _, err = run(capsys, artifact, "-o", out, "-q")
    assert code == 4
    assert "No space left on device" in assert_one_error_line(err)
    assert_no_output(out)


def test_internal_error_is_one_line_exit_1(capsys, artifact: Path, tmp_path: Path, monkeypatch) -> None:
    from optc.passes.manager import PassManager

    def explode(self, module, ctx=None):
        raise RuntimeError("kaboom\nsecond line of detail")

    monkeypatch.setattr(PassManager, "run", explode)
    out = tmp_path / "OUT"
    code, stdout, err = run(capsys, artifact, "--passes=dce", "-o", out, "-q")
    assert code == 1
    line = assert_one_error_line(err, prefix="optc: internal error:")
    assert "RuntimeError: kaboom" in line and "--traceback" in line
    assert "second line" not in err
    assert stdout == ""
    assert_no_output(out)
    with pytest.raises(RuntimeError, match="kaboom"):
        main([str(artifact), "--passes=dce", "-o", str(out), "-q", "--traceback"])
    assert_no_output(out)


def test_inspect_bad_seq_exit_2(capsys, artifact: Path) -> None:
    code, stdout, err = run(capsys, "inspect", artifact, "--seq", "0")
    assert code == 2
    assert "--seq" in assert_one_error_line(err)
    assert stdout == ""


def test_unknown_flag_exit_2(capsys) -> None:
    code, _, err = run(capsys, "--no-such-flag")
    assert code == 2
    assert "--no-such-flag" in assert_one_error_line(err)


def test_dump_dir_that_is_a_file_exit_4(capsys, artifact: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.write_text("a file, not a directory")
    out = tmp_path / "OUT"
    code, _, err = run(capsys, artifact, "--dump-dir", dump, "-o", out, "-q")
    assert_no_output(out)
    assert_one_error_line(err)
    assert code == 4


def test_slow_failing_step_still_prints_one_line(capsys, model_dir: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    capture_module = importlib.import_module("optc.frontends.capture")  # the package re-exports
    # a function of the same name, so ``import optc.frontends.capture`` would give the function

    def slow_failure(model, *args, **kwargs):
        time.sleep(1.05)  # longer than the progress display's 1 s delay
        raise FrontendError("cannot capture this model")

    monkeypatch.setattr(capture_module, "capture", slow_failure)
    code, _, err = run(capsys, model_dir, "-o", tmp_path / "OUT")  # progress enabled
    assert code == 3
    assert_one_error_line(err)


# -- the real console: subprocess ---------------------------------------------------------------
def _console(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-m", "optc", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["unknown-pass", "pickle-only", "output-exists"])
def test_console_error_is_one_line(case: str, hf_bert, model_dir: Path, artifact: Path,
                                   tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    if case == "unknown-pass":
        args, want = [model_dir, "--passes=dce,frobnicate", "-o", out], 2
    elif case == "pickle-only":
        src = tmp_path / "pickled"
        src.mkdir()
        shutil.copy(model_dir / "config.json", src)
        torch.save(hf_bert.state_dict(), src / "pytorch_model.bin")
        args, want = [src, "-o", out], 3
    else:
        shutil.copytree(artifact, out)
        args, want = [artifact, "-o", out], 4
    watched = args[0]
    before = snapshot(watched)
    proc = _console(*args, cwd=tmp_path)
    assert proc.returncode == want, proc.stderr
    assert_one_error_line(proc.stderr)
    assert proc.stdout == ""
    assert snapshot(watched) == before
    if case == "output-exists":
        assert snapshot(out) == snapshot(artifact)
    else:
        assert_no_output(out)


# -- progress display ---------------------------------------------------------------------------
def test_progress_reports_finished_step_on_non_tty() -> None:
    stream = io.StringIO()
    with Progress(stream=stream, delay=0.0).step("x"):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("optc: x: done in ")
    assert lines[0].endswith(" s")
    assert "\r" not in stream.getvalue() and "\033" not in stream.getvalue()


def test_progress_silent_for_short_steps() -> None:
    stream = io.StringIO()
    with Progress(stream=stream, delay=5.0).step("quick"):
        pass
    assert stream.getvalue() == ""


def test_progress_disabled_writes_nothing() -> None:
    stream = io.StringIO()
    with Progress(stream=stream, enabled=False, delay=0.0).step("x"):
        pass
    with pytest.raises(ValueError), Progress(stream=stream, enabled=False, delay=0.0).step("y"):
        raise ValueError("boom")
    assert stream.getvalue() == ""


def test_progress_propagates_errors() -> None:
    stream = io.StringIO()
    with pytest.raises(ValueError, match="boom"), Progress(stream=stream, delay=0.0).step("x"):
        raise ValueError("boom")
    assert "done" not in stream.getvalue()


# -- the done-when check: the embedded MiniLM end to end ----------------------------------------
@pytest.mark.slow
def test_default_minilm_compile_inspect_load(capsys, minilm, tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    code, stdout, err = run(capsys, "-o", out, "-q")
    assert code == 0, err
    assert f"wrote {out}" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["model"] == "all-MiniLM-L6-v2 (embedded)"

    code, stdout, err = run(capsys, "inspect", out, "--json", "-q")
    assert code == 0, err
    info = json.loads(stdout)
    assert [layer["layer"] for layer in info["layers"]] == list(range(6))
    for layer in info["layers"]:
        assert (layer["heads"], layer["head_dim"], layer["ffn"]) == (12, 32, 1536)

    model, _ = minilm
    compiled_model = optc.load(out)
    inputs = token_inputs(model, 4, 16, pad=True)
    with torch.no_grad():
        got = compiled_model(**inputs)
        want = model(**inputs)
    for key in ("last_hidden_state", "pooler_output"):
        assert (got[key] - want[key]).abs().max().item() <= ATOL, key
