"""Benchmark: training-based compression of a fine-tuned model (prints one table; not run by
the tests beyond a few-step smoke run).

    python -m optc.tools.bench.compress --model /work/runs/sst2-minilm-2500 --task sst2 \\
        [--data DIR] [--sparsities 0.8 0.9] [--max-steps 2000] [--then quantize] \\
        [--sections dense,oneshot,gradual,l0] [--save-dir DIR] [--latency]

Sections, a row per model:

  dense    the input model as it is: the reference metric, encoder size 1.0x
  oneshot  ``sparsify{sparsity=S}``: magnitude pruning at once, no training (the contrast)
  gradual  ``gradual-prune{sparsity=S}``: the cubic schedule while distilling from the input
           model (Prune Once for All's mix: 0.5 task loss + 0.5 KL at T=2)
  l0       ``l0-prune{...}`` (:data:`L0_SPECS`, or ``--l0-spec``): learned L0 gates; run only
           when that pass is registered

With ``--then SPEC`` (e.g. ``quantize``, ``quantize{mode=qat}``) every compressed row is
followed by one with SPEC run on its result. Training passes (in any section or SPEC) get the
training options below unless their spec sets them.

Columns: ``metric`` (dev, full split unless ``--eval-limit``) and ``delta`` vs dense;
``enc size`` the bytes the saved artifact's weights.safetensors spends on the encoder linear
weights (attention q/k/v/out, FFN up/down, with their int8 scales; sparse weights stored
compressed) over the input model's encoder linear weights dense in fp32 (so removed heads and
neurons count too), and ``smaller`` its inverse; ``train s`` the
passes' wall time (with ``--eval-split none``, the default, no evaluation in it; a ``--then``
row adds its own time to its base's);
``--latency`` adds ONNX Runtime medians over dense (batch ``--batch``, ``--seq`` tokens),
timed interleaved at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "encoder_weight_bytes", "L0_SPECS", "SECTIONS"]

SECTIONS = ("dense", "oneshot", "gradual", "l0")

L0_SPECS = ("l0-prune{target_flops=0.5}",)
"""Rows of the ``l0`` section (its pass's author may change them; ``--l0-spec`` overrides)."""


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [keys] + [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in cells)


def encoder_weight_bytes(module: Any, weights_file: str | Path) -> tuple[int, int]:
    """(bytes ``weights_file`` stores for the encoder linear weights and their scales, bytes
    of the same weights dense in fp32)."""
    from safetensors import safe_open

    from optc.ir.core import Parameter
    from optc.passes.sparsify import linear_targets

    names: set[str] = set()
    dense = 0
    for _, _, node in linear_targets(module, ("attention", "ffn")):
        weight, scale = node.arg(1), node.arg(3)
        if isinstance(weight, Parameter) and weight.name not in names:
            names.add(weight.name)
            dense += weight.data.numel() * 4
        if isinstance(scale, Parameter):
            names.add(scale.name)
    stored = 0
    with safe_open(str(weights_file), "pt") as f:
        for key in f.keys():
            if key.split("#")[0] in names:
                t = f.get_tensor(key)
                stored += t.numel() * t.element_size()
    return stored, dense


@dataclass
class _Bench:
    args: argparse.Namespace
    module: Any
    """The input model (with its task head)."""
    task: Any
    tokenizer: Any
    tmp: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    onnx: dict[str, Path] = field(default_factory=dict)
    dense_score: float | None = None

    # -- running one row -------------------------------------------------------------------------
    def train_options(self) -> dict[str, Any]:
        a = self.args
        return {"task": a.task, "data": a.data, "epochs": a.epochs, "max_steps": a.max_steps,
                "lr": a.lr, "batch_size": a.batch_size, "max_length": a.max_length,
                "threads": a.threads, "eval_split": a.eval_split, "seed": a.seed}

    def passes(self, spec: str) -> list[Any]:
        """``spec`` parsed, training options filled in where the spec leaves the default."""
        from optc.passes import parse_pipeline

        out = []
        for p in parse_pipeline(spec):
            fields = {f.name: f for f in dataclasses.fields(p) if f.init}
            updates = {k: v for k, v in self.train_options().items()
                       if k in fields and v is not None and getattr(p, k) == fields[k].default}
            p = dataclasses.replace(p, **updates) if updates else p
            out.append(p)
        return out

    def row(self, section: str, label: str, spec: str | None, base: Any = None,
            before: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Run ``spec`` on a copy of ``base`` (default: the input model), measure, add a row;
        returns the compressed module and its row. ``before``: the row of ``base`` (its
        sparsity and time carry over)."""
        from optc.artifacts import save
        from optc.passes import PassContext, PassManager
        from optc.tools.cli.train import _StepPrinter

        module = (base if base is not None else self.module).clone()
        seconds = float(before["seconds"]) if before else 0.0
        stats: dict[str, Any] = {}
        if spec is not None:
            if not self.args.quiet:
                sys.stderr.write(f"bench_compress: {label}: {spec}\n")
            passes = self.passes(spec)
            start = time.perf_counter()
            progress = None if self.args.quiet else _StepPrinter(True)  # training passes' steps
            report = PassManager(passes).run(module, PassContext(progress=progress))
            seconds += time.perf_counter() - start
            # saved rows say how they were made, as the CLI's outputs do
            module.meta["pipeline"] = list(module.meta.get("pipeline", [])) + [p.spec() for p in passes]
            for record in report.records:
                stats.update(record.stats)
        score = self.evaluate(module)
        if section == "dense":
            self.dense_score = score
        where = (self.args.save_dir or self.tmp) / label.replace(" ", "")
        save(module, where, force=True)
        stored, _ = encoder_weight_bytes(module, where / "weights.safetensors")
        # over the input model's encoder in fp32, so structural removals count as well
        dense = self.reference_bytes()
        sparsity = stats.get("sparsity", before["sparsity"] if before else None)
        row = {
            "section": section, "model": label,
            "sparsity": f"{sparsity:.3f}" if isinstance(sparsity, float) else "-",
            self.task.main_metric: f"{score:.2f}",
            "delta": f"{score - self.dense_score:+.2f}" if self.dense_score is not None else "-",
            "enc size": f"{stored / dense:.3f}x", "smaller": f"{dense / stored:.1f}x",
            "enc MB": f"{stored / 1e6:.2f}",
            "train s": f"{seconds:.0f}" if spec else "-",
            "steps": stats.get("steps", before["steps"] if before else "-"),
        }
        self.rows.append(row)
        facts = {"sparsity": sparsity, "seconds": seconds, "steps": row["steps"]}
        if self.args.latency:
            from optc.backends import write_backend

            path = self.tmp / f"{len(self.onnx)}.onnx"
            write_backend(module, "onnx", path, force=True)
            self.onnx[label] = path
        if not self.args.quiet:
            sys.stderr.write(f"bench_compress: {row}\n")
        return module, facts

    def reference_bytes(self) -> int:
        """Bytes of the input model's encoder linear weights dense in fp32."""
        from optc.ir.core import Parameter
        from optc.passes.sparsify import linear_targets

        weights = {node.arg(1).name: node.arg(1) for _, _, node in
                   linear_targets(self.module, ("attention", "ffn"))
                   if isinstance(node.arg(1), Parameter)}
        return sum(w.data.numel() * 4 for w in weights.values())

    def evaluate(self, module: Any) -> float:
        import optc
        from optc.tasks import evaluate

        names = tuple(v.name for v in module.graph.inputs)
        result = evaluate(self.task, optc.to_eager(module), "dev", self.tokenizer,
                          data=self.args.data, max_length=self.args.max_length,
                          limit=self.args.eval_limit, input_names=names, batch_size=64)
        return float(result.score)

    def with_then(self, section: str, label: str, spec: str) -> None:
        """A row for ``spec``, and one per ``--then`` SPEC run on its result."""
        module, facts = self.row(section, label, spec)
        for then in self.args.then:
            self.row(section, f"{label} + {then.split('{')[0]}", then, base=module, before=facts)

    # -- latency -------------------------------------------------------------------------------
    def latency(self) -> None:
        from optc.backends.onnx import OnnxModule
        from optc.tools.measure.timing import measure_interleaved

        examples = self.task.read("dev", self.args.data, limit=self.args.batch)
        pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
        enc = self.tokenizer([e.text for e in examples], pairs, padding="max_length",
                             truncation=True, max_length=self.args.seq, return_tensors="pt")
        runners = {}
        for label, path in self.onnx.items():
            session = OnnxModule(path, threads=self.args.threads)
            names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                     if n in session.input_names]
            inputs = {n: enc[n] for n in names}
            runners[label] = lambda s=session, i=inputs: s(**i)
        times = measure_interleaved(runners, rounds=self.args.rounds, block=3,
                                     settle=0.2 if self.args.threads > 1 else 0.0)
        base = times[next(iter(times))].median
        for row in self.rows:
            t = times.get(row["model"])
            if t is not None:
                row["ort ms"] = f"{t.median * 1e3:.1f}"
                row["speedup"] = f"{base / t.median:.2f}x"


def l0_rows(bench: _Bench, spec: str) -> None:
    """The ``l0`` section's rows for one ``l0-prune`` spec: the L0 model, then magnitude
    ``prune-heads`` + ``prune-neurons`` removing the same fraction of heads and neurons (the
    encoder FLOPs the L0 model reached) followed by ``distill`` from the input model; each row
    gets its encoder FLOPs ratio (at ``--max-length`` or 128 tokens), and ``--then`` rows as
    elsewhere. The issue's comparison: ``--latency --threads 1`` (ORT, B1, S128)."""
    from optc.ir.analysis import analyze
    from optc.train.gates import encoder_cost

    seq = bench.args.max_length or 128
    full = encoder_cost(bench.module, analyze(bench.module), "flops", seq)

    def ratio(module: Any) -> float:
        return encoder_cost(module, analyze(module), "flops", seq) / full

    module, facts = bench.row("l0", spec, spec)
    reached = ratio(module)
    bench.rows[-1]["flops"] = f"{reached:.3f}"
    for then in bench.args.then:
        bench.row("l0", f"{spec} + {then.split('{')[0]}", then, base=module, before=facts)
    amount = round(1.0 - reached, 4)
    label = f"magnitude {amount:g} + distill"
    module, facts = bench.row("l0", label, f"prune-heads{{amount={amount:g}}},"
                                           f"prune-neurons{{amount={amount:g}}},distill")
    bench.rows[-1]["flops"] = f"{ratio(module):.3f}"
    for then in bench.args.then:
        bench.row("l0", f"{label} + {then.split('{')[0]}", then, base=module, before=facts)


def _sections(text: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {', '.join(unknown)}: use {', '.join(SECTIONS)}")
    return chosen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m optc.tools.bench.compress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned optc artifact (with its head)")
    p.add_argument("--task", default=None, help="task (default: the one the artifact records)")
    p.add_argument("--data", default=None, help="task data directory (default: $OPTC_DATA_DIR)")
    p.add_argument("--sections", default="dense,oneshot,gradual,l0",
                   help=f"comma-separated, from {', '.join(SECTIONS)}")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    p.add_argument("--then", action="append", default=[], metavar="SPEC",
                   help="a pipeline run after each compressed model (repeatable)")
    p.add_argument("--gradual-options", default="", metavar="OPTS",
                   help="extra gradual-prune options, e.g. 'end_step=1500,frequency=50'")
    p.add_argument("--l0-spec", action="append", default=None, metavar="SPEC",
                   help=f"l0 section rows (default: {' '.join(L0_SPECS)})")
    p.add_argument("--max-steps", type=int, default=None, help="training steps per run")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=None, help="default: the task's recipe, else 5e-5")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--eval-split", default="none", choices=["none", "dev", "val"],
                   help="evaluation inside training (none: the final weights are kept)")
    p.add_argument("--eval-limit", type=int, default=None, help="dev examples scored per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-dir", type=Path, default=None, help="keep each model as DIR/<row>")
    p.add_argument("--latency", action="store_true", help="ONNX Runtime latency per row")
    p.add_argument("--batch", type=int, default=1, help="(latency) batch size")
    p.add_argument("--seq", type=int, default=128, help="(latency) tokens")
    p.add_argument("--rounds", type=int, default=10, help="(latency) interleaved rounds")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    import optc
    from optc.frontends.huggingface import load_tokenizer
    from optc.passes import all_passes
    from optc.tasks import get_task
    from optc.tools.bench.tasks import RECIPES
    from optc.train import task_from_meta

    p = parser()
    args = p.parse_args(argv)
    sections = _sections(args.sections, p)
    module = optc.load_module(args.model)
    task = get_task(args.task) if args.task else task_from_meta(module.meta)
    if task is None:
        p.error(f"{args.model} records no task: pass --task")
    args.task = args.task or (module.meta.get("task") or {}).get("spec") or task.name
    recipe = RECIPES.get(task.name, {})
    for key, default in (("lr", 5e-5), ("batch_size", 32), ("max_length", None)):
        if getattr(args, key) is None:
            setattr(args, key, recipe.get(key, default))
    tokenizer = load_tokenizer((module.meta.get("source") or {}).get("tokenizer"))
    torch.set_num_threads(args.threads)
    extra = f",{args.gradual_options}" if args.gradual_options else ""
    if args.save_dir is not None:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optc-bench-compress-") as tmp:
        bench = _Bench(args, module, task, tokenizer, Path(tmp))
        if "dense" in sections:
            bench.row("dense", "dense", None)
        for s in args.sparsities if "oneshot" in sections else []:
            bench.with_then("oneshot", f"sparsify {s:g}", f"sparsify{{sparsity={s:g}}}")
        for s in args.sparsities if "gradual" in sections else []:
            bench.with_then("gradual", f"gradual-prune {s:g}",
                            f"gradual-prune{{sparsity={s:g}{extra}}}")
        if "l0" in sections:
            if "l0-prune" in all_passes():
                for spec in args.l0_spec or L0_SPECS:
                    l0_rows(bench, spec)
            elif not args.quiet:
                sys.stderr.write("bench_compress: l0-prune is not registered: l0 skipped\n")
        if args.latency and bench.onnx:
            bench.latency()
        steps = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs:g} epochs"
        print(f"compression of {args.model} on {task.name} (dev {task.main_metric}), "
              f"{steps}, lr {args.lr:g}, batch {args.batch_size}, {args.threads} threads")
        print(_table(bench.rows), end="", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
