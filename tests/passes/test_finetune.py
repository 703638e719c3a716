"""The finetune pass: options, refusals, a short run in a pipeline."""

from __future__ import annotations

import pytest

import optc
from optc.errors import PassError, PipelineSpecError
from optc.passes import parse_pipeline
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    return root


def _module(root, layers: int = 1):
    _, module = tiny_bert(layers=layers)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    return module


def test_finetune_pass_trains_adds_the_head_and_records_the_task(setup) -> None:
    module = _module(setup)
    before = {n: p.data for n, p in module.params.items()}
    report = optc.run_pipeline(module, "finetune{task=text-classification,epochs=1,lr=0.003,"
                                       f"batch_size=16,data={setup / 'task'}}}")
    record = report.records[0]
    assert record.modified
    assert record.stats["steps"] == 11 and record.stats["head_added"] is True  # 163 of 192: 15% held out
    assert "val_accuracy" in record.stats  # chosen on the held-out part of train, not on dev
    assert list(module.graph.outputs) == ["logits"]
    assert all(module.params[n].data is not t for n, t in before.items() if t.is_floating_point())
    assert module.meta["task"]["eval"]["split"] == "val"
    # the task is now recorded: a second finetune needs no task= option
    again = optc.run_pipeline(module, f"finetune{{max_steps=1,eval_split=none,data={setup / 'task'}}}")
    assert again.records[0].stats["task"] == "text-classification"


def test_a_single_file_is_split_into_train_and_validation(setup) -> None:
    module = _module(setup)
    report = optc.run_pipeline(module, "finetune{task=text-classification,max_steps=2,"
                                       f"data={setup / 'task' / 'train.tsv'}}}")
    assert "val_accuracy" in report.records[0].stats


def test_finetune_options_are_checked_when_parsed() -> None:
    with pytest.raises(PipelineSpecError, match="epochs > 0"):
        parse_pipeline("finetune{epochs=0}")
    with pytest.raises(PipelineSpecError, match="unknown task 'nope'"):
        parse_pipeline("finetune{task=nope}")
    with pytest.raises(PipelineSpecError, match="choose one of dev, val, none"):
        parse_pipeline("finetune{eval_split=test}")
    assert parse_pipeline("finetune")[0].uses_data


def test_finetune_without_a_task_or_with_an_unfit_head_is_refused(setup) -> None:
    from optc.tests.conftest import assert_refused_unchanged

    assert_refused_unchanged(_module(setup), "finetune", "needs a task: pass task=NAME")
    _, three = tiny_bert(layers=1, head="sequence-classification")
    assert_refused_unchanged(three, "finetune{task=sst2}", "head with 3 labels")


def test_finetune_without_a_tokenizer_fails_cleanly(setup) -> None:
    _, module = tiny_bert(layers=1)
    with pytest.raises(PassError, match="no tokenizer is recorded"):
        optc.run_pipeline(module, f"finetune{{task=sst2,data={setup / 'task'}}}")
