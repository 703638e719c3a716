"""optc specialize: history and before/after table, an artifact every backend runs, one-line
errors with the right exit code and nothing written."""

from __future__ import annotations

import json

import pytest

import optc
from optc.backends.differential import check_backends
from optc.ir.analysis import module_flops
from optc.tests.search.flip_head import FlipHead  # noqa: F401 (registers test-flip-head)
from optc.tests.train.conftest import tiny_bert
from optc.tools.cli.main import main

FAST = ["--k", "3", "--groups", "3", "-q"]


@pytest.fixture
def artifact(module, tmp_path):
    path = tmp_path / "model"
    optc.save(module, path, extra={"task": module.meta["task"]})
    return path


def test_specialize_writes_a_smaller_model_with_its_history(artifact, task_dir, tmp_path,
                                                            capsys, tokenizer):
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--then", "dce", *FAST])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    assert "accepted" in header and "not worse" in header and "GFLOPs" in header
    assert any("hard attention k=3" in line for line in lines)
    assert "dev accuracy" in printed and "GFLOPs (B1,S128)" in printed and "% CI " in printed
    assert "latency ms (eager)" in printed and "parameters" in printed
    assert "validation accuracy" in printed and "validation loss" in printed
    meta = json.loads((out / "metadata.json").read_text())
    spec = meta["specialization"]
    assert spec["history"] and spec["evaluations"] == len(spec["history"]) + 1
    assert spec["dev_metric_before"] is not None and spec["latency_ms_after"] > 0
    # the validation row measures the written model (dce keeps its function: the last
    # accepted trial's figures, else the input's)
    accepted = [h for h in spec["history"] if h["accepted"]]
    expected = accepted[-1]["mean_loss"] if accepted else spec["baseline_loss"]
    assert spec["val_loss_after"] == pytest.approx(expected, abs=1e-5)
    change = spec["dev_change"]
    assert (change["before"], change["after"]) == (spec["dev_metric_before"],
                                                   spec["dev_metric_after"])
    assert change["low"] <= change["delta"] <= change["high"]
    assert meta["task"]["name"] == "text-classification"
    result = optc.load_module(out)
    assert result.num_parameters() <= optc.load_module(artifact).num_parameters()
    enc = tokenizer(["the movie was good", "a dull plot"], padding=True, return_tensors="pt")
    report = check_backends(result, {k: enc[k] for k in ("input_ids", "attention_mask",
                                                          "token_type_ids")})
    assert report.worst("onnx") <= 1e-5 and report.worst("torchscript") <= 1e-5


def test_specialize_json_and_force(artifact, task_dir, tmp_path, capsys):
    out = tmp_path / "spec"
    args = ["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
            "--kinds", "attention,heads", "--no-dev", "--no-latency", "--json",
            "--keep-pareto", "2", "--sweeps", "2", "--unit-order", "importance",
            "--rule", "metric-loss", "--tolerance", "5", *FAST]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 1 <= summary["sweeps"] <= 2
    pipeline = json.loads((out / "metadata.json").read_text())["pipeline"]
    assert pipeline[-1] == "specialize{rule=metric-loss,tolerance=5,k=3,sweeps=2,unit_order=importance}"
    assert {h["kind"] for h in summary["history"]} <= {"attention", "heads"}
    for point in summary["pareto"]:
        assert optc.load_module(point["path"]).num_parameters() == point["parameters"]
    assert main(args) == 4  # exists
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_rounds_search_the_refitted_result_again(artifact, task_dir, tmp_path, capsys):
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--kinds", "heads,ffn-groups", "--unit-order", "importance", "--rule",
                 "metric-loss", "--tolerance", "100", "--rounds", "2", "--between",
                 "reconstruct{samples=64,batch_size=16}", "--keep-pareto", "1", "--no-dev",
                 "--no-latency", "--json", "--k", "3", "--groups", "3"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "(round 2): loss" in captured.err  # the progress lines say which round
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][0]["between"][0]["stats"]["refitted"] >= 1
    assert {h["round"] for h in summary["history"]} == {1, 2}
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["pipeline"][-1].endswith("unit_order=importance,rounds=2}")
    assert meta["specialization"]["rounds"] == summary["rounds"]
    assert summary["pareto"]
    for point in summary["pareto"]:  # the last round's points, committed on what it searched
        written = optc.load_module(point["path"])
        assert module_flops(written, 128) == point["flops"]
        assert point["flops"] <= summary["rounds"][0]["flops_after"]
    assert main(["specialize", str(artifact), "--data", str(task_dir), "-o",
                 str(tmp_path / "bad"), "--rounds", "2", "--between", "refit", *FAST]) == 2
    assert "unknown pass 'refit'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_refused_refit_is_said_in_one_note(artifact, task_dir, tmp_path, capsys):
    # test-flip-head (conftest): a refit that makes the head confidently wrong
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--kinds", "heads,ffn-groups", "--unit-order", "importance", "--rule",
                 "metric-loss", "--tolerance", "100", "--rounds", "2", "--between",
                 "test-flip-head", "--no-dev", "--no-latency", *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert "note: round 2 accepted nothing and the refit it searched (validation accuracy" \
        in printed and "fails the metric-loss rule" in printed
    spec = json.loads((out / "metadata.json").read_text())["specialization"]
    assert spec["rounds"][0]["between_kept"] is False and not spec["rounds"][1]["accepted"]


