"""The reconstruct pass: least-squares refit of pruned blocks' output projections against the
unpruned model (exact on a removable duplicate neuron, closer outputs after pruning, refusals)."""

from __future__ import annotations

import json

import pytest
import torch

import optc
from optc.backends.eager import to_eager
from optc.errors import InputError, PassError, PipelineSpecError
from optc.ir.analysis import analyze
from optc.passes import PassContext, parse_pipeline
from optc.passes.support.calibration import calibration_batches
from optc.tests.conftest import assert_backends_agree
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reconstruct")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    return root


def _module(root, layers: int = 2, seed: int = 0):
    _, module = tiny_bert(layers=layers, seed=seed)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    return module


def _dev(root, module):
    """Held-out inputs (the task's dev split; the pass calibrates on train)."""
    return calibration_batches(module, str(root / "task"), 64, 16, 32, None, "test",
                               use_labels=False, split="dev")


def _distance(a, b, batches) -> float:
    """Largest absolute difference of the two modules' last hidden states on real tokens."""
    run_a, run_b = to_eager(a), to_eager(b)
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            keep = batch.inputs["attention_mask"] != 0
            out_a = run_a(**batch.inputs)["last_hidden_state"][keep]
            out_b = run_b(**batch.inputs)["last_hidden_state"][keep]
            worst = max(worst, float((out_a - out_b).abs().max()))
    return worst


def test_a_removed_duplicate_neuron_is_folded_back_exactly(setup) -> None:
    teacher = _module(setup)
    ffn = analyze(teacher).layers[0].ffn
    up, bias = teacher.params[ffn.up.args[1].name], teacher.params[ffn.up.arg(2).name]
    weight, b = up.data.clone(), bias.data.clone()
    weight[5], b[5] = weight[9], b[9]  # neuron 5 computes what neuron 9 does
    up.data, bias.data = weight, b
    student = teacher.clone()
    optc.run_pipeline(student, "prune-neurons{neurons=0:5}")
    dev = _dev(setup, teacher)
    assert _distance(student, teacher, dev) > 1e-3
    report = optc.run_pipeline(
        student, f"reconstruct{{ridge=0,data={setup / 'task'}}}", reference=teacher)
    stats = report.records[0].stats
    assert stats["refitted"] == 1 and list(stats["error"]) == ["layer 0 ffn"]
    before, after = stats["error"]["layer 0 ffn"]
    assert before > 1e-3 and after < 1e-5
    assert _distance(student, teacher, dev) < 1e-4
    # the down projection's column of neuron 9 now carries neuron 5's too
    down = analyze(student).layers[0].ffn.down.args[1].data
    teacher_down = ffn.down.args[1].data
    kept = analyze(student).layers[0].ffn.neuron_ids.index(9)
    torch.testing.assert_close(down[:, kept], teacher_down[:, 9] + teacher_down[:, 5],
                               atol=1e-4, rtol=1e-4)


def test_pruned_model_moves_closer_to_the_unpruned_one_on_held_out_data(setup) -> None:
    teacher = _module(setup, seed=1)
    student = teacher.clone()
    optc.run_pipeline(student, "prune-heads{amount=0.5},prune-neurons{amount=0.5}")
    shapes = {n: tuple(p.data.shape) for n, p in student.params.items()}
    dev = _dev(setup, teacher)
    gap = _distance(student, teacher, dev)
    report = optc.run_pipeline(student, f"reconstruct{{data={setup / 'task'}}}",
                               reference=teacher)
    stats = report.records[0].stats
    assert report.records[0].modified and stats["teacher"] == "pipeline-input"
    assert sorted(stats["error"]) == ["layer 0 attention", "layer 0 ffn", "layer 1 attention",
                                      "layer 1 ffn"]
    assert all(after < before for before, after in stats["error"].values())
    assert _distance(student, teacher, dev) < 0.7 * gap
    assert {n: tuple(p.data.shape) for n, p in student.params.items()} == shapes
    optc.verify(student)
    inputs = dev[0].inputs
    assert_backends_agree(student, inputs)  # eager, TorchScript, ONNX


