"""The all-architectures coverage mode: which classes it enumerates, how it shrinks a config,
a real family checked end to end, and a hang or a crash reported as one row."""

from __future__ import annotations

import json
import time

import pytest

from optc.tools.checks import coverage_all


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    return coverage_all.text_families()


def test_text_families_are_chosen_by_input_not_by_name(families) -> None:
    assert families["bert"] == "BertModel" and families["llama"] == "LlamaModel"
    # vision, audio and multimodal classes declare other inputs or modalities
    for other in ("vit", "whisper", "wav2vec2", "llava", "clip"):
        assert other not in families
    assert len(families) > 100


def test_tiny_config_shrinks_every_size_generically() -> None:
    gpt2 = coverage_all.tiny_config("gpt2")  # its own names: n_embd, n_layer, n_head
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.vocab_size) == (32, 2, 4, 256)
    assert gpt2.eos_token_id < 256 and gpt2.n_positions <= 128
    llama = coverage_all.tiny_config("llama")
    assert (llama.hidden_size, llama.intermediate_size, llama.num_key_value_heads) == (32, 64, 4)
    t5 = coverage_all.tiny_config("t5")
    assert (t5.d_model, t5.d_kv, t5.d_ff, t5.num_layers, t5.num_decoder_layers) == (32, 8, 64, 2, 2)


def test_a_family_is_checked_end_to_end() -> None:
    cells = coverage_all.check_text_family("bert", "BertModel")
    assert cells == {"class": "BertModel", "capture": "yes", "raised": "yes",
                     "prune-heads": "yes", "backends": "yes"}


def test_a_hang_or_a_crash_is_one_row(monkeypatch) -> None:
    monkeypatch.setattr(coverage_all, "check_text_family", lambda *a, **k: time.sleep(60))
    row = coverage_all._run_one("bert", "BertModel", timeout=1)
    assert row["capture"] == "no: timed out after 1 s" and row["raised"] == "-"
    monkeypatch.setattr(coverage_all, "check_text_family", lambda *a, **k: 1 / 0)
    crashed = coverage_all._run_one("bert", "BertModel", timeout=30)
    assert crashed["capture"].startswith("no: ZeroDivisionError")

    def raised_then_hangs(model_type, class_name, progress):
        progress({"class": class_name, "capture": "yes", "raised": "yes", "next": "prune-heads"})
        time.sleep(60)

    monkeypatch.setattr(coverage_all, "check_text_family", raised_then_hangs)
    row = coverage_all._run_one("bert", "BertModel", timeout=3)
    assert row == {"class": "BertModel", "capture": "yes", "raised": "yes",
                   "prune-heads": "no: timed out after 3 s", "backends": "-"}
    summary = coverage_all.summary({"bert": crashed, "gpt2": {c: "yes" for c in coverage_all.COLUMNS}})
    assert "attention raised in every layer 1/2 (50%)" in summary


def test_a_recorded_run_is_tabled_with_its_share(tmp_path, capsys) -> None:
    from optc.tools.checks.coverage import main

    path = tmp_path / "rows.jsonl"
    yes = {c: "yes" for c in coverage_all.COLUMNS}
    unbuilt = {"class": "X", "capture": "no: building the tiny model: TypeError: x"}
    path.write_text("".join(json.dumps({"family": f, **row}) + "\n"
                            for f, row in (("bert", yes), ("x", unbuilt), ("gpt2", yes))))
    assert main(["--all-transformers", "--table-from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| x | X | no: building the tiny model: TypeError: x | - | - | - |" in out
    assert "attention raised in every layer 2/3 (67%)" in out
    assert "of the 2 whose tiny model transformers builds and runs: raised 2/2 (100%)" in out
