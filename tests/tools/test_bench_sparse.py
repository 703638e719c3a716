"""tools/bench/sparse.py: crossover logic on fixed rows, and smoke runs of both tables."""

from __future__ import annotations

import re

from optc.tools.bench.sparse import crossovers, main


def _row(sparsity, ratio, pattern="unstructured", threads=1, batch=1):
    return {"pattern": pattern, "sparsity": sparsity, "threads": threads, "batch": batch,
            "ratio": ratio}


def test_crossover_is_the_lowest_sparsity_from_which_auto_keeps_winning():
    rows = [_row(0.5, 1.0), _row(0.8, 0.9), _row(0.9, 0.97), _row(0.95, 0.6),
            _row(0.5, 1.0, "block4x4"), _row(0.8, 0.8, "block4x4"), _row(0.9, 0.7, "block4x4"),
            _row(0.5, 1.0, batch=8), _row(0.9, 1.01, batch=8)]
    got = crossovers(rows)
    # 0.8 wins but 0.9 does not: the crossover is where winning stays true
    assert got[("unstructured", 1, 1)] == 0.95
    assert got[("block4x4", 1, 1)] == 0.8
    assert got[("unstructured", 1, 8)] is None


def test_quick_run_on_minilm_prints_the_table(capsys):
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["pattern", "sparsity", "thr", "batch", "dense", "ms"]
    row = re.match(r"unstructured\s+0\.90\s+1\s+1\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(.*)", lines[1])
    assert row, lines[1]
    dense, auto, ratio = (float(row[i]) for i in (1, 2, 3))
    assert dense > 0 and auto > 0 and abs(ratio - auto / dense) < 0.02
    # MiniLM has 36 encoder projections: every one is planned
    assert sum(int(n) for n in re.findall(r"(\d+)", row[4])) == 36
    assert "crossover" in out and "unstructured threads 1 batch 1:" in out
    assert re.search(r"auto within 5% of dense everywhere: (yes|NO) \((worst auto/dense|auto chose "
                     r"dense everywhere)", out)


def test_per_shape_table(capsys):
    assert main(["--per-shape", "--batch", "1", "--seq", "8", "--threads", "1", "--sparsity",
                 "0.9", "--rounds", "1", "--block", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("1      8")]
    assert len(rows) == 3 and "ffn up 1536x384" in out
    assert "csr: faster than dense at sparsities" in out


def test_gpu_check_script_runs_its_steps_on_cpu_and_refuses_without_cuda(capsys):
    import torch

    from optc.tools.checks import gpu_semi_structured as gpu

    if not torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "no CUDA device" in capsys.readouterr().out
    assert gpu.main(["--cpu-dry-run", "--layers", "1", "--batch", "2", "--seq", "16",
                     "--rounds", "1", "--block", "1", "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    assert "ok   float32: csr kernels for every 2:4 weight ({'csr': 6})" in out
    assert re.search(r"ok   float32 batch 2 seq 16: csr vs dense max rel diff", out)
    assert "0 check(s) failed" in out and "FAIL" not in out


def test_plan_description_counts_row_limited_weights():
    from optc.backends.sparse_exec import LayerChoice, SparsePlan
    from optc.tools.bench.sparse import describe_plan

    layers = tuple(LayerChoice(f"w{i}", (4, 4), "unstructured", 0.1, kernel, max_tokens=limit)
                   for i, (kernel, limit) in enumerate([("csr", None), ("csr", 128), ("csr", 128),
                                                        ("dense", None)]))
    assert describe_plan(SparsePlan("auto", 1, layers)) == "csr 3 (2 up to 128 rows), dense 1"


def test_whole_model_line_lists_each_try_then_the_decision():
    from optc.backends.sparse_exec import ModelCheck, SparsePlan
    from optc.tools.bench.sparse import whole_model_line

    checks = (ModelCheck(128, 1, 128, 36, 40.0, 30.0, True),
              ModelCheck(1024, 8, 128, 36, 300.0, 321.0, False))
    plan = SparsePlan("auto", 1, (), checks, "36 weight(s) dense above 128 rows (not 10% faster at 1024 rows)")
    assert whole_model_line(plan) == ("128 rows 36 sparse 0.75x, 1024 rows 36 sparse 1.07x: 36 weight(s) "
                                      "dense above 128 rows (not 10% faster at 1024 rows)")
    assert whole_model_line(SparsePlan("auto", 1, (), (), "not checked")) == "not checked"


def test_verdict_skips_rows_where_auto_and_dense_are_the_same_module():
    from optc.tools.bench.sparse import verdict_line

    def row(ratio, identical, sparsity=0.9):
        return {"pattern": "unstructured", "sparsity": sparsity, "threads": 2, "batch": 1,
                "ratio": ratio, "identical": identical}

    # a 1.17 "slowdown" between two identical modules is noise, not auto's doing
    line = verdict_line([row(1.17, True, 0.5), row(0.8, False)])
    assert line.startswith("auto within 5% of dense everywhere: yes (worst auto/dense 0.80")
    assert "1 row(s) where auto chose dense for every weight are not judged" in line
    assert "NO" in verdict_line([row(1.17, True, 0.5), row(1.08, False)])
    assert verdict_line([row(1.2, True)]).endswith("(auto chose dense everywhere; 1 row(s) where "
                                                   "auto chose dense for every weight are not judged)")