def test_then_distill_learns_from_the_model_before_specialization(artifact, task_dir, tmp_path,
                                                                  monkeypatch, capsys):
    import optc.passes.distill as distill_pass

    seen = []
    real = distill_pass.distill
    monkeypatch.setattr(distill_pass, "distill",
                        lambda module, teacher, *a, **kw: (seen.append((module, teacher)),
                                                           real(module, teacher, *a, **kw))[1])
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--then", "distill{max_steps=1,eval_split=none}", "--no-dev", "--no-latency",
                 *FAST])
    assert code == 0, capsys.readouterr().err
    (student, teacher), = seen
    assert teacher.num_parameters() == optc.load_module(artifact).num_parameters()
    assert student.num_parameters() < teacher.num_parameters()


def test_then_reconstruct_refits_toward_the_model_before_specialization(artifact, task_dir,
                                                                        tmp_path, monkeypatch,
                                                                        capsys):
    import optc.passes.reconstruct as reconstruct_pass

    seen = []
    real = reconstruct_pass.refit_block
    monkeypatch.setattr(reconstruct_pass, "refit_block",
                        lambda module, reference, *a: (seen.append((module, reference)),
                                                       real(module, reference, *a))[1])
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--then", "reconstruct{layers=all,samples=32}", "--no-dev", "--no-latency",
                 *FAST])
    assert code == 0, capsys.readouterr().err
    original = optc.load_module(artifact).num_parameters()
    assert seen and all(reference.num_parameters() == original for _, reference in seen)
    assert seen[0][0].num_parameters() < original
    assert optc.load_module(out).num_parameters() == seen[0][0].num_parameters()
    # the validation figures after the refit are the refitted model's, not the search's
    spec = json.loads((out / "metadata.json").read_text())["specialization"]
    accepted = [h for h in spec["history"] if h["accepted"]]
    assert spec["val_loss_after"] != pytest.approx(accepted[-1]["mean_loss"], abs=1e-6)


def test_val_data_searches_the_given_examples(artifact, task_dir, tmp_path, capsys):
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--val-data", str(task_dir / "dev.tsv"), "--no-latency", "--json", *FAST])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["validation_examples"] == 40  # the dev file's, not 15% of train's 200
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["specialization"]["validation"] == {"file": str(task_dir / "dev.tsv")}
    # searched on dev: its validation metric before is the dev metric before
    assert summary["baseline_val_metric"] == pytest.approx(summary["dev_metric_before"])


def test_confirm_holds_out_part_of_the_split_and_says_what_it_kept(artifact, task_dir,
                                                                    tmp_path, capsys):
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--val-size", "0.4", "--confirm", "0.5", "--rule", "metric-loss",
                 "--tolerance", "5", "--no-latency", *FAST])
    printed = capsys.readouterr().out
    assert code == 0, printed
    spec = json.loads((out / "metadata.json").read_text())["specialization"]
    held = spec["confirmation"]
    assert spec["validation_examples"] == 40 and held["examples"] == 40
    line = next(x for x in printed.splitlines() if x.startswith("confirmation"))
    assert line.startswith(f"confirmation on 40 held-out validation examples: kept "
                           f"{held['kept']} of {held['of']} acceptances (input: accuracy "
                           f"{held['baseline_metric']:.2f}; kept: accuracy ")
    # what the search accepted and the confirmation cut add up to the history's acceptances
    cut = [h for h in spec["history"] if h["note"] == "cut by confirmation"]
    assert len(cut) == held["of"] - held["kept"]
    assert len(spec["accepted"]) == held["kept"] > 0


