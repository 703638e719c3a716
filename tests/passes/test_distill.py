"""The distill pass: teachers (artifact, pipeline input, self), and the compression pipeline."""

from __future__ import annotations

import pytest

import optc
from optc.errors import PassError, PipelineSpecError
from optc.passes import PassContext, parse_pipeline
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.train import add_task_head


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    return root


def _module(root, layers: int = 2):
    _, module = tiny_bert(layers=layers)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    return module


def test_prune_then_distill_runs_as_one_pipeline(setup) -> None:
    module = _module(setup)
    params = module.num_parameters()
    report = optc.run_pipeline(
        module, "prune-heads{amount=0.5},prune-neurons{amount=0.5},"
                f"distill{{task=text-classification,epochs=1,max_steps=3,data={setup / 'task'}}}")
    stats = report.records[-1].stats
    assert [r.modified for r in report.records] == [True, True, True]
    assert stats["teacher"] == "pipeline-input" and stats["soft_targets"] is False
    assert stats["hidden_mse"] == 1.0 and stats["layer_map"] == "0:0,1:1" and stats["steps"] == 3
    assert module.num_parameters() < params
    assert list(module.graph.outputs) == ["logits"]
    optc.verify(module)


def test_teacher_artifact_with_a_head_gives_soft_targets(setup, tmp_path) -> None:
    teacher = _module(setup)
    add_task_head(teacher, "text-classification", seed=3)
    optc.save(teacher, tmp_path / "teacher")
    student = _module(setup, layers=1)
    report = optc.run_pipeline(student, f"distill{{task=text-classification,max_steps=2,"
                                        f"teacher={tmp_path / 'teacher'},data={setup / 'task'}}}")
    stats = report.records[0].stats
    assert stats["teacher"] == str(tmp_path / "teacher")
    assert stats["soft_targets"] is True and stats["hidden_mse"] == 0.0


def test_pipeline_input_is_the_default_teacher(setup) -> None:
    teacher = _module(setup)
    add_task_head(teacher, "text-classification", seed=3)
    student = teacher.clone()
    p = parse_pipeline(f"distill{{max_steps=2,eval_split=none,data={setup / 'task'}}}")[0]
    result = p.run(student, PassContext(reference=teacher))
    assert result.stats["teacher"] == "pipeline-input" and result.stats["soft_targets"] is True


def test_a_pipeline_reference_replaces_the_pipeline_input_as_teacher(setup, monkeypatch) -> None:
    import optc.passes.distill as distill_pass

    original = _module(setup)
    add_task_head(original, "text-classification", seed=3)
    pruned = original.clone()
    optc.run_pipeline(pruned, "prune-heads{amount=0.5}")
    seen = []
    real = distill_pass.distill
    monkeypatch.setattr(distill_pass, "distill",
                        lambda module, teacher, *a, **kw: (seen.append(teacher),
                                                           real(module, teacher, *a, **kw))[1])
    spec = f"distill{{max_steps=1,eval_split=none,data={setup / 'task'}}}"
    optc.run_pipeline(pruned, spec, reference=original)
    assert seen[-1] is original
    optc.run_pipeline(pruned, spec)  # no reference: the pruned module as it entered
    assert seen[-1] is not original
    assert seen[-1].num_parameters() == pruned.num_parameters() < original.num_parameters()


def test_bad_teacher_and_options(setup, tmp_path) -> None:
    with pytest.raises(PipelineSpecError, match="alpha_soft"):
        parse_pipeline("distill{alpha_soft=2}")
    with pytest.raises(PipelineSpecError, match="bad layer map"):
        parse_pipeline("distill{layer_map=0-1}")
    with pytest.raises(PassError, match="distill teacher: artifact .* does not exist"):
        optc.run_pipeline(_module(setup), f"distill{{task=sst2,teacher={tmp_path / 'nope'},"
                                          f"data={setup / 'task'}}}")


@pytest.mark.slow
def test_minilm_prune_then_distill_on_sst2(minilm_module, data_dir, monkeypatch) -> None:
    monkeypatch.setenv("OPTC_DATA_DIR", str(data_dir))
    module = minilm_module.clone()
    report = optc.run_pipeline(
        module, "prune-heads{amount=0.5},prune-neurons{amount=0.5},"
                "distill{task=sst2,epochs=1,max_steps=2,batch_size=8,eval_split=none}")
    stats = report.records[-1].stats
    assert stats["steps"] == 2 and stats["teacher"] == "pipeline-input" and stats["head_added"] is True
    assert stats["layer_map"] == "0:0,1:1,2:2,3:3,4:4,5:5"
    assert list(module.graph.outputs) == ["logits"]
    assert minilm_module.graph.outputs.keys() == {"last_hidden_state", "pooler_output"}