def test_layers_all_also_refits_intact_blocks_after_a_removal(setup) -> None:
    teacher = _module(setup)
    student = teacher.clone()
    optc.run_pipeline(student, "prune-heads{heads=0:1}")
    pruned = optc.run_pipeline(student.clone(), f"reconstruct{{data={setup / 'task'}}}",
                               reference=teacher).records[0].stats
    every = optc.run_pipeline(student.clone(), f"reconstruct{{layers=all,data={setup / 'task'}}}",
                              reference=teacher).records[0].stats
    assert list(pruned["error"]) == ["layer 0 attention"]
    assert list(every["error"]) == ["layer 0 attention", "layer 0 ffn", "layer 1 attention",
                                    "layer 1 ffn"]
    ffn_only = optc.run_pipeline(student.clone(), f"reconstruct{{layers=all,blocks=ffn,"
                                                  f"data={setup / 'task'}}}",
                                 reference=teacher).records[0].stats
    assert list(ffn_only["error"]) == ["layer 0 ffn", "layer 1 ffn"]


def test_nothing_pruned_changes_nothing_and_reads_no_data(setup) -> None:
    teacher = _module(setup)
    student = teacher.clone()
    report = optc.run_pipeline(student, "reconstruct{data=/nonexistent}", reference=teacher)
    assert not report.records[0].modified and report.records[0].stats["refitted"] == 0


def test_a_projection_whose_weights_other_layers_read_is_skipped(setup) -> None:
    teacher = _module(setup)
    student = teacher.clone()
    layers = analyze(student).layers
    first, second = layers[0].ffn.down, layers[1].ffn.down
    second.replace_input(second.args[1], first.args[1])  # layer 1 reads layer 0's down weight
    optc.run_pipeline(student, "dce")
    optc.run_pipeline(student, "prune-heads{heads=1:0}")
    shared = first.args[1].data
    stats = optc.run_pipeline(student, f"reconstruct{{layers=all,data={setup / 'task'}}}",
                              reference=teacher).records[0].stats
    assert "shared" in stats["skipped"]["layer 0 ffn"] and "layer 1 ffn" in stats["skipped"]
    assert "layer 0 ffn" not in stats["error"] and "layer 1 attention" in stats["error"]
    assert analyze(student).layers[0].ffn.down.args[1].data is shared


def test_refusals(setup, tmp_path) -> None:
    with pytest.raises(PipelineSpecError, match="ridge"):
        parse_pipeline("reconstruct{ridge=-1}")
    student = _module(setup)
    p = parse_pipeline(f"reconstruct{{data={setup / 'task'}}}")[0]
    with pytest.raises(InputError, match="needs the unpruned model"):
        p.run(student)
    with pytest.raises(PassError, match="reconstruct teacher: .*nope"):
        optc.run_pipeline(student, f"reconstruct{{teacher={tmp_path / 'nope'}}}")
    import transformers as tf

    wide = optc.capture(tf.BertModel(tf.BertConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, max_position_embeddings=64)).eval())
    with pytest.raises(InputError, match="hidden size 48 differs from the model's 32"):
        p.run(student, PassContext(reference=wide))
    teacher = _module(setup)
    student = teacher.clone()
    optc.run_pipeline(student, "prune-neurons{amount=0.5},quantize{mode=dynamic}")
    before = {n: p.data for n, p in student.params.items()}
    with pytest.raises(InputError, match="quantized or sparse: run reconstruct before quantize"):
        p.run(student, PassContext(reference=teacher))
    assert all(student.params[n].data is t for n, t in before.items())


def test_cli_data_feeds_reconstruct_after_pruning(setup, tmp_path, capsys) -> None:
    from optc.tools.cli.main import main

    model = tmp_path / "model"
    optc.save(_module(setup), model)
    out = tmp_path / "out"
    code = main([str(model), "--passes", "prune-neurons{amount=0.5},reconstruct",
                 "--data", str(setup / "task"), "-o", str(out), "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)["passes"][1]
    assert record["pass"].startswith("reconstruct{data=")
    assert record["stats"]["refitted"] == 2 and record["stats"]["teacher"] == "pipeline-input"
    from optc.artifacts import load_module

    assert load_module(out).num_parameters() < load_module(model).num_parameters()
