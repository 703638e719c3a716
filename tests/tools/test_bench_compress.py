"""tools/bench/compress.py: a few-step smoke run on the tiny model (rows, sizes, the --then
variant), the encoder-size measure, and the training progress line with the hooks' numbers."""

from __future__ import annotations

import io
import re

import pytest

import optc
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.tools.bench.compress import encoder_weight_bytes, main
from optc.tools.cli.train import _StepPrinter
from optc.train import StepInfo, add_task_head


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-compress")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    _, module = tiny_bert()
    module.meta["source"]["tokenizer"] = str(root / "tok")
    add_task_head(module, "text-classification", seed=3)
    optc.save(module, root / "model")
    return root, module


def _rows(text: str) -> dict[str, dict[str, str]]:
    lines = text.strip().splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    rows = {}
    for line in lines[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        rows[row["model"]] = row
    return rows


def test_smoke_run_prints_every_section_with_sizes(tuned, tmp_path, capsys) -> None:
    root, _ = tuned
    code = main(["--model", str(root / "model"), "--task", "text-classification",
                 "--data", str(root / "task"), "--sections", "dense,oneshot,gradual",
                 "--sparsities", "0.8", "--max-steps", "3", "--then", "quantize",
                 "--save-dir", str(tmp_path / "saved"), "-q"])
    assert code == 0
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["dense", "sparsify 0.8", "sparsify 0.8 + quantize", "gradual-prune 0.8",
                          "gradual-prune 0.8 + quantize"]
    assert rows["dense"]["enc size"] == "1.000x" and rows["dense"]["delta"] == "+0.00"
    size = {k: float(r["enc size"].rstrip("x")) for k, r in rows.items()}
    # values + bitmask of 20% fp32 nonzeros: 0.2 + 1/32; int8 values a quarter of that
    assert size["sparsify 0.8"] == pytest.approx(0.2 + 1 / 32, abs=0.01)
    assert size["gradual-prune 0.8"] == pytest.approx(size["sparsify 0.8"], abs=0.005)
    assert size["gradual-prune 0.8 + quantize"] < 0.6 * size["gradual-prune 0.8"]
    assert rows["gradual-prune 0.8"]["sparsity"] == "0.800" == rows["gradual-prune 0.8 + quantize"]["sparsity"]
    assert rows["gradual-prune 0.8"]["steps"] == "3" and rows["sparsify 0.8"]["steps"] == "-"
    saved = optc.load_module(tmp_path / "saved" / "gradual-prune0.8")
    assert saved.meta["pipeline"][-1].startswith("gradual-prune{")
    both = optc.load_module(tmp_path / "saved" / "gradual-prune0.8+quantize")
    assert [s.split("{")[0] for s in both.meta["pipeline"][-2:]] == ["gradual-prune", "quantize"]
    assert all(p.attrs["sparsity"].density == pytest.approx(0.2, abs=1e-3)
               for n, p in saved.params.items() if "sparsity" in p.attrs)


def test_encoder_bytes_of_a_dense_artifact_equal_fp32(tuned) -> None:
    root, module = tuned
    stored, dense = encoder_weight_bytes(module, root / "model" / "weights.safetensors")
    assert stored == dense == 4 * 2 * (4 * 32 * 32 + 2 * 32 * 64)  # 2 layers: q,k,v,o, up, down


def test_progress_line_shows_the_hooks_numbers() -> None:
    stream = io.StringIO()
    _StepPrinter(True, stream)(StepInfo(5, 10, 0.5, 0.25, 1e-4, 0.5, 2.5, {"sparsity": 0.4219}))
    line = stream.getvalue()
    assert "step 5/10" in line and "loss 0.2500  sparsity 0.4219" in line and "ETA" in line


def test_structural_rows_count_removed_weights_against_the_input_model(tuned, tmp_path,
                                                                      capsys) -> None:
    root, module = tuned
    code = main(["--model", str(root / "model"), "--task", "text-classification",
                 "--data", str(root / "task"), "--sections", "dense,l0", "--max-steps", "3",
                 "--l0-spec", "l0-prune{target_flops=0.5}", "--save-dir", str(tmp_path), "-q"])
    assert code == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 3
    _, reference = encoder_weight_bytes(module, root / "model" / "weights.safetensors")
    for label, row in rows.items():
        if label == "dense":
            continue
        saved = tmp_path / label.replace(" ", "")
        stored, own = encoder_weight_bytes(optc.load_module(saved), saved / "weights.safetensors")
        # a smaller dense fp32 encoder: its bytes over the input model's, not over its own
        assert stored == own < 0.8 * reference
        assert float(row["enc size"].rstrip("x")) == pytest.approx(stored / reference, abs=5e-4)
        assert float(row["flops"]) <= 0.5 + 1e-6
