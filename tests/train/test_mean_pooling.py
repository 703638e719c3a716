"""Task-head pooling (issue #9): pooler / cls / mean heads on a tiny random BERT, their numbers
on every backend, refusals, what meta records, the structural passes on a mean head, and a short
fine-tuning with pooling=mean."""

from __future__ import annotations

import typing

import pytest
import torch

import optc
from optc.errors import InputError, PipelineSpecError
from optc.ir import parse_module, print_module
from optc.ir.cleanup import eliminate_dead_code
from optc.passes import PassManager
from optc.passes.finetune import Finetune, TrainingPass
from optc.tests.conftest import assert_backends_agree, assert_refused_unchanged
from optc.tests.train.conftest import VOCAB, tiny_bert
from optc.tools.cli.train import finetune_parser
from optc.train import add_task_head, distill, finetune, has_task_head
from optc.train.heads import POOLINGS

TASK = "text-classification"


def _inputs(batch: int = 4, seq: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token inputs whose odd rows are padded (1, 3, ... tokens of padding at the end)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(VOCAB), (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch, 2):
        mask[row, seq - row:] = 0
    ids = ids.masked_fill(mask == 0, 0)  # [PAD]
    types = torch.zeros_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling, written independently of the IR."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def _graph_text(module) -> str:
    """The printed module without its meta line (params and graph)."""
    text = module if isinstance(module, str) else print_module(module)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("meta "))


def _head(module) -> tuple[torch.Tensor, torch.Tensor]:
    return module.params["classifier.weight"].data, module.params["classifier.bias"].data


@pytest.fixture(scope="module")
def encoder():
    """(HF model, its captured IR): clone before editing."""
    return tiny_bert()


def test_mean_head_is_the_masked_mean_then_linear(encoder) -> None:
    _, base = encoder
    module = base.clone()
    inputs = _inputs()
    hidden = optc.to_eager(base)(**inputs)["last_hidden_state"]
    assert add_task_head(module, TASK, seed=4, pooling="mean")
    optc.verify(module)
    assert list(module.graph.outputs) == ["logits"]
    assert not [p for p in module.params if p.startswith("pooler.")]  # the unused pooler is gone
    w, b = _head(module)
    logits = optc.to_eager(module)(**inputs)["logits"]
    expected = _masked_mean(hidden, inputs["attention_mask"]) @ w.T + b
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    # not the first token, not the pooler, not the mean over every position (padding included)
    assert (logits - (hidden[:, 0] @ w.T + b)).abs().max() > 1e-3
    assert (logits[1] - (hidden[1].mean(0) @ w.T + b)).abs().max() > 1e-4


