"""The tolerance contract of optc specialize: the fastest point within --max-drop on a
held-out part the search never sees, int8 inside the same tolerance, the input unchanged
when nothing fits, recipes (files checked with one-line errors; old flags replay the
published recipe), and a time budget or Ctrl-C ending with a written result.

Latency is replaced by a deterministic stand-in (proportional to FLOPs, halved by int8)
wherever a test checks which point is chosen: the choice is what is tested, not the timer
(:func:`test_backend_latencies_time_every_target` measures for real)."""

from __future__ import annotations

import json
import signal

import pytest

import optc
import optc.search.contract as contract_module
from optc.errors import PipelineSpecError
from optc.ir.analysis import module_flops
from optc.search import Config, GatedRunner, SearchOptions, prepare_batches
from optc.search.contract import ContractOptions, Target, specialize_within
from optc.search.driver import held_out_examples, validation_examples
from optc.search.measure import backend_latencies
from optc.search.recipe import RECIPES, load_recipe
from optc.tasks import get_task
from optc.tests.search.conftest import TASK
from optc.tests.search.test_search import NAMES, _split_for_confirmation
from optc.tools.cli.main import main
from optc.tools.cli.specialize import choose_recipe, specialize_parser
from optc.tools.reports.report import pareto_plot

DROP = 40.0


def _int8(module) -> bool:
    import torch

    return any(p.data.dtype == torch.int8 for p in module.params.values())


def _latency(modules, *args, **kwargs):
    return [module_flops(m, 128) / 1e6 * (0.5 if _int8(m) else 1.0) for m in modules]


@pytest.fixture
def split_file(module, tokenizer, tmp_path):
    """80 examples: on the half the search sees, the labels contradict the input's
    predictions (every candidate looks no worse); on the held-out half they equal them
    (every changed prediction is a drop)."""
    path = tmp_path / "val.tsv"
    _split_for_confirmation(module, tokenizer, path)
    return path


def _held_out_metric(module, tokenizer, task_dir, options, config=Config()):  # noqa: B008
    task = get_task(TASK)
    held = held_out_examples(task, task_dir, options)
    batches = prepare_batches(task, held, tokenizer, 32, None, NAMES)
    outcome = GatedRunner(module=module, task=task, batches=batches, input_names=NAMES,
                          prefix_reuse=False).evaluate(config)
    return task.compute_metrics(outcome.predictions, [e.label for e in held])["accuracy"]


def test_the_fastest_point_within_the_tolerance_is_chosen_and_int8_is_checked_with_it(
        module, tokenizer, task_dir, split_file, monkeypatch):
    monkeypatch.setattr(contract_module, "backend_latencies", _latency)
    options = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=DROP,
                            kinds=("heads",), val_data=split_file, holdout=0.5)
    task = get_task(TASK)
    seen, held = validation_examples(task, task_dir, options), held_out_examples(
        task, task_dir, options)
    assert len(seen) == len(held) == 40
    assert not {e.text for e in seen} & {e.text for e in held}  # the search never sees it
    result = specialize_within(module, TASK, tokenizer, task_dir, options,
                               ContractOptions(max_drop=DROP, int8="on"))
    assert result.input.held_out == 100.0 and result.search_examples == 40
    floor = 100.0 - DROP
    checked = [p for p in result.points if p.held_out is not None]
    assert all(p.within == (p.held_out >= floor) for p in checked)
    beyond = [p for p in checked if not p.within]
    assert beyond, "the constructed case has points beyond the tolerance"
    chosen = result.chosen
    assert chosen.within and chosen not in beyond and chosen is not result.input
    measured = [p for p in result.points if p.within]
    assert chosen.latency_ms == min(p.latency_ms for p in measured) < result.input.latency_ms
    # the search accepted candidates the held-out part refuses: they were not chosen
    assert any(len(p.config.accepted) > len(chosen.config.accepted) for p in beyond)
    # int8 ran inside the contract: each int8 point was judged on the held-out part too,
    # and (at half the latency) the chosen point is int8 whenever one passed
    quantized = [p for p in result.points if p.int8]
    assert quantized and chosen.int8 == any(p.within for p in quantized)
    assert _int8(result.module) == chosen.int8
    tables = [n for n in result.module.graph if n.op == "embedding"]  # as quantize's default
    assert tables and all((n.arg(2) is not None) == chosen.int8 for n in tables)
    # what is written is the chosen point: its held-out figure, its interval
    assert module_flops(result.module, 128) == chosen.flops
    assert _held_out_metric(result.module, tokenizer, task_dir, options) == chosen.held_out
    change = result.held_out_change
    assert (change.before, change.after) == (100.0, chosen.held_out)
    assert change.low <= change.delta <= change.high
    front = result.front()
    assert front[0] is chosen and all(a.latency_ms <= b.latency_ms and a.held_out < b.held_out
                                      for a, b in zip(front, front[1:], strict=False))


