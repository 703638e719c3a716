"""The Python API's writers self-check like the CLI: ``write_backend`` and ``optc.save`` load
what they wrote, run it against the eager IR, and on a failure delete it (an existing output
stays) and raise BackendError (the CLI's exit 6); ``check=False`` skips the check."""

from __future__ import annotations

import pytest
import torch

import optc
from optc import artifacts
from optc.backends import onnx as onnx_backend
from optc.backends import write_backend
from optc.errors import BackendError
from optc.tests.conftest import tiny_model


@pytest.fixture(scope="module")
def module() -> optc.Module:
    return optc.capture(tiny_model("bert"))


def _wrong_onnx(monkeypatch) -> None:
    real = onnx_backend.lower_for_onnx

    def wrong(m):  # noqa: ANN001
        result = real(m)
        lowered = result[0] if isinstance(result, tuple) else result
        name = next(n for n in lowered.params if n.endswith("pooler.dense.bias"))
        lowered.params[name].data = lowered.params[name].data + 1.0
        return result

    monkeypatch.setattr(onnx_backend, "lower_for_onnx", wrong)


def _wrong_weights(monkeypatch) -> None:
    real = artifacts._weights_for_saving

    def wrong(m):  # noqa: ANN001
        tensors = real(m)
        name = next(n for n in tensors if n.endswith("pooler.dense.bias"))
        tensors[name] = tensors[name] + 1.0
        return tensors

    monkeypatch.setattr(artifacts, "_weights_for_saving", wrong)


def test_write_backend_deletes_a_wrong_output_and_raises(module, tmp_path, monkeypatch) -> None:
    _wrong_onnx(monkeypatch)
    out = tmp_path / "m.onnx"
    with pytest.raises(BackendError, match="onnx self-check of .*m.onnx.* failed: output "
                                           "'pooler_output' differs") as info:
        write_backend(module, "onnx", out)
    assert info.value.exit_code == 6 and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous")  # an existing output is not replaced by a failed one
    with pytest.raises(BackendError):
        write_backend(module, "onnx", old, force=True)
    assert old.read_bytes() == b"previous"
    assert write_backend(module, "onnx", out, check=False) == out and out.is_file()  # skipped


def test_optc_save_deletes_a_wrong_artifact_and_raises(module, tmp_path, monkeypatch) -> None:
    _wrong_weights(monkeypatch)
    with pytest.raises(BackendError, match="eager self-check of .*art.* failed"):
        optc.save(module, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BackendError, match="eager self-check"):
        write_backend(module, "eager", tmp_path / "art")
    assert list(tmp_path.iterdir()) == []
    path = optc.save(module, tmp_path / "art", check=False)  # skipped: written as asked
    assert (path / "model.optc").is_file()


def test_correct_outputs_are_written(module, tmp_path) -> None:
    art = optc.save(module, tmp_path / "art")
    inputs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    want = optc.to_eager(module)(**inputs)
    got = optc.load(art)(**inputs)
    assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)
    assert write_backend(module, "torchscript", tmp_path / "m.pt").is_file()
