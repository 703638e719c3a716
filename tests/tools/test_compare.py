"""``--compare``: the before/after table of a compilation, and the agreement measures."""

from __future__ import annotations

import json
import re

import pytest
import torch

from optc.tools.cli.main import main
from optc.tools.reports.compare import agreement


def test_agreement_of_logits_counts_equal_argmaxes() -> None:
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.2, 0.1]])
    after = torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.5, 1.0], [0.1, 0.2]])
    m = agreement(before, after, logits=True)
    assert m["argmax"] == pytest.approx(0.5)
    assert m["max_abs"] == pytest.approx(1.5)


def test_agreement_of_token_states_uses_the_mask() -> None:
    before = torch.zeros(2, 3, 2)
    before[:, :, 0] = 1.0
    after = before.clone()
    after[0, 2] = torch.tensor([0.0, 100.0])  # a padded position: ignored
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    m = agreement(before, after, mask)
    assert m["cosine_mean"] == pytest.approx(1.0) and m["cosine_min"] == pytest.approx(1.0)
    after[1, 0] = torch.tensor([0.0, 1.0])  # a real token of row 1 turns by 90 degrees
    m = agreement(before, after, mask)
    expected = torch.nn.functional.cosine_similarity(torch.tensor([1.0, 0.0]),
                                                     torch.tensor([2 / 3, 1 / 3]), dim=0)
    assert m["cosine_min"] == pytest.approx(float(expected), abs=1e-6)
    assert m["cosine_mean"] == pytest.approx((1 + float(expected)) / 2, abs=1e-6)


def test_agreement_refuses_different_shapes() -> None:
    from optc.errors import InputError

    with pytest.raises(InputError, match="differ in shape"):
        agreement(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("backend,suffix", [("onnx", ".onnx"), ("eager", "")])
def test_compare_prints_before_and_after(tmp_path, model_dir, capsys, backend, suffix) -> None:
    out = tmp_path / f"q{suffix}"
    assert main([str(model_dir), "--passes", "prune-neurons{amount=0.5},quantize",
                 "--backend", backend, "-o", str(out), "--compare", "-q", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["comparison"]
    assert report["backend"] == backend and report["batch"] == 1 and report["threads"] == 1
    params = report["parameters"]
    assert params["after"] < params["before"]  # half the FFN neurons are gone
    disk = report["disk_bytes"]
    assert disk["after"] < disk["before"]  # int8 and fewer neurons
    assert report["latency_ms"]["before"] > 0 and report["latency_ms"]["after"] > 0
    states = report["agreement"]["last_hidden_state"]
    assert 0.3 < states["cosine_mean"] < 1.0  # changed by pruning, still related
    assert states["cosine_min"] <= states["cosine_mean"]


def test_compare_text_table(tmp_path, model_dir, capsys) -> None:
    assert main([str(model_dir), "--passes", "quantize", "--backend", "onnx",
                 "-o", str(tmp_path / "q.onnx"), "--compare", "-q"]) == 0
    text = capsys.readouterr().out
    assert "size on disk" in text and "latency (onnx, batch 1" in text
    cosine = re.search(r"last_hidden_state: cosine mean ([0-9.]+)", text)
    assert cosine and 0.99 <= float(cosine.group(1)) <= 1.0  # int8 barely changes the output


def test_compare_needs_an_output(model_dir, capsys) -> None:
    assert main([str(model_dir), "--passes", "quantize", "--compare", "-q"]) == 2
    assert "--compare measures the written output" in capsys.readouterr().err
