"""optc.search on tiny random models: the acceptance rule, gates vs physical commit on every
backend, prefix reuse vs full evaluation, parallel vs serial, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.errors import InputError, PipelineSpecError
from optc.search import (
    Candidate,
    Config,
    GatedRunner,
    LossRule,
    MetricLossRule,
    MetricRule,
    SearchOptions,
    commit,
    holdout_options,
    make_rule,
    neuron_groups,
    plan_trials,
    prepare_batches,
    specialize,
    validate,
)
from optc.tasks import evaluate, get_task
from optc.tasks.records import Example
from optc.tests.search.conftest import TASK, headed, with_tokenizer
from optc.tests.search.flip_head import FlipHead  # noqa: F401 (registers test-flip-head)
from optc.tests.train.conftest import tiny_bert

NAMES = ("input_ids", "attention_mask", "token_type_ids")


# -- acceptance rule on constructed cases ---------------------------------------------------
def test_loss_rule_rejects_a_lower_mean_that_worsens_most_samples():
    baseline = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    rule = LossRule()
    # one sample much better, four slightly worse: the mean drops, most samples got worse
    skewed = torch.tensor([0.0, 1.1, 1.1, 1.1, 1.1])
    verdict = rule.judge(skewed, baseline, best_loss=1.0)
    assert verdict.mean_loss < 1.0 and verdict.not_worse == pytest.approx(0.2)
    assert not verdict.accepted
    helps = torch.tensor([0.9, 0.8, 1.0, 0.95, 1.2])
    assert rule.judge(helps, baseline, best_loss=1.0).accepted
    # no worse everywhere, but the mean is not lower than the best so far
    assert not rule.judge(baseline.clone(), baseline, best_loss=1.0).accepted
    assert not rule.judge(helps, baseline, best_loss=0.9).accepted
    # exactly half not worse is not "more than half"
    half = torch.tensor([0.5, 0.5, 1.2, 1.2])
    assert not rule.judge(half, torch.ones(4), best_loss=1.0).accepted


def test_metric_rule_tolerates_the_given_drop():
    losses = torch.ones(4)
    assert MetricRule(1.0).judge(losses, losses, 1.0, metric=79.0, baseline_metric=80.0).accepted
    assert not MetricRule(0.5).judge(losses, losses, 1.0, metric=79.0, baseline_metric=80.0).accepted


def test_metric_loss_rule_also_keeps_the_mean_loss_at_the_baseline():
    baseline = torch.ones(4)
    drift = torch.tensor([1.0, 1.0, 1.0, 1.2])  # the metric stayed level, the loss grew
    rule = make_rule("metric-loss", 1.0)
    assert isinstance(rule, MetricLossRule) and rule.name == "metric-loss"
    assert MetricRule(0.0).judge(drift, baseline, 1.0, metric=80.0, baseline_metric=80.0).accepted
    verdict = rule.judge(drift, baseline, 0.5, metric=80.0, baseline_metric=80.0)
    assert not verdict.accepted and verdict.mean_loss == pytest.approx(1.05)
    # the baseline's loss is the bound, not the best so far; the tolerance still applies
    level = torch.tensor([1.0, 1.0, 0.9, 1.1])
    assert rule.judge(level, baseline, 0.5, metric=79.5, baseline_metric=80.0).accepted
    assert not rule.judge(level, baseline, 0.5, metric=78.5, baseline_metric=80.0).accepted
    with pytest.raises(PipelineSpecError, match="valid rules: loss, metric, metric-loss"):
        make_rule("metrics")


def test_plan_follows_the_published_order():
    module = headed(layers=2)
    trials = plan_trials(optc.ir.analysis.analyze(module), k=5, neuron_group_count=4)
    kinds = [(t.candidate.kind, t.candidate.layer) for t in trials]
    assert kinds[:2] == [("hard-attention", 0), ("hard-attention", 1)]
    assert kinds[2] == ("ffn", 1) and kinds[3:7] == [("ffn-groups", 1)] * 4
    assert kinds[7] == ("attention", 1) and kinds[8:12] == [("heads", 1)] * 4
    assert kinds[12] == ("ffn", 0)
    assert trials[3].after_block == trials[2].candidate
    assert neuron_groups(10, 4) == [(0, 1), (2, 3, 4), (5, 6), (7, 8, 9)]


def test_importance_ranks_heads_and_groups_neurons_by_score():
    assert neuron_groups(6, 3, torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 1.0])) == \
        [(1, 3), (2, 5), (0, 4)]
    module = headed(layers=2)
    structure = optc.ir.analysis.analyze(module)
    lid = structure.layers[1].id
    heads = {lid: torch.tensor([0.3, 0.1, 0.4, 0.2])}
    neurons = {lid: -torch.arange(64.0)}  # the last neuron is the least important
    trials = plan_trials(structure, ("ffn", "ffn-groups", "attention", "heads"),
                         neuron_group_count=4, importance=(heads, neurons))
    groups = [t.candidate.units for t in trials if t.candidate.kind == "ffn-groups"
              and t.candidate.layer == lid]
    assert groups == [tuple(range(48, 64)), tuple(range(32, 48)), tuple(range(16, 32)),
                      tuple(range(0, 16))]
    order = [t.candidate.units[0] for t in trials if t.candidate.kind == "heads"
             and t.candidate.layer == lid]
    assert order == [1, 3, 0, 2]
    # layers without scores keep the published order
    other = structure.layers[0].id
    assert [t.candidate.units[0] for t in trials if t.candidate.kind == "heads"
            and t.candidate.layer == other] == [0, 1, 2, 3]
    with pytest.raises(PipelineSpecError, match="unknown unit order 'random'"):
        SearchOptions(unit_order="random")


# -- the gated runner ------------------------------------------------------------------------
def _batches(module, tokenizer, task_dir, limit=40):
    task = get_task(TASK)
    examples = task.read("val", task_dir, limit=limit)
    return task, examples, prepare_batches(task, examples, tokenizer, 8, None, NAMES)


def test_unpruned_runner_matches_the_eager_evaluation(module, tokenizer, task_dir):
    task, examples, batches = _batches(module, tokenizer, task_dir)
    runner = GatedRunner(module, task, batches, NAMES)
    got = runner.evaluate(Config())
    want = evaluate(task, optc.to_eager(module), examples, tokenizer, batch_size=8,
                    input_names=NAMES)
    assert torch.allclose(got.losses, want.losses, atol=1e-6)
    assert got.predictions == want.predictions


CONFIG = Config(frozenset({
    Candidate("hard-attention", 0, (2,)),
    Candidate("heads", 0, (1,)), Candidate("heads", 0, (3,)),
    Candidate("ffn-groups", 0, tuple(range(0, 16))),
    Candidate("attention", 1), Candidate("ffn-groups", 1, tuple(range(40, 64))),
}))


def test_prefix_reuse_gives_the_same_losses_as_full_evaluation(module, tokenizer, task_dir):
    task, _, batches = _batches(module, tokenizer, task_dir)
    reuse = GatedRunner(module, task, batches, NAMES, prefix_reuse=True)
    full = GatedRunner(module, task, batches, NAMES, prefix_reuse=False)
    base = Config(frozenset({Candidate("hard-attention", 0, (2,))}))
    for cand in [Candidate("heads", 1, (2,)), Candidate("ffn", 1), Candidate("attention", 1),
                 Candidate("ffn-groups", 0, (0, 1, 2)), Candidate("heads", 1, (0,))]:
        a = reuse.evaluate(base, cand).losses
        b = full.evaluate(base, cand).losses
        assert torch.equal(a, b), cand
    assert reuse._prefix_key is not None and reuse._prefix_key[0] > 0


def test_committed_model_equals_the_masked_model_on_every_backend(module, tokenizer, task_dir):
    task, examples, batches = _batches(module, tokenizer, task_dir)
    runner = GatedRunner(module, task, batches, NAMES)
    masked = runner.evaluate(CONFIG)
    committed = module.clone()
    counts = commit(committed, CONFIG)
    optc.verify(committed)
    assert counts == {"hard_attention_layers": 1, "ffn_blocks": 0, "attention_blocks": 1,
                      "heads": 2, "neurons": 40}
    assert committed.num_parameters() < module.num_parameters()
    got = evaluate(task, optc.to_eager(committed), examples, tokenizer, batch_size=8,
                   input_names=NAMES)
    assert (got.losses - masked.losses).abs().max() <= 1e-5
    assert (masked.losses - runner.evaluate(Config()).losses).abs().max() > 1e-4
    enc = tokenizer([e.text for e in examples[:4]], padding=True, return_tensors="pt")
    report = check_backends(committed, {k: enc[k] for k in NAMES})
    assert report.worst("torchscript") <= 1e-5 and report.worst("onnx") <= 1e-5, report


# -- the search ------------------------------------------------------------------------------
def _search(module, tokenizer, task_dir, **kw):
    options = SearchOptions(**{"k": 3, "neuron_groups": 3, **kw})
    return specialize(module, TASK, tokenizer, task_dir, options)


@pytest.fixture(scope="module")
def serial(_headed, tok_dir, tokenizer, task_dir):
    """The default serial search, run once for the tests that check it or compare with it
    (read only)."""
    return _search(with_tokenizer(_headed, tok_dir), tokenizer, task_dir)


def test_search_commits_its_accepted_set_and_records_the_history(module, tokenizer, task_dir,
                                                                  serial):
    result = serial
    assert result.history and result.evaluations == len(result.history) + 1
    accepted = {(h.kind, h.layer, tuple(h.units)) for h in result.history if h.accepted}
    assert accepted == {(c.kind, c.layer, c.units) for c in result.config.accepted}
    assert accepted, "the tiny model should accept something"
    assert result.best_loss < result.baseline_loss
    # the history's losses are those of the accepted configuration, re-evaluated
    task, examples, _ = _batches(module, tokenizer, task_dir, limit=None)
    got = evaluate(task, optc.to_eager(result.module), examples, tokenizer,
                   input_names=NAMES)
    assert got.mean_loss == pytest.approx(result.best_loss, abs=1e-5)
    assert result.flops_after <= result.flops_before
    summary = result.summary()
    assert summary["history"][0]["kind"] == "hard-attention"
    assert "accepted" in result.table().splitlines()[0]


def test_parallel_processes_equal_serial(module, tokenizer, task_dir, serial):
    parallel = _search(module, tokenizer, task_dir, workers=2)
    assert parallel.executor == "processes"
    assert parallel.config == serial.config
    assert [h.accepted for h in parallel.history] == [h.accepted for h in serial.history]


def test_later_sweeps_retry_only_what_changed_and_stop_when_nothing_is_accepted(
        module, tokenizer, task_dir, serial):
    one = serial
    three = _search(module, tokenizer, task_dir, sweeps=3)
    first = [h for h in three.history if h.sweep == 1]
    assert [(h.label, h.layer, h.accepted, h.mean_loss) for h in first] == \
        [(h.label, h.layer, h.accepted, h.mean_loss) for h in one.history]
    later = [h for h in three.history if h.sweep > 1]
    assert any(h.accepted for h in later), "the fixture's second sweep accepts a block"
    assert one.config.accepted < three.config.accepted and three.best_loss < one.best_loss
    # a configuration is never evaluated twice for the same candidate
    assert three.evaluations == len(three.history) + 1
    # the last sweep run accepted nothing, or the limit was reached
    last = [h for h in three.history if h.sweep == three.sweeps]
    assert three.sweeps == 3 or not any(h.accepted for h in last)
    assert three.summary()["sweeps"] == three.sweeps
    assert "(sweep 2)" in three.table()
    task, examples, _ = _batches(module, tokenizer, task_dir, limit=None)
    got = evaluate(task, optc.to_eager(three.module), examples, tokenizer, input_names=NAMES)
    assert got.mean_loss == pytest.approx(three.best_loss, abs=1e-5)
    parallel = _search(module, tokenizer, task_dir, sweeps=3, workers=2)
    assert parallel.config == three.config
    assert [h.accepted for h in parallel.history] == [h.accepted for h in three.history]
    with pytest.raises(PipelineSpecError, match="sweeps must be an integer >= 1"):
        SearchOptions(sweeps=0)


def test_ray_equals_serial(module, tokenizer, task_dir, serial):
    pytest.importorskip("ray")
    ray = _search(module, tokenizer, task_dir, workers=2, ray=True)
    assert ray.executor == "ray" and ray.config == serial.config


def test_without_ray_one_line_says_how_to_install(module, tokenizer, task_dir, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InputError, match=r"pip install 'optc\[ray\]'") as info:
        _search(module, tokenizer, task_dir, ray=True)
    assert "\n" not in str(info.value)


def test_time_budget_and_flops_target_stop_with_the_best_so_far(module, tokenizer, task_dir):
    quick = _search(module, tokenizer, task_dir, time_budget=1e-9)
    assert quick.stopped == "time-budget" and quick.history == []
    assert quick.module.num_parameters() == module.num_parameters()
    target = _search(module, tokenizer, task_dir, flops_target=0.999,
                     kinds=("attention", "ffn"), rule="metric", tolerance=100.0)
    assert target.stopped == "flops-target" and len(target.config.accepted) == 1


def test_bad_input_is_one_line_and_typed(module, tokenizer, task_dir):
    _, plain = tiny_bert(layers=1)
    with pytest.raises(InputError, match="has no task head.*optc finetune"):
        specialize(plain, TASK, tokenizer, task_dir)
    with pytest.raises(InputError, match="needs 3"):
        specialize(module, "text-classification{labels=a,b,c}", tokenizer, task_dir)
    with pytest.raises(InputError, match="at least 20"):
        specialize(module, TASK, tokenizer, task_dir, SearchOptions(val_limit=5))
    with pytest.raises(PipelineSpecError, match="k must be an integer >= 1"):
        SearchOptions(k=0)
    with pytest.raises(PipelineSpecError, match="unknown candidate kind 'layers'"):
        SearchOptions(kinds=("layers",))


def test_pareto_front_of_the_history():
    from optc.search import SearchResult

    def cfg(*layers):
        return Config(frozenset(Candidate("ffn", i) for i in layers))

    points = [(cfg(), 80.0, 100), (cfg(1), 81.0, 90), (cfg(1, 2), 79.0, 80),
              (cfg(2), 78.0, 95), (cfg(1, 3), 81.0, 85), (cfg(1, 2, 3), 70.0, 60)]
    result = SearchResult(None, cfg(1, 3), [], 0.0, 0.0, None, None, "accuracy", 100, 85, 0, 0,
                          0, 0.0, 10, points=points)
    front = result.pareto(5)
    assert [p[2] for p in front] == [60, 80]  # (1,3) is the result; (1) and (2) are dominated
    assert result.pareto(1) == [front[0]] and result.pareto(0) == []


def test_regression_searches_on_squared_error(tokenizer, task_dir):
    from optc.train import add_task_head

    spec = "text-classification{regression=true}"
    _, module = tiny_bert(layers=2, seed=2)
    add_task_head(module, spec, spec=spec)
    task = get_task(spec)
    examples = task.read("val", task_dir)
    batches = prepare_batches(task, examples, tokenizer, 8, None, NAMES)
    runner = GatedRunner(module, task, batches, NAMES)
    got = runner.evaluate(Config())
    logits = optc.to_eager(module)(**{k: batches[0][k] for k in NAMES})["logits"].reshape(-1)
    want = (logits - batches[0]["labels"]) ** 2
    assert torch.allclose(got.losses[batches[0]["index"]], want, atol=1e-5)
    result = specialize(module, task, tokenizer, task_dir,
                        SearchOptions(k=3, neuron_groups=2, rule="metric", tolerance=5.0))
    assert result.main_metric == "pearson" and result.history
    with pytest.raises(PipelineSpecError, match="max_flips counts predicted classes.*regression"):
        specialize(module, task, tokenizer, task_dir, SearchOptions(rule="metric", max_flips=0.1))


def test_extractive_qa_searches_on_the_span_loss(tmp_path, tokenizer):
    from optc.tests.train.test_qa import _squad
    from optc.train import add_task_head

    data = _squad(tmp_path / "dev-v1.1.json", count=160)
    _, module = tiny_bert(layers=2, seed=2)
    add_task_head(module, "squad", seed=3)
    for name, param in module.params.items():
        if name.startswith("qa_outputs") or "start" in name or "end" in name:
            param.data = param.data * 20.0
    result = specialize(module, "squad", tokenizer, data,
                        SearchOptions(k=3, neuron_groups=2, max_length=48))
    assert result.history and result.baseline_metric is None
    assert all(h.metric is None and h.mean_loss > 0 for h in result.history)
    for rule in ("metric", "metric-loss"):
        with pytest.raises(PipelineSpecError, match=f"the {rule} rule needs per-example"):
            specialize(module, "squad", tokenizer, data, SearchOptions(rule=rule))


def test_latency_target_stops_after_an_acceptance(module, tokenizer, task_dir, monkeypatch):
    import optc.search.driver as driver

    monkeypatch.setattr(driver, "_latency_ratio", lambda before, after: 0.5)
    result = _search(module, tokenizer, task_dir, latency_target=0.6, rule="metric",
                     tolerance=100.0)
    assert result.stopped == "latency-target" and len(result.config.accepted) == 1
    with pytest.raises(PipelineSpecError, match="latency target"):
        SearchOptions(latency_target=1.5)


def test_importance_order_tries_dead_units_first_and_removes_them_together(
        module, tokenizer, task_dir):
    """Neurons and a head whose output weights are zero have zero Taylor importance: by
    importance they form the first group / the first head of their layer, and the metric rule
    accepts them at once; by position they are scattered over the groups."""
    structure = optc.ir.analysis.analyze(module)
    layer = structure.layers[1]
    dead = list(range(2, 64, 4))  # 16 of 64 neurons = one group of 4
    for node in (layer.ffn.down, layer.attention.output):  # copies: clones share tensors
        node.args[1].data = node.args[1].data.clone()
    down = layer.ffn.down.args[1].data
    down[:, dead] = 0.0
    out = layer.attention.output.args[1].data
    dim = layer.attention.head_dim
    out[:, 2 * dim:3 * dim] = 0.0
    kinds = ("ffn-groups", "heads")
    ranked = _search(module, tokenizer, task_dir, kinds=kinds, neuron_groups=4,
                     rule="metric", unit_order="importance")
    tried = [h for h in ranked.history if h.layer == layer.id]
    assert tried[0].kind == "ffn-groups" and tried[0].units == dead and tried[0].accepted
    first_head = next(h for h in tried if h.kind == "heads")
    assert first_head.units == [2] and first_head.accepted
    assert ranked.module.meta["specialization"]["unit_order"] == "importance"
    task, examples, batches = _batches(module, tokenizer, task_dir, limit=None)
    got = evaluate(task, optc.to_eager(ranked.module), examples, tokenizer, batch_size=8,
                   input_names=NAMES)
    masked = GatedRunner(module, task, batches, NAMES).evaluate(ranked.config)
    assert (got.losses - masked.losses).abs().max() <= 1e-5
    by_index = _search(module, tokenizer, task_dir, kinds=kinds, neuron_groups=4, rule="metric")
    assert all(h.units != dead for h in by_index.history if h.kind == "ffn-groups")
    parallel = _search(module, tokenizer, task_dir, kinds=kinds, neuron_groups=4,
                       rule="metric", unit_order="importance", workers=2)
    assert parallel.config == ranked.config



# -- a reference baseline and search rounds --------------------------------------------------
def _val_metric(module, tokenizer, task_dir):
    task, _, batches = _batches(module, tokenizer, task_dir, limit=None)
    outcome = GatedRunner(module, task, batches, NAMES).evaluate(Config())
    labels = [label for b in batches for label in b["labels"].tolist()]
    return outcome, task.compute_metrics(outcome.predictions, labels)[task.main_metric]


def test_a_reference_sets_the_baseline_candidates_are_judged_against(module, tokenizer,
                                                                     task_dir):
    reference = module.clone()  # the same model, more confident: a higher validation loss
    for name, param in reference.params.items():
        if name.startswith("classifier"):
            param.data = param.data * 1.5
    ref_outcome, ref_metric = _val_metric(reference, tokenizer, task_dir)
    options = SearchOptions(k=3, neuron_groups=3, rule="metric-loss", tolerance=100.0,
                            kinds=("heads", "ffn-groups"))
    own = specialize(module, TASK, tokenizer, task_dir, options)
    judged = specialize(module, TASK, tokenizer, task_dir, options, reference=reference)
    assert judged.baseline_metric == pytest.approx(ref_metric)
    assert judged.baseline_loss == pytest.approx(ref_outcome.mean_loss)
    assert judged.start_loss == pytest.approx(own.baseline_loss)
    assert own.baseline_loss < judged.baseline_loss
    assert judged.start_metric == pytest.approx(own.baseline_metric)
    assert judged.evaluations == len(judged.history) + 2  # the module and the reference
    # metric-loss: the mean loss is held to the reference's, not to the module's own
    for entry in judged.history:
        assert entry.accepted == (entry.mean_loss <= judged.baseline_loss)
    assert any(own.baseline_loss < h.mean_loss <= judged.baseline_loss for h in judged.history)
    assert len(judged.config.accepted) > len(own.config.accepted)
    with pytest.raises(InputError, match="has no task head"):
        specialize(module, TASK, tokenizer, task_dir, reference=tiny_bert(layers=1)[1])


def test_rounds_refit_between_and_judge_against_the_input(module, tokenizer, task_dir):
    kw = {"rule": "metric-loss", "tolerance": 100.0, "kinds": ("heads", "ffn-groups"),
          "unit_order": "importance"}  # accepted while the mean loss is at most the baseline's
    one = _search(module, tokenizer, task_dir, **kw)
    assert one.config.accepted, "the fixture's first round accepts something"
    two = _search(module, tokenizer, task_dir, rounds=3,
                  between="reconstruct{samples=64,batch_size=16}", **kw)
    first = [h for h in two.history if h.round == 1]
    assert [(h.label, h.layer, h.accepted, h.mean_loss) for h in first] == \
        [(h.label, h.layer, h.accepted, h.mean_loss) for h in one.history]
    assert two.rounds[0]["accepted"] == [dataclasses.asdict(c) for c in sorted(one.config.accepted)]
    later = [h for h in two.history if h.round == 2]
    assert later and len(two.rounds) >= 2
    assert [h.step for h in two.history] == list(range(1, len(two.history) + 1))
    # the refit ran between the rounds, toward the input module
    between = two.rounds[0]["between"]
    assert between[0]["pass"].startswith("reconstruct") and between[0]["modified"]
    assert between[0]["stats"]["refitted"] and two.rounds[0]["between_kept"]
    # round 2 searched the refitted model, judged against the input model's baseline
    assert two.baseline_loss == pytest.approx(one.baseline_loss)
    searched, searched_metric = _val_metric(two.searched, tokenizer, task_dir)
    assert two.rounds[-1]["start_val_metric"] == pytest.approx(searched_metric)
    assert two.rounds[-1]["start_loss"] == pytest.approx(searched.mean_loss)
    assert two.rounds[1]["start_loss"] != pytest.approx(one.best_loss)  # the refit changed it
    for entry in later:
        assert entry.accepted == (entry.mean_loss <= two.baseline_loss)
    # a round that accepts nothing ends the search
    assert len(two.rounds) == 3 or not two.rounds[-1]["accepted"]
    # what was committed is what the last round measured, and smaller than the input
    task, examples, _ = _batches(module, tokenizer, task_dir, limit=None)
    got = evaluate(task, optc.to_eager(two.module), examples, tokenizer, input_names=NAMES)
    last = [h for h in two.history if h.round == len(two.rounds) and h.accepted]
    expected = last[-1].mean_loss if last else two.rounds[-1]["start_loss"]
    assert got.mean_loss == pytest.approx(expected, abs=1e-5)
    assert two.flops_before == one.flops_before and two.flops_after <= one.flops_after
    assert two.params_before == module.num_parameters()
    spec = two.module.meta["specialization"]
    assert spec["rounds"] == len(two.rounds)
    assert len(spec["accepted"]) == sum(len(r["accepted"]) for r in two.rounds)
    assert two.summary()["rounds"] == two.rounds
    assert two.evaluations == sum(r["evaluations"] for r in two.rounds)


def test_a_refit_the_rule_refuses_is_not_handed_on(module, tokenizer, task_dir):
    kw = {"rule": "metric-loss", "tolerance": 100.0, "kinds": ("heads", "ffn-groups"),
          "unit_order": "importance"}
    one = _search(module, tokenizer, task_dir, **kw)
    # a "refit" that zeroes almost every weight raises the validation loss above the input's
    hurt = _search(module, tokenizer, task_dir, rounds=3, between="test-flip-head", **kw)
    info, second = hurt.rounds  # round 2 cannot bring the loss back: it accepts nothing
    assert not second["accepted"] and second["start_loss"] > hurt.baseline_loss
    assert info["between_kept"] is False and info["between"][0]["modified"]
    assert info["between_loss"] == pytest.approx(second["start_loss"])
    assert hurt.config == one.config and hurt.searched is None
    assert hurt.module.meta["specialization"]["rounds"] == 1
    loss, _ = validate(hurt.module, TASK, tokenizer, task_dir, SearchOptions())
    last = [h for h in one.history if h.accepted][-1]
    assert loss == pytest.approx(last.mean_loss, abs=1e-5)  # round 1's result, not flipped
    # the loss rule: a between pipeline that changes nothing is kept (equal loss)
    same = _search(module, tokenizer, task_dir, rounds=2, between="dce")
    assert same.rounds[0]["between_kept"] is True and len(same.rounds) == 2


def test_validate_measures_a_module_as_the_search_does(module, tokenizer, task_dir):
    options = SearchOptions(k=3, neuron_groups=3, rule="metric-loss", tolerance=100.0,
                            kinds=("heads", "ffn-groups"))
    result = specialize(module, TASK, tokenizer, task_dir, options)
    assert validate(module, TASK, tokenizer, task_dir, options) == pytest.approx(
        (result.baseline_loss, result.baseline_metric))
    last = [h for h in result.history if h.accepted][-1]
    loss, metric = validate(result.module, TASK, tokenizer, task_dir, options)
    assert loss == pytest.approx(last.mean_loss, abs=1e-5) and metric == pytest.approx(last.metric)
    assert loss != pytest.approx(result.baseline_loss)
    # another split size measures other examples
    other = validate(module, TASK, tokenizer, task_dir, dataclasses.replace(options, val_size=0.3))
    assert other[0] != pytest.approx(result.baseline_loss)
    with pytest.raises(InputError, match="has no task head"):
        validate(tiny_bert(layers=1)[1], TASK, tokenizer, task_dir)
    with pytest.raises(InputError, match="at least 20"):
        validate(module, TASK, tokenizer, task_dir, SearchOptions(val_limit=5))


def _write_examples(path, examples):
    path.write_text("text\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples))
    return path


def test_a_validation_file_replaces_the_split_carved_from_train(module, tokenizer, task_dir,
                                                                 tmp_path):
    options = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=2.0,
                            kinds=("ffn", "heads"), unit_order="importance")
    carved = specialize(module, TASK, tokenizer, task_dir, options)
    task = get_task(TASK)
    # the carved split written to a file: the same search, trial for trial
    same = _write_examples(tmp_path / "val.tsv", task.read("val", task_dir))
    from_file = specialize(module, TASK, tokenizer, task_dir,
                           dataclasses.replace(options, val_data=same))
    assert [(h.label, h.accepted) for h in from_file.history] == \
        [(h.label, h.accepted) for h in carved.history]
    assert [h.mean_loss for h in from_file.history] == pytest.approx(
        [h.mean_loss for h in carved.history], abs=1e-6)
    assert from_file.module.meta["specialization"]["validation"] == {"file": str(same)}
    assert from_file.validation == {"file": str(same)}
    assert carved.module.meta["specialization"]["validation"] == {"val_size": 0.15, "seed": 0}
    # other examples (the dev file, found in its directory by split name): other losses,
    # all of them counted, and validate() measures the same ones
    dev = task.read("dev", task_dir)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _write_examples(other_dir / "val.tsv", dev)
    other_options = dataclasses.replace(options, val_data=other_dir, val_limit=30)
    other = specialize(module, TASK, tokenizer, task_dir, other_options)
    assert other.validation_examples == 30
    direct = evaluate(task, optc.to_eager(module), dev[:30], tokenizer)
    assert other.baseline_metric == pytest.approx(direct.score)
    limited = validate(module, TASK, tokenizer, task_dir, dataclasses.replace(options, val_limit=30))
    assert limited[0] != pytest.approx(other.baseline_loss)
    assert validate(module, TASK, tokenizer, task_dir, other_options) == pytest.approx(
        (other.baseline_loss, other.baseline_metric))
    assert other.module.meta["specialization"]["validation"] == {"file": str(other_dir),
                                                                 "limit": 30}
    small = _write_examples(tmp_path / "small.tsv", dev[:5])
    with pytest.raises(InputError, match="has 5 examples.*a larger validation file"):
        specialize(module, TASK, tokenizer, task_dir, dataclasses.replace(options, val_data=small))
    with pytest.raises(InputError, match="no file for split 'val'"):
        validate(module, TASK, tokenizer, task_dir, dataclasses.replace(options, val_data=task_dir))


def test_a_flip_guard_refuses_candidates_that_change_many_predictions(module, tokenizer,
                                                                      task_dir):
    task = get_task(TASK)
    val = task.read("val", task_dir)
    _centre_the_head(module, tokenizer, [e.text for e in val])  # both classes predicted
    loose = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=100.0,
                          kinds=("ffn", "ffn-groups", "attention", "heads"), fine_threshold=1e9)
    free = specialize(module, TASK, tokenizer, task_dir, loose)
    guarded = specialize(module, TASK, tokenizer, task_dir,
                         dataclasses.replace(loose, max_flips=0.05))
    # a 100-point tolerance accepts anything: the guard alone decides, on each trial's flips
    tried = [h for h in guarded.history if h.mean_loss is not None]
    assert all(h.flips is not None for h in tried) and all(h.flips is None for h in free.history)
    assert [h.accepted for h in tried] == [h.flips <= 0.05 for h in tried]
    assert any(h.accepted for h in tried) and any(not h.accepted for h in tried)
    assert len(guarded.config.accepted) < len(free.config.accepted)
    # a flip is a validation example whose predicted class differs from the unpruned model's:
    # count them on the committed model, independently of the search
    before, after = (evaluate(task, optc.to_eager(m), val, tokenizer).predictions
                     for m in (module, guarded.module))
    share = sum(a != b for a, b in zip(before, after, strict=True)) / len(val)
    assert share == pytest.approx([h for h in tried if h.accepted][-1].flips) and share <= 0.05
    assert "flips" in guarded.table().splitlines()[0]
    assert "flips" not in free.table().splitlines()[0]
    assert guarded.module.meta["specialization"]["max_flips"] == 0.05
    for bad in (-0.1, 1.0):
        with pytest.raises(PipelineSpecError, match="flipped predictions is a fraction in"):
            SearchOptions(max_flips=bad)


def test_the_split_held_out_at_fine_tuning_is_searched_unless_told_otherwise():
    held = {"task": {"holdout": {"val_size": 0.2, "seed": 3}, "trained_steps": 50}}
    options, warning = holdout_options(SearchOptions(), held)
    assert (options.val_size, options.seed, warning) == (0.2, 3, None)
    assert holdout_options(SearchOptions(), held, val_size=0.2, seed=3)[1] is None
    # another split than the one held out: the model trained on part of it
    options, warning = holdout_options(SearchOptions(), held, seed=0)
    assert (options.val_size, options.seed) == (0.2, 0)
    assert "seed=0) is not the one held out at fine-tuning (val_size=0.2, seed=3)" in warning
    assert "trained on part of it" in holdout_options(SearchOptions(), held, val_size=0.3)[1]
    # trained on all of train (nothing recorded): the given or default split, and a warning
    all_train = {"task": {"trained_steps": 50}}
    options, warning = holdout_options(SearchOptions(), all_train, seed=4)
    assert (options.val_size, options.seed) == (0.15, 4) and "all of train" in warning
    # not fine-tuned by optc (e.g. a Hugging Face classifier): nothing to warn about
    options, warning = holdout_options(SearchOptions(val_size=0.1), {"task": None})
    assert (options.val_size, options.seed, warning) == (0.1, 0, None)


def test_rounds_stop_at_a_target_and_refuse_bad_options(module, tokenizer, task_dir):
    target = _search(module, tokenizer, task_dir, flops_target=0.999, rounds=3,
                     kinds=("attention", "ffn"), rule="metric", tolerance=100.0)
    assert target.stopped == "flops-target" and len(target.rounds) == 1
    assert target.searched is None
    emptied = _search(module, tokenizer, task_dir, rounds=2, kinds=("attention", "ffn"),
                      rule="metric", tolerance=100.0)  # every block goes in round 1
    assert not optc.ir.analysis.analyze(emptied.module).layers and len(emptied.rounds) == 1
    with pytest.raises(PipelineSpecError, match="rounds must be an integer >= 1"):
        SearchOptions(rounds=0)
    with pytest.raises(PipelineSpecError, match="unknown pass 'refit'"):
        SearchOptions(rounds=2, between="refit")


# -- confirmation on a held-out part of the validation examples -------------------------------
def _centre_the_head(module, tokenizer, texts):
    """A random encoder's pooled outputs are nearly alike: move the head's boundary to the
    median of its margins on ``texts``, so that the unpruned model predicts both classes."""
    task = get_task(TASK)
    batches = prepare_batches(task, [Example(s, label=0) for s in texts], tokenizer, 64, None,
                              NAMES)
    eager = optc.to_eager(module)
    margins = torch.cat([(lambda z: z[:, 1] - z[:, 0])(eager(**{k: b[k] for k in NAMES})["logits"])
                         for b in batches])
    bias = next(p for n, p in module.params.items() if n.startswith("classifier")
                and n.endswith("bias"))
    bias.data = bias.data - torch.stack([torch.zeros(()), margins.median()])


def _split_for_confirmation(module, tokenizer, path, total=80):
    """A validation file on which the search part and the held-out part disagree: on the
    examples the search judges the labels contradict the unpruned model's predictions (any
    candidate keeps its accuracy at >= 0), on the held-out ones they equal them (any change
    of prediction is a drop). Labels alternate, so the stratified split is known first."""
    from optc.tasks.splits import validation_split
    from optc.tests.train.conftest import sentences

    task = get_task(TASK)
    labels = [i % 2 for i in range(total)]
    _, held = validation_split(task.kind, labels, None, total, val_size=0.5, seed=0)
    pool = [s for s, _ in sentences(600, 7)]
    _centre_the_head(module, tokenizer, pool)
    predicted = evaluate(task, optc.to_eager(module), [Example(s, label=0) for s in pool],
                         tokenizer).predictions
    by_class = {c: [s for s, p in zip(pool, predicted, strict=True) if p == c] for c in (0, 1)}
    assert min(len(v) for v in by_class.values()) >= total, "the pool needs both predictions"
    rows, used = [], {0: 0, 1: 0}
    for i, label in enumerate(labels):
        shown = label if i in held else 1 - label  # the model's prediction for this text
        rows.append(f"{by_class[shown][used[shown]]}\t{label}")
        used[shown] += 1
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    return [r.split("\t")[0] for r in rows], set(held)


TOLERANCE = 40.0


def test_confirmation_cuts_the_acceptances_the_held_out_part_refuses(module, tokenizer,
                                                                     task_dir, tmp_path):
    from optc.search.driver import validation_examples

    texts, held = _split_for_confirmation(module, tokenizer, tmp_path / "val.tsv")
    options = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=TOLERANCE,
                            kinds=("ffn-groups", "heads"), val_data=tmp_path / "val.tsv",
                            confirm=0.5)
    task = get_task(TASK)
    # the parts: disjoint, together the file, the search judging the one it is given
    searched = validation_examples(task, task_dir, options)
    assert [e.text for e in searched] == [t for i, t in enumerate(texts) if i not in held]
    result = specialize(module, TASK, tokenizer, task_dir, options)
    assert result.validation_examples == 40 and result.baseline_metric == 0.0
    info = result.confirmation
    assert info["examples"] == 40 and info["baseline_metric"] == 100.0
    # the search part accepts every trial; the held-out part keeps the longest prefix that
    # changes at most TOLERANCE% of its predictions, found here by evaluating every prefix
    order = [Candidate(h.kind, h.layer, tuple(h.units)) for h in result.history
             if h.accepted or h.note == "cut by confirmation"]
    assert len(order) == info["of"] == len(result.history) == 14
    held_examples = [Example(t, label=i % 2) for i, t in enumerate(texts) if i in held]
    batches = prepare_batches(task, held_examples, tokenizer, 32, None, NAMES)
    runner = GatedRunner(module=module, task=task, batches=batches, input_names=NAMES,
                         prefix_reuse=False)
    expect, config = 0, Config()
    for count, cand in enumerate(order, 1):
        config = config.with_(cand)
        predictions = runner.evaluate(config).predictions
        same = sum(p == e.label for p, e in zip(predictions, held_examples, strict=True))
        if 100 * same / len(held_examples) >= 100 - TOLERANCE:
            expect = count
    assert 0 < expect < len(order), "the constructed case should cut some, keep some"
    assert info["kept"] == expect
    assert [p["accepted"] for p in info["prefixes"]] == list(range(len(order), expect - 1, -1))
    assert [p["passes"] for p in info["prefixes"]] == [False] * (len(order) - expect) + [True]
    assert info["prefixes"][-1]["flops"] == result.flops_after
    # the committed model is the kept prefix; the rest is recorded as cut
    assert result.config.accepted == frozenset(order[:expect])
    assert [h.accepted for h in result.history] == [True] * expect + [False] * (14 - expect)
    assert {h.note for h in result.history[expect:]} == {"cut by confirmation"}
    assert result.best_metric == result.history[expect - 1].metric
    assert result.evaluations == 1 + 14 + 1 + len(info["prefixes"])
    kept_loss = validate(result.module, TASK, tokenizer, task_dir, options)[0]
    assert kept_loss == pytest.approx(result.history[expect - 1].mean_loss, abs=1e-5)
    meta = result.module.meta["specialization"]["confirmation"]
    assert (meta["kept"], meta["of"], meta["examples"]) == (expect, 14, 40)
    assert result.summary()["confirmation"]["kept"] == expect


def test_confirmation_runs_each_round_and_refuses_bad_shares(module, tokenizer, task_dir):
    options = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=100.0,
                            kinds=("heads",), val_size=0.4, confirm=0.5, rounds=2,
                            between="dce")
    result = specialize(module, TASK, tokenizer, task_dir, options)
    # everything passes a 100-point tolerance: round 1 keeps all it accepted (one
    # evaluation of the held-out part confirms it), round 2 (the same model after dce) has
    # nothing left to try, so nothing to confirm
    first = result.rounds[0]["confirmation"]
    assert first["kept"] == first["of"] == len(result.rounds[0]["accepted"]) > 0
    assert "confirmation" not in result.rounds[1] and result.confirmation == {}
    assert len(first["prefixes"]) == 1 and first["examples"] == 40
    assert result.validation_examples == 40
    for share in (1.0, -0.1):
        with pytest.raises(PipelineSpecError, match="confirmation share is a fraction"):
            SearchOptions(confirm=share)
    with pytest.raises(InputError, match="30 examples: 15 to search and 15 to confirm with "
                                         "--confirm 0.5; each part needs at least 20"):
        specialize(module, TASK, tokenizer, task_dir, SearchOptions(confirm=0.5))


def test_the_between_pipeline_trains_on_the_search_device(module, tokenizer, task_dir,
                                                          monkeypatch):
    """``device``/``precision`` (``optc specialize --device/--precision``) reach the training
    passes between rounds through their PassContext."""
    from optc.passes.manager import PassManager

    seen = []
    real = PassManager.run

    def run(self, module, ctx=None):
        seen.append(ctx)
        return real(self, module, ctx)

    monkeypatch.setattr(PassManager, "run", run)
    _search(module, tokenizer, task_dir, rounds=2, between="dce", precision="bf16")
    contexts = [c for c in seen if c is not None and c.precision == "bf16"]
    assert contexts and all(c.device == "cpu" for c in contexts)