def test_padding_does_not_change_the_mean_head(encoder) -> None:
    _, base = encoder
    module = base.clone()
    add_task_head(module, TASK, seed=1, pooling="mean")
    run = optc.to_eager(module)
    inputs = _inputs(batch=4, seq=9)
    padded = run(**inputs)["logits"]
    for row in range(4):
        length = int(inputs["attention_mask"][row].sum())
        alone = {k: v[row:row + 1, :length] for k, v in inputs.items()}
        torch.testing.assert_close(run(**alone)["logits"][0], padded[row], rtol=1e-5, atol=1e-6)
    # more padding, with other token ids under it: the same logits
    wider = {k: torch.cat([v, torch.zeros(4, 5, dtype=v.dtype)], 1) for k, v in inputs.items()}
    wider["input_ids"][:, 9:] = 7
    torch.testing.assert_close(run(**wider)["logits"], padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_every_backend_agrees_on_the_head(encoder, pooling) -> None:
    _, base = encoder
    module = base.clone()
    add_task_head(module, TASK, seed=2, pooling=pooling)
    report = assert_backends_agree(module, _inputs(batch=4, seq=7, seed=3))
    assert set(report.diffs) == {"torchscript", "onnx"}


def test_pooling_choices_and_what_meta_records(encoder) -> None:
    model, base = encoder
    inputs = _inputs()
    out = optc.to_eager(base)(**inputs)
    for pooling, recorded in (("auto", "pooler"), ("pooler", "pooler"), ("cls", "cls"),
                              ("mean", "mean")):
        module = base.clone()
        add_task_head(module, TASK, seed=5, pooling=pooling)
        assert module.meta["task"]["pooling"] == recorded
        w, b = _head(module)
        pooled = {"pooler": out["pooler_output"], "cls": out["last_hidden_state"][:, 0],
                  "mean": _masked_mean(out["last_hidden_state"], inputs["attention_mask"])}
        torch.testing.assert_close(optc.to_eager(module)(**inputs)["logits"],
                                   pooled[recorded] @ w.T + b, rtol=1e-5, atol=1e-6)
    no_pooler = base.clone()
    no_pooler.graph.remove_output("pooler_output")
    eliminate_dead_code(no_pooler)
    add_task_head(no_pooler, TASK)  # auto without a pooler: the first token
    assert no_pooler.meta["task"]["pooling"] == "cls"
    qa = base.clone()
    add_task_head(qa, "squad")
    assert "pooling" not in qa.meta["task"]  # QA reads every token


def test_pooler_pooling_without_a_pooler_is_one_line_and_changes_nothing(encoder) -> None:
    _, base = encoder
    module = base.clone()
    module.graph.remove_output("pooler_output")
    eliminate_dead_code(module)
    text = print_module(module)
    with pytest.raises(InputError, match="pooling=pooler needs a pooler_output") as info:
        add_task_head(module, TASK, pooling="pooler")
    message = str(info.value)
    assert "\n" not in message and "use pooling=cls or pooling=mean" in message
    assert print_module(module) == text
    assert "task" not in module.meta


def test_bad_pooling_values_are_refused(encoder) -> None:
    _, base = encoder
    module = base.clone()
    text = print_module(module)
    with pytest.raises(InputError, match="unknown pooling 'max': use one of auto, pooler, cls, mean"):
        add_task_head(module, TASK, pooling="max")
    with pytest.raises(InputError, match="extractive QA.*leave pooling at auto"):
        add_task_head(module, "squad", pooling="mean")
    assert print_module(module) == text
    with pytest.raises(PipelineSpecError, match="choose one of auto, pooler, cls, mean"):
        PassManager("finetune{task=sst2,pooling=max}")


def test_an_existing_head_keeps_its_pooling(encoder) -> None:
    _, base = encoder
    module = base.clone()
    add_task_head(module, "sst2", seed=3, pooling="mean")
    text = print_module(module)
    # same pooling, or auto: the head fits and is kept; meta keeps the recorded pooling
    assert not add_task_head(module, "rte", pooling="auto")
    assert not add_task_head(module, "rte", pooling="mean")
    assert module.meta["task"]["name"] == "rte" and module.meta["task"]["pooling"] == "mean"
    assert _graph_text(module) == _graph_text(text)
    # a different pooling than the head was built with: refused before anything changes
    for other in ("cls", "pooler"):
        with pytest.raises(InputError, match=f"already has a head on mean pooling.*not {other}: "
                                             "leave pooling at auto"):
            add_task_head(module, "rte", pooling=other)
        with pytest.raises(InputError, match="already has a head on mean pooling"):
            has_task_head(module, "rte", pooling=other)
    assert module.meta["task"]["pooling"] == "mean"
    # a head whose pooling nobody recorded (e.g. captured from Hugging Face): pooling is ignored
    _, classifier = tiny_bert(head="sequence-classification")
    assert not add_task_head(classifier, "text-classification{labels=a,b,c}", pooling="mean")
    assert "pooling" not in classifier.meta["task"]


def test_mean_over_all_tokens_without_an_attention_mask() -> None:
    model, _ = tiny_bert()
    ids = _inputs(batch=3, seq=6)["input_ids"]
    module = optc.capture(model, {"input_ids": ids})
    assert [v.name for v in module.graph.inputs] == ["input_ids"]
    hidden = optc.to_eager(module)(input_ids=ids)["last_hidden_state"]
    add_task_head(module, TASK, pooling="mean")
    optc.verify(module)
    w, b = _head(module)
    torch.testing.assert_close(optc.to_eager(module)(input_ids=ids)["logits"],
                               hidden.mean(1) @ w.T + b, rtol=1e-5, atol=1e-6)
    assert module.meta["task"]["pooling"] == "mean"


def test_mean_head_survives_print_parse_and_artifacts(encoder, tmp_path) -> None:
    _, base = encoder
    module = base.clone()
    add_task_head(module, TASK, seed=2, pooling="mean")
    inputs = _inputs()
    expected = optc.to_eager(module)(**inputs)["logits"]
    parsed = parse_module(print_module(module))  # the text form has no weights
    assert print_module(parsed) == print_module(module)
    optc.save(module, tmp_path / "a")
    loaded = optc.load_module(tmp_path / "a")
    assert loaded.meta["task"]["pooling"] == "mean"
    torch.testing.assert_close(optc.to_eager(loaded)(**inputs)["logits"], expected)


@pytest.mark.parametrize("spec", ["prune-heads{heads=0:1,1:0,1:3}", "drop-layers{layers=1}",
                                  "prune-neurons{neurons=0:3,1:7}",
                                  "drop-layers{layers=0},prune-heads{heads=0:2},dce"])
def test_structural_passes_on_a_mean_head(encoder, spec) -> None:
    """The head reads last_hidden_state and the attention mask, which every pass keeps: the
    pruned module's logits are the mean head on the same pruned encoder."""
    _, base = encoder
    module = base.clone()
    add_task_head(module, TASK, seed=6, pooling="mean")
    encoder_only = base.clone()
    report = optc.run_pipeline(module, spec)
    assert report.records[0].modified
    optc.run_pipeline(encoder_only, spec)
    optc.verify(module)
    inputs = _inputs(seed=2)
    hidden = optc.to_eager(encoder_only)(**inputs)["last_hidden_state"]
    w, b = _head(module)
    logits = optc.to_eager(module)(**inputs)["logits"]
    torch.testing.assert_close(logits, _masked_mean(hidden, inputs["attention_mask"]) @ w.T + b,
                               rtol=1e-5, atol=1e-6)
    assert module.meta["task"]["pooling"] == "mean"
    assert not PassManager("dce").run(module).records[0].modified  # nothing of the head is dead


def test_a_short_finetune_with_mean_pooling_trains_the_mean_head(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=2)
    before = {n: p.data for n, p in module.params.items()}
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=3, eval_split=None,
                      batch_size=16, lr=3e-3, pooling="mean")
    assert report.steps == 3 and report.head_added
    assert module.meta["task"]["pooling"] == "mean"
    assert module.meta["task"]["trained_steps"] == 3
    assert not [p for p in module.params if p.startswith("pooler.")]
    for name in ("encoder.layer.1.output.dense.weight", "embeddings.word_embeddings.weight"):
        assert not torch.equal(module.params[name].data, before[name]), name
    w, _ = _head(module)
    assert w.shape == (2, 32)
    # the trained head is still the masked mean: logits = mean(last hidden) @ W + b
    optc.verify(module)
    text = print_module(module)
    assert "aten.div.Tensor(%token_sum" in text and "first_token" not in text
    # training again with another pooling is refused before any work; auto keeps the head
    with pytest.raises(InputError, match="already has a head on mean pooling"):
        finetune(module, TASK, task_dir, tokenizer=tokenizer, max_steps=1, eval_split=None,
                 pooling="cls")
    assert module.meta["task"]["trained_steps"] == 3