def test_max_flips_guards_every_acceptance(artifact, task_dir, tmp_path, capsys):
    out = tmp_path / "spec"
    code = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out),
                 "--max-flips", "0", "--rule", "metric", "--tolerance", "100", "--no-latency",
                 *FAST[:-1]])
    printed = capsys.readouterr().out
    assert code == 0, printed
    spec = json.loads((out / "metadata.json").read_text())["specialization"]
    assert spec["max_flips"] == 0
    pipeline = json.loads((out / "metadata.json").read_text())["pipeline"]
    assert pipeline[-1] == "specialize{rule=metric,tolerance=100,max_flips=0,k=3}"
    tried = [h for h in spec["history"] if h["mean_loss"] is not None]
    assert tried and [h["accepted"] for h in tried] == [h["flips"] == 0 for h in tried]
    header = next(x for x in printed.splitlines() if x.startswith("step"))
    assert "flips" in header.split()


@pytest.mark.parametrize("extra, code, message", [
    (["--k", "0"], 2, "must be at least 1"),
    (["--kinds", "layers"], 2, "unknown candidate kind 'layers'"),
    (["--val-limit", "5"], 3, "at least 20"),
    (["--task", "text-classification{labels=a,b,c}"], 3, "needs 3"),
    (["--then", "nonsense-pass"], 2, "unknown pass 'nonsense-pass'"),
    (["--val-data", "nowhere/val.tsv"], 3, "data path 'nowhere/val.tsv' does not exist"),
    (["--val-data", "val.tsv", "--seed", "1"], 2, "drop --val-size/--seed"),
    (["--confirm", "1"], 2, "the confirmation share is a fraction in [0, 1), got 1.0"),
    (["--confirm", "0.5"], 3, "15 to search and 15 to confirm"),
    (["--max-flips", "1"], 2, "the largest share of flipped predictions is a fraction in [0, 1)"),
])
def test_bad_input_is_one_line_and_writes_nothing(artifact, task_dir, tmp_path, capsys,
                                                 extra, code, message):
    out = tmp_path / "spec"
    got = main(["specialize", str(artifact), "--data", str(task_dir), "-o", str(out), "-q",
                "--no-latency", *extra])
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_model_without_a_task_head_is_refused(tmp_path, task_dir, tok_dir, tokenizer, capsys):
    _, plain = tiny_bert(layers=1)
    plain.meta["source"] = {**(plain.meta.get("source") or {}), "tokenizer": str(tok_dir)}
    path = tmp_path / "plain"
    optc.save(plain, path)
    out = tmp_path / "spec"
    got = main(["specialize", str(path), "--task", "text-classification", "--data",
                str(task_dir), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert got == 3 and "has no task head" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_slower_result_with_hard_attention_says_how_to_search_structure_only(
        artifact, task_dir, tmp_path, capsys, monkeypatch):
    from optc.search import measure

    times = iter([(10.0, 13.0), (10.0, 10.1)])
    monkeypatch.setattr(measure, "latencies", lambda modules, **kw: next(times))
    base = ["specialize", str(artifact), "--data", str(task_dir), "--kinds", "hard-attention",
            "--rule", "metric", "--tolerance", "100", "--no-dev", *FAST]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "note: hard attention (layers 0, 1) makes this model 1.30x slower here" in printed
    assert "--kinds ffn,ffn-groups,attention,heads" in printed
    assert main([*base, "-o", str(tmp_path / "b")]) == 0  # within 2%: no note
    assert "note: hard attention" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--between", "dce{"], "dce{"),  # one round: --between is never run, still a bad option
    (["--fine-threshold", "nan"], "'nan' is not a finite number"),
    (["--val-size", "nan"], "'nan' is not a finite number"),
    (["--tolerance", "inf"], "'inf' is not a finite number"),
    (["--fine-threshold", "-1"], "fine_threshold must be a finite number >= 0"),
])
def test_every_option_is_checked_before_any_work(tmp_path, capsys, extra, message):
    """A missing model would exit 3 once work starts: the bad option must win (exit 2)."""
    got = main(["specialize", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "spec"),
                "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert got == 2, err
    assert message in err and len(err.splitlines()) == 1