def test_nothing_faster_writes_the_input_unchanged_with_one_line(module, task_dir, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.setattr(contract_module, "backend_latencies",
                        lambda modules, *a, **k: [1.0] + [2.0] * (len(modules) - 1))
    model = tmp_path / "model"
    optc.save(module, model, extra={"task": module.meta["task"]})
    out = tmp_path / "spec"
    code = main(["specialize", str(model), "--data", str(task_dir), "-o", str(out),
                 "--max-drop", "100", "--val-size", "0.4", "--k", "3", "--groups", "3",
                 "--kinds", "heads", "--int8", "off", "--no-dev", "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    line = ("no candidate within --max-drop 100 on the held-out part is faster than the input "
            "on eager: wrote the input unchanged")
    assert line in printed.splitlines()
    written, original = optc.load_module(out), optc.load_module(model)
    assert written.num_parameters() == original.num_parameters()
    assert all((written.params[n].data == p.data).all() for n, p in original.params.items())
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["specialization"]["contract"]["fallback"] == line
    # optc report draws the front with the input (here also the chosen point) marked
    svg = pareto_plot(meta["specialization"])
    assert svg is not None and "Pareto front" in svg and "chosen" in svg and "input" in svg
    assert meta.get("pipeline", []) == original.meta.get("pipeline", [])


@pytest.mark.parametrize("text, message", [
    ("rule = 'best'\n", "unknown acceptance rule 'best'"),
    ("sweeps = 'two'\n", "'sweeps' must be an integer, got 'two'"),
    ("tolerance = nan\n", "'tolerance' must be a number, got nan"),
    ("speed = 3\n", "unknown key 'speed'; valid keys: base, rule"),
    ("base = 'fast'\n", "base 'fast' is not a built-in recipe"),
    ("holdout = 1.5\n", "'holdout' is a fraction in (0, 1), got 1.5"),
    ("base = 'published'\nholdout = 0.3\n", "the published recipe has no contract"),
    ("rule = \n", "not valid TOML"),
])
def test_recipe_files_are_checked_with_one_line_errors(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text)
    with pytest.raises(PipelineSpecError, match="recipe .*recipe.toml: "):
        load_recipe(recipe)
    out = tmp_path / "spec"
    code = main(["specialize", str(tmp_path / "no-such-model"), "-o", str(out), "-q",
                 "--recipe", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err  # before the missing model (exit 3): the recipe is checked first
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_a_recipe_file_sets_the_search_and_old_flags_replay_the_published_recipe(tmp_path,
                                                                                capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("# structure only, two sweeps\nkinds = ['ffn', 'heads']\nsweeps = 2\n"
                      "tolerance = 'max-drop'\nholdout = 0.3\nhard_attention = 'off'\n")
    loaded = load_recipe(recipe)
    options = loaded.options(SearchOptions(), 0.5)
    assert (options.kinds, options.sweeps, options.tolerance, options.holdout) == (
        ("ffn", "heads"), 2, 0.5, 0.3)
    assert (options.rule, options.unit_order) == ("metric", "importance")  # from base default
    assert loaded.hard_attention == "off"
    parse = specialize_parser().parse_args
    # the published recipe is the paper's procedure: the search's defaults, no held-out part
    published = RECIPES["published"].options(SearchOptions(), None)
    assert published == SearchOptions()
    old = choose_recipe(parse(["m", "-o", "x", "--rule", "metric", "--tolerance", "2",
                               "--sweeps", "3"]))
    assert old.published and old.options(SearchOptions(), None) == SearchOptions(
        rule="metric", tolerance=2.0, sweeps=3)
    new = choose_recipe(parse(["m", "-o", "x", "--max-drop", "0.5", "--k", "3"]))
    assert not new.published and new.options(SearchOptions(), 0.5).k == 3
    assert choose_recipe(parse(["m", "-o", "x"])).name == "default"
    assert main(["specialize", "m", "-o", str(tmp_path / "o"), "--recipe", "published",
                 "--max-drop", "1"]) == 2
    assert "the published recipe has no tolerance contract: drop --max-drop" in \
        capsys.readouterr().err
    shown = specialize_parser().format_help()
    for flag in ("--max-drop", "--backend", "--threads", "--batch", "--int8", "--time-budget",
                 "--workers", "--recipe", "--force", "--data", "--task"):
        assert flag in shown
    for flag in ("--rule", "--tolerance", "--sweeps", "--rounds", "--between", "--confirm",
                 "--max-flips", "--unit-order", "--fine-threshold", "--kinds"):
        assert flag not in shown


def test_ctrl_c_or_a_time_budget_ends_with_the_best_point_so_far(module, task_dir, tmp_path,
                                                                  capsys, monkeypatch, request):
    monkeypatch.setattr(contract_module, "backend_latencies", _latency)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    real = contract_module.specialize

    def interrupted(*args, progress=None, **kwargs):
        def trial(entry):
            progress(entry)
            if entry.step == 2:
                signal.raise_signal(signal.SIGINT)  # a Ctrl-C during the search
        return real(*args, progress=trial, **kwargs)

    monkeypatch.setattr(contract_module, "specialize", interrupted)
    model = tmp_path / "model"
    optc.save(module, model, extra={"task": module.meta["task"]})
    out = tmp_path / "spec"
    args = ["specialize", str(model), "--data", str(task_dir), "--max-drop", "100",
            "--val-size", "0.4", "--k", "3", "--groups", "3", "--kinds", "heads", "--int8",
            "off", "--no-dev", "--json"]
    assert main([*args, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "interrupted: finishing with the best point found so far" in captured.err
    record = json.loads(captured.out)
    assert record["stopped"] == "interrupted" and len(record["history"]) == 2
    chosen = record["contract"]["points"][record["contract"]["chosen"]]
    assert 0 < len(chosen["accepted"]) <= 2  # from what was found before Ctrl-C
    assert optc.load_module(out).num_parameters() < optc.load_module(model).num_parameters()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    # a spent time budget: nothing more is tried, and a result is still written
    monkeypatch.setattr(contract_module, "specialize", real)
    assert main([*args, "-o", str(tmp_path / "budget"), "--time-budget", "0.001"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["stopped"] == "time-budget" and not record["history"]
    assert record["contract"]["fallback"].endswith("wrote the input unchanged")
    assert (tmp_path / "budget" / "metadata.json").exists()


def test_backend_latencies_time_every_target(module):
    for backend, modules in (("eager", [module, module.clone()]),
                             ("torchscript", [module, module.clone()]),
                             ("onnx", [module])):  # one export: the slow part
        times = backend_latencies(modules, backend, batch=2, seq=16, threads=1, blocks=1,
                                  per_block=2)
        assert len(times) == len(modules) and all(t > 0 for t in times)
    with pytest.raises(PipelineSpecError, match="unknown backend 'tvm'"):
        backend_latencies([module], "tvm")


def test_a_cuda_device_without_cuda_is_one_line_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["specialize", str(tmp_path / "missing"), "-o", str(tmp_path / "o"),
                 "--device", "cuda"]) == 3
    err = capsys.readouterr().err
    assert "torch sees no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_a_point_whose_onnx_file_differs_from_the_ir_is_dropped_with_a_note(
        module, tokenizer, task_dir, split_file, monkeypatch):
    """On an ONNX target every passing point is self-checked as the writer does; here the
    int8 points' files are made to fail it (as int8 MPNet's do today)."""
    monkeypatch.setattr(contract_module, "backend_latencies", _latency)
    checked = []

    def problem(m, backend):
        checked.append(_int8(m))
        return "onnx self-check failed: differs by 0.3" if _int8(m) else None

    monkeypatch.setattr(contract_module, "_lowering_problem", problem)
    options = SearchOptions(k=3, neuron_groups=3, rule="metric", tolerance=DROP,
                            kinds=("heads",), val_data=split_file, holdout=0.5)
    result = specialize_within(module, TASK, tokenizer, task_dir, options,
                               ContractOptions(max_drop=DROP, int8="on",
                                               target=Target("onnx")))
    assert True in checked and not result.chosen.int8 and not _int8(result.module)
    assert all(not p.within for p in result.points if p.int8)
    assert any("dropped, onnx self-check failed" in n for n in result.notes)


class _PerTokenJudge:
    """Scores 100 only for modules whose FFN linears quantize activations per token (and for
    float ones): the stand-in for a model with outlier activations."""

    labels: list = []

    def outcome(self, module):
        return module

    def metric(self, module) -> float:
        ffn = [n for _, _, n in contract_module.linear_targets(module, ("ffn",))]
        per_tensor = [n for n in ffn if n.arg(3) is not None and n.attr("act_scales") != "token"]
        return 50.0 if per_tensor else 100.0


def test_int8_takes_per_token_scales_where_per_tensor_breaks_the_tolerance(module):
    point = contract_module.Point("input", Config(), False, 100.0)
    judge, notes = _PerTokenJudge(), []
    q_point, q_module = contract_module._int8_point(point, module, judge, judge, 100.0, 99.0,
                                                    1.0, notes)
    assert q_point.within and q_point.token_scales == ("ffn",) and not q_point.fp32_layers
    assert q_point.label == "input + int8 (per-token ffn)" and not notes
    rebuilt = contract_module._build(module, module, q_point)
    tokens = [n for n in rebuilt.graph if n.attr("act_scales") == "token"]
    assert tokens and len(tokens) == len([n for n in q_module.graph
                                          if n.attr("act_scales") == "token"])
    assert q_point.to_json()["token_scales"] == ["ffn"]


class _CountingJudge:
    """Loses 3 points per int8 layer (any scheme); counts its evaluations."""

    labels: list = []

    def __init__(self) -> None:
        self.calls = 0

    def outcome(self, module):
        self.calls += 1
        return module

    def metric(self, module) -> float:
        layers = {pos for pos, _, n in contract_module.linear_targets(module, ("attention", "ffn"))
                  if n.arg(3) is not None}
        return 100.0 - 3.0 * len(layers)


def test_int8_keeps_the_fewest_costly_layers_in_fp32_found_by_bisection(module):
    layers = contract_module._int8_layers(module)
    assert len(layers) >= 2
    point = contract_module.Point("input", Config(), False, 100.0)
    seen, held = _CountingJudge(), _CountingJudge()
    q_point, q_module = contract_module._int8_point(point, module, seen, held, 100.0, 96.0, 4.0,
                                                    [])
    # within 4 points: one int8 layer at most, so all but one go back to fp32
    assert len(q_point.fp32_layers) == len(layers) - 1 and q_point.within
    assert q_point.label.endswith(" in fp32") and "layers " in q_point.label
    assert q_point.token_scales == contract_module.INT8_SCHEMES[-1]
    assert seen.metric(q_module) == 97.0
    schemes, alone = len(contract_module.INT8_SCHEMES), len(layers)
    assert seen.calls <= schemes + alone + 1 + max(1, (len(layers) - 1).bit_length())
