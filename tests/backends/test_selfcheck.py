"""The compile-time self-check: what a backend wrote is loaded back, run on example inputs
(padding, batch 1, shortest and long sequences) and compared with the eager IR; an output that
does not load, crashes or disagrees is deleted (an older one stays) and BackendError names it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optc
from optc.backends import onnx as onnx_backend
from optc.backends import torchscript as torchscript_backend
from optc.backends.selfcheck import TOLERANCES, example_inputs, write_checked
from optc.errors import BackendError
from optc.tests.conftest import tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

NAMES = {"eager": "out", "torchscript": "out.pt", "onnx": "out.onnx"}


@pytest.fixture(scope="module")
def module() -> optc.Module:
    return optc.capture(tiny_model("bert"), source={"model": "tiny-bert"})


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_example_inputs_cover_padding_batch_one_and_the_longest_sequence(module):
    cases = example_inputs(module)
    shapes = [tuple(c["input_ids"].shape) for c in cases]
    assert shapes == [(2, 8), (1, 1), (2, 64), (3, 8)]  # tiny BERT: 64 positions, so long = 64
    for case in cases:
        assert {k: v.dtype for k, v in case.items()} == {
            "input_ids": torch.int64, "attention_mask": torch.int64, "token_type_ids": torch.int64}
        assert int(case["input_ids"].max()) < 120  # below the embedding rows
    padded = cases[0]["attention_mask"]
    assert padded[0].all() and not padded[1].all() and padded[1, 0] == 1


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnx"])
def test_a_correct_output_passes_on_every_backend(module, tmp_path, backend):
    report = write_checked(module, backend, tmp_path / NAMES[backend])
    assert listing(tmp_path) == [NAMES[backend]]
    assert report.shapes == [(2, 8), (1, 1), (2, 64), (3, 8)]
    assert set(report.diffs) == {"last_hidden_state", "pooler_output"}
    assert report.worst() <= TOLERANCES[backend]


def _wrong_lowering(monkeypatch):
    """Make the ONNX backend write a valid model whose output is wrong (a perturbed weight)."""
    real = onnx_backend.lower_for_onnx

    def wrong(module):  # noqa: ANN001
        lowered, translations = real(module)
        name = next(n for n in lowered.params if n.endswith("pooler.dense.weight"))
        lowered.params[name].data = lowered.params[name].data * 1.5
        return lowered, translations

    monkeypatch.setattr(onnx_backend, "lower_for_onnx", wrong)


def test_a_wrong_onnx_output_is_removed_and_the_old_one_kept(module, tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"the previous build")
    _wrong_lowering(monkeypatch)
    with pytest.raises(BackendError) as info:
        write_checked(module, "onnx", target, force=True)
    message = str(info.value)
    assert message.startswith(f"onnx self-check of '{target}' failed: output 'pooler_output' "
                              "differs from the eager IR by ")
    assert "\n" not in message and info.value.exit_code == 6
    assert target.read_bytes() == b"the previous build"
    assert listing(tmp_path) == ["out.onnx"]


def test_an_output_that_does_not_load_is_removed(module, tmp_path, monkeypatch):
    def garbage(module, path, *, force=False):  # noqa: ANN001
        Path(path).write_bytes(b"PK\x03\x04 not a TorchScript archive")
        return Path(path)

    monkeypatch.setattr(torchscript_backend, "export_torchscript", garbage)
    with pytest.raises(BackendError, match="torchscript self-check of .* the output does not load"):
        write_checked(module, "torchscript", tmp_path / "out.pt")
    assert listing(tmp_path) == []


def test_an_output_that_crashes_is_removed(module, tmp_path, monkeypatch):
    class Crash(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            if input_ids.shape[0] > 0:
                raise RuntimeError("this build always fails")
            return {"last_hidden_state": input_ids.float(), "pooler_output": input_ids.float()}

    def crashing(module, path, *, force=False):  # noqa: ANN001
        torch.jit.script(Crash()).save(str(path))
        return Path(path)

    monkeypatch.setattr(torchscript_backend, "export_torchscript", crashing)
    with pytest.raises(BackendError, match="crashes at batch 2, seq 8: .*this build always fails"):
        write_checked(module, "torchscript", tmp_path / "out.pt")
    assert listing(tmp_path) == []


def test_a_wrong_artifact_is_removed(module, tmp_path, monkeypatch):
    import optc.artifacts as artifacts

    real = artifacts._weights_for_saving

    def shifted(m):  # noqa: ANN001
        return {k: v + 0.5 if k.endswith("pooler.dense.bias") else v for k, v in real(m).items()}

    monkeypatch.setattr(artifacts, "_weights_for_saving", shifted)
    with pytest.raises(BackendError, match="eager self-check .* output 'pooler_output' differs"):
        write_checked(module, "eager", tmp_path / "out")
    assert listing(tmp_path) == []


def test_check_can_be_skipped(module, tmp_path, monkeypatch):
    _wrong_lowering(monkeypatch)
    assert write_checked(module, "onnx", tmp_path / "out.onnx", check=False) is None
    assert listing(tmp_path) == ["out.onnx"]
