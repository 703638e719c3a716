"""l0-prune: committing hard gates equals the gated model, the pass end to end (size reached,
every backend agrees, deterministic), and bad input refused with the IR unchanged."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.eager import to_eager
from optc.errors import PassError, PipelineSpecError
from optc.ir import print_module
from optc.ir.analysis import analyze
from optc.passes import PassContext, parse_pipeline
from optc.passes import l0_prune as l0
from optc.tests.conftest import assert_backends_agree, assert_refused_unchanged
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.train import trainable
from optc.train.gates import L0Gates, size_model

TASK = "text-classification"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("l0")
    write_tokenizer(root / "tok")
    write_task(root / "task")
    (root / "empty").mkdir()
    (root / "empty" / "train.tsv").write_text("text\tlabel\n")
    (root / "empty" / "dev.tsv").write_text("text\tlabel\n")
    return root


def _module(root, layers: int = 2):
    _, module = tiny_bert(layers=layers)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    return module


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 33, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _gated_outputs(module, size, gates, inputs) -> dict[str, torch.Tensor]:
    """The module with the gates inserted by the training edit, fed fixed hard gates."""
    hooks = L0Gates(size, 0.5)
    model = trainable(module, dropout=0.0, edit=hooks.edit)
    model.eval()
    model.extra_inputs = {g.input_name: gates[g.input_name] for g in size.groups}
    with torch.no_grad():
        return model(**inputs)


def _fixed_gates(size) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    gates = {}
    for g in size.groups:
        z = torch.rand(g.count, generator=gen)
        z[torch.rand(g.count, generator=gen) < 0.4] = 0.0
        z[torch.rand(g.count, generator=gen) < 0.2] = 1.0
        gates[g.input_name] = z
    heads0, heads1 = size.groups[0].input_name, size.groups[2].input_name
    gates[heads0] = torch.tensor([0.0, 0.5, 1.0, 0.25])
    gates[heads1] = torch.zeros(4)  # a whole attention block goes
    return gates


def test_commit_equals_the_gated_model_with_hard_gates_on_every_backend() -> None:
    _, module = tiny_bert(layers=2)
    size = size_model(module, analyze(module), "flops", seq=16)
    gates = _fixed_gates(size)
    inputs = _inputs()
    expected = _gated_outputs(module, size, gates, inputs)
    committed = module.clone()
    done = l0.commit_gates(committed, size, gates)
    optc.verify(committed)
    got = to_eager(committed)(**inputs)
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    neurons = [int((gates[g.input_name] == 0).sum()) for g in size.groups if g.kind == "neuron"]
    assert done["heads"] == {0: 1, 1: 4} and list(done["neurons"].values()) == neurons
    layers = analyze(committed).layers
    assert layers[0].attention.num_heads == 3 and layers[1].attention is None
    assert [x.ffn.width for x in layers] == [64 - n for n in neurons]
    assert layers[0].attention.head_ids == [1, 2, 3]
    assert done["folded"] == sum(int(((z > 0) & (z < 1)).sum()) for z in gates.values())
    assert_backends_agree(committed, inputs)


def test_enforce_target_closes_the_lowest_scores_until_the_target_is_met() -> None:
    _, module = tiny_bert(layers=2)
    size = size_model(module, analyze(module), "params")
    gates = {g.input_name: torch.ones(g.count) for g in size.groups}
    scores = {g.input_name: torch.arange(g.count, dtype=torch.float32) + 10 * i
              for i, g in enumerate(size.groups)}
    closed = l0.enforce_target(size, gates, scores, 0.8)
    fraction = float(size.fraction({k: (v > 0).float() for k, v in gates.items()}))
    assert closed > 0 and fraction <= 0.8
    first = size.groups[0].input_name
    assert gates[first][0] == 0  # the lowest score went first
    assert l0.enforce_target(size, gates, scores, 0.8) == 0  # already met: nothing more
    # no more than needed: reopening the last unit closed misses the target again
    last = max(((float(scores[k][i]), k, i) for k, z in gates.items() for i in range(len(z))
                if z[i] == 0))
    gates[last[1]][last[2]] = 1.0
    assert float(size.fraction({k: (v > 0).float() for k, v in gates.items()})) > 0.8


def test_l0_prune_pipeline_reaches_the_target_and_equals_the_gated_model(setup, monkeypatch) -> None:
    captured = {}
    real = l0.commit_gates

    def spy(module, size, gates):
        captured.update(module=module.clone(), size=size, gates={k: v.clone() for k, v in gates.items()})
        return real(module, size, gates)

    monkeypatch.setattr(l0, "commit_gates", spy)
    module = _module(setup)
    report = optc.run_pipeline(
        module, f"l0-prune{{task={TASK},target_flops=0.5,max_steps=24,epochs=10,batch_size=16,"
                f"lr=1e-3,gate_lr=0.2,lambda_lr=0.2,target_warmup=6,max_length=32,"
                f"data={setup / 'task'}}}")
    stats = report.records[0].stats
    assert report.records[0].modified and stats["steps"] == 24
    assert stats["teacher"] == "pipeline-input" and stats["measure"] == "flops"
    assert stats["flops_ratio"] <= 0.5 and stats["params_ratio"] < 1
    first, last = (float(x) for x in stats["expected_size"].split("->"))
    assert first > 0.9 and last < first
    removed = [int(x) for x in stats["heads_removed_per_layer"].split(",")]
    assert sum(removed) == stats["heads_removed"] and len(removed) == 2
    assert stats["heads_removed"] + stats["neurons_removed"] > 0
    assert list(module.graph.outputs) == ["logits"]
    optc.verify(module)
    inputs = _inputs(1)
    expected = _gated_outputs(captured["module"], captured["size"], captured["gates"], inputs)
    torch.testing.assert_close(to_eager(module)(**inputs)["logits"], expected["logits"],
                               atol=1e-5, rtol=0)
    assert_backends_agree(module, inputs)


def test_same_seed_same_result(setup) -> None:
    spec = (f"l0-prune{{task={TASK},target_params=0.6,max_steps=4,batch_size=16,lr=1e-3,"
            f"gates=heads,neurons,layers,eval_split=none,data={setup / 'task'}}}")
    a, b = _module(setup), _module(setup)
    sa = optc.run_pipeline(a, spec).records[0].stats
    sb = optc.run_pipeline(b, spec).records[0].stats
    assert sa == sb and print_module(a) == print_module(b)
    for name, p in a.params.items():
        assert torch.equal(p.data, b.params[name].data)
    assert sa["params_ratio"] <= 0.6


@pytest.mark.parametrize("options, match", [
    ("target_flops=1.5", "not smaller than the model"),
    ("target_flops=1", "not smaller than the model"),
    ("target_params=0", "fraction in"),
    ("target_flops=0.5,target_params=0.5", "exactly one of"),
    ("", "exactly one of"),
    ("target_flops=0.5,gates=layers", "heads and/or neurons"),
    ("target_flops=0.5,init_drop=1", "init_drop"),
])
def test_bad_options(options, match) -> None:
    with pytest.raises(PipelineSpecError, match=match):
        parse_pipeline(f"l0-prune{{{options}}}")


def test_bad_input_leaves_the_module_unchanged(setup) -> None:
    module = _module(setup)
    text = print_module(module)
    with pytest.raises(PassError, match="no training examples|empty"):
        optc.run_pipeline(module, f"l0-prune{{task={TASK},target_flops=0.5,data={setup / 'empty'}}}")
    assert print_module(module) == text
    with pytest.raises(PassError, match="below what removing every gated unit leaves") as info:
        optc.run_pipeline(module, f"l0-prune{{task={TASK},target_params=0.05,gates=heads,"
                                  f"data={setup / 'task'}}}")
    assert info.value.exit_code == 5  # a target this model cannot reach: the pass fails
    assert print_module(module) == text
    assert_refused_unchanged(module, "l0-prune{target_flops=0.5}", "needs a task")


def test_bench_compress_l0_section_smoke(setup, tmp_path, capsys) -> None:
    from optc.tools.bench.compress import main
    from optc.train import add_task_head

    module = _module(setup)
    add_task_head(module, TASK, seed=3)
    optc.save(module, tmp_path / "model")
    code = main(["--model", str(tmp_path / "model"), "--task", TASK, "--data", str(setup / "task"),
                 "--sections", "dense,l0", "--max-steps", "3", "-q",
                 "--l0-spec", "l0-prune{target_flops=0.5,target_warmup=1}"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()[2:]
    assert [line.split("  ")[0] for line in lines] == ["dense", "l0", "l0"]
    assert "l0-prune{target_flops=0.5,target_warmup=1}" in lines[1]
    assert "magnitude" in lines[2] and "+ distill" in lines[2]
    flops = [float(line.split()[-1]) for line in lines[1:]]
    assert flops[0] <= 0.5 and abs(flops[1] - flops[0]) < 0.1  # the baseline matches its FLOPs


def test_progress_shows_the_expected_size_and_interrupt_leaves_the_module(setup) -> None:
    module = _module(setup)
    text = print_module(module)
    seen = []

    def progress(info) -> None:
        seen.append(info)
        if info.step == 2:
            raise KeyboardInterrupt

    p = parse_pipeline(f"l0-prune{{task={TASK},target_flops=0.5,max_steps=5,batch_size=16,"
                       f"eval_split=none,data={setup / 'task'}}}")[0]
    with pytest.raises(KeyboardInterrupt):
        p.run(module, PassContext(reference=module.clone(), progress=progress))
    assert print_module(module) == text  # no head added, nothing pruned
    assert [s.step for s in seen] == [1, 2] and seen[0].total == 5
    terms = seen[0].terms
    assert {"expected_size", "target", "size", "lagrangian", "lambda1", "lambda2"} <= set(terms)
    assert terms["target"] == 1.0 > seen[1].terms["target"]  # the ramp from 1 (half of 5 steps)
    assert 0.9 < terms["expected_size"] <= 1.0


def test_commit_equals_the_gated_model_on_a_grouped_query_swiglu_decoder() -> None:
    from optc.tests.frontends.llm_cases import llm_captured, llm_inputs

    model, module = llm_captured("llama")  # 4 query heads over 2 kv heads, SwiGLU FFN
    module = module.clone()
    size = size_model(module, analyze(module), "flops", seq=16)
    gates = _fixed_gates(size)
    inputs = llm_inputs(model)
    expected = _gated_outputs(module, size, gates, inputs)
    committed = module.clone()
    done = l0.commit_gates(committed, size, gates)
    optc.verify(committed)
    got = to_eager(committed)(**inputs)
    torch.testing.assert_close(got["last_hidden_state"], expected["last_hidden_state"],
                               atol=1e-5, rtol=0)
    assert done["heads"] == {0: 1, 1: 4}
    ffn = analyze(committed).layers[0].ffn
    assert ffn.gated is not None and ffn.width == 64 - done["neurons"][0]