def test_pass_and_cli_carry_the_pooling() -> None:
    assert typing.get_args(typing.get_type_hints(TrainingPass)["pooling"]) == POOLINGS
    assert Finetune(task="sst2", pooling="mean").spec() == "finetune{task=sst2,pooling=mean}"
    assert Finetune(task="sst2").spec() == "finetune{task=sst2}"  # auto: specs unchanged
    parser = finetune_parser()
    assert parser.parse_args(["-o", "x", "--pooling", "mean"]).pooling == "mean"
    assert parser.parse_args(["-o", "x"]).pooling == "auto"
    action = next(a for a in parser._actions if a.dest == "pooling")
    assert tuple(action.choices) == POOLINGS
    with pytest.raises(SystemExit):
        parser.parse_args(["-o", "x", "--pooling", "max"])


def test_the_finetune_pass_and_distill_build_the_head_they_are_asked_for(task_dir, tok_dir,
                                                                         tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    module.meta["source"]["tokenizer"] = str(tok_dir)
    report = optc.run_pipeline(module, f"finetune{{task={TASK},max_steps=1,eval_split=none,"
                                       f"batch_size=16,pooling=mean,data={task_dir}}}")
    assert report.records[0].stats["head_added"] is True
    assert module.meta["task"]["pooling"] == "mean" and "token_sum" in print_module(module)
    # a later training pass asking for another pooling is refused, the IR unchanged
    assert_refused_unchanged(module, f"finetune{{pooling=cls,max_steps=1,data={task_dir}}}",
                             "already has a head on mean pooling")
    # distill's student gets the pooling asked for; the teacher keeps its own head
    teacher = module
    _, student = tiny_bert(layers=1, seed=1)
    distill(student, teacher, TASK, task_dir, tokenizer=tokenizer, max_steps=1, eval_split=None,
            batch_size=16, pooling="cls")
    assert student.meta["task"]["pooling"] == "cls" and teacher.meta["task"]["pooling"] == "mean"
