"""GPU check: run every CUDA path of optc once on a tiny model and print a table.

    python -m optc.tools.checks.gpu [--device cuda:0] [--steps 4] [--skip NAME ...] [--json]
    python -m optc.tools.checks.gpu --dry        # the same code paths on the CPU (CI)

Builds a tiny random-weight BERT (transformers config: hidden 64, 2 layers, 4 heads), a
word-level tokenizer and a separable synthetic sentiment task in a temporary directory, then:

- ``train fp32`` / ``train bf16`` / ``train fp16``: ``finetune`` on the device in each precision
  (fp16 with loss scaling) with a half-sparse FFN weight: losses finite, the first step's loss
  within tolerance of the CPU's fp32 one, the weights written back to the IR on the CPU in its
  dtype, masked weights still exactly zero, the epoch's evaluation run;
- ``distill``: hidden-state distillation from a teacher lowered on the device;
- ``gradual-prune``, ``l0-prune``, ``qat``: the training passes through the pass manager with
  ``PassContext(device=..., precision=...)``;
- ``resume``: a run interrupted after 2 steps and resumed from its checkpoint against an
  uninterrupted one (bit for bit on the CPU; on CUDA within 1e-4, kernels may not be
  deterministic);
- ``eval``: ``optc.tasks.evaluate`` of the trained model on the device against the CPU;
- ``semi-structured 2:4``: :mod:`optc.tools.checks.gpu_semi_structured` on 2 layers
  (``--cpu-dry-run`` with ``--dry``);
- ``self-check <backend>``: each backend's output (eager, torchscript, onnx, hf) loaded and run on
  the device against the eager IR on the CPU (ONNX only where onnxruntime has the CUDA
  provider);
- ``2 processes``: ``optc finetune --nproc 2`` (NCCL, one GPU each: needs 2 GPUs; gloo with
  ``--dry``);
- ``search evaluation``: reported as not covered: the search's evaluations have no device
  option yet.

Prints one row per check (status, seconds, detail); exit status 0 when none failed, 1 when one
did, 2 without CUDA (and without ``--dry``). A few seconds per check on a GPU; the whole script
is meant to stay well under 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "CHECKS"]

VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + "the a movie film was is very plot actors story and it this quite really".split()
         + "good great wonderful excellent fun bad awful boring terrible dull".split())
TASK = "text-classification"

CHECKS = ("train fp32", "train bf16", "train fp16", "distill", "gradual-prune", "l0-prune", "qat",
          "resume", "eval", "semi-structured 2:4", "self-check eager", "self-check torchscript",
          "self-check onnx", "self-check hf", "2 processes", "search evaluation")
"""Every check, in the order they run (names for ``--skip``)."""

LOSS_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 5e-2}
"""First-step training loss on the device vs the CPU's fp32 one (relative)."""


class Skip(Exception):  # noqa: N818 - a check that cannot run here says why
    """A check that does not apply on this machine."""


@dataclass
class Row:
    name: str
    status: str
    seconds: float
    detail: str


@dataclass
class Fixture:
    root: Path
    tokenizer: Any
    tok_dir: Path
    data: Path
    module: Any
    """Captured tiny BERT (no task head), tokenizer recorded."""
    cpu_first_loss: float | None = None
    """First-step loss of the fp32 CPU run the training checks compare with (computed once)."""
    trained: Any = None
    """A module trained by ``train fp32`` (evaluated by ``eval``)."""

    def fresh(self) -> Any:
        return self.module.clone()


def _sentences(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    filler, good, bad = VOCAB[5:20], VOCAB[20:25], VOCAB[25:30]
    rows = []
    for i in range(count):
        words = rng.choices(filler, k=rng.randint(3, 9))
        words.insert(rng.randint(0, len(words)), rng.choice(good if i % 2 else bad))
        rows.append((" ".join(words), i % 2))
    return rows


def build_fixture(root: Path) -> Fixture:
    import transformers as tf

    import optc

    tok_dir = root / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    tokenizer.save_pretrained(str(tok_dir))
    data = root / "task"
    data.mkdir()
    for split, count, seed in (("train", 160, 0), ("dev", 64, 1)):
        lines = ["text\tlabel"] + [f"{s}\t{y}" for s, y in _sentences(count, seed)]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, vocab_size=len(VOCAB),
                           max_position_embeddings=64)
    module = optc.capture(tf.BertModel(config).eval())
    module.meta["source"]["tokenizer"] = str(tok_dir)
    return Fixture(root, tokenizer, tok_dir, data, module)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _max_diff(want: torch.Tensor, got: torch.Tensor) -> float:
    """max |got - want| relative to max(1, max |want|) (the backends' self-check measure)."""
    want, got = want.detach().double().cpu(), got.detach().double().cpu()
    if want.shape != got.shape:
        return float("inf")
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


# -- checks -------------------------------------------------------------------------------------
def check_train(fx: Fixture, device: str, precision: str, steps: int) -> str:
    from optc.ir.attributes import Sparsity
    from optc.train import finetune

    module = fx.fresh()
    name = next(n for n in module.params if n.endswith("intermediate.dense.weight"))
    weight = module.params[name].data.clone()
    weight[weight.abs() < weight.abs().median()] = 0
    module.params[name].data = weight
    module.params[name].attrs["sparsity"] = Sparsity("unstructured", 0.5)
    common = {"tokenizer": fx.tokenizer, "batch_size": 16, "lr": 2e-3, "seed": 0, "dropout": 0.0}
    if fx.cpu_first_loss is None:
        fx.cpu_first_loss = finetune(module.clone(), TASK, fx.data, max_steps=1, eval_split=None,
                                     device="cpu", precision="fp32", **common).losses[0]
    dtypes = {n: p.data.dtype for n, p in module.params.items()}
    start = time.perf_counter()
    report = finetune(module, TASK, fx.data, max_steps=steps, eval_split="val", device=device,
                      precision=precision, **common)
    seconds = time.perf_counter() - start
    if not all(math.isfinite(v) for v in report.losses):
        raise AssertionError(f"non-finite loss: {report.losses}")
    gap = _rel(report.losses[0], fx.cpu_first_loss)
    if gap > LOSS_TOLERANCE[precision]:
        raise AssertionError(f"first-step loss {report.losses[0]:.5f} vs CPU fp32 "
                             f"{fx.cpu_first_loss:.5f} (rel {gap:.1e} > "
                             f"{LOSS_TOLERANCE[precision]:g})")
    trained = module.params[name].data
    if trained.device.type != "cpu" or any(module.params[n].data.dtype != d
                                           for n, d in dtypes.items()):
        raise AssertionError("written-back weights are not on the CPU in the IR's dtype")
    if int(torch.count_nonzero(trained[weight == 0])) != 0:
        raise AssertionError("masked weights are no longer zero")
    if report.best is None:
        raise AssertionError("no evaluation ran")
    if precision == "fp32":
        fx.trained = module
    return (f"loss {report.losses[0]:.4f}->{report.losses[-1]:.4f}, first step vs CPU fp32 "
            f"{gap:.1e}, val {report.metric} {report.score:.1f}, "
            f"{steps / seconds:.1f} steps/s incl. eval")


def check_distill(fx: Fixture, device: str, steps: int) -> str:
    from optc.train import distill

    student, teacher = fx.fresh(), fx.fresh()
    report = distill(student, teacher, TASK, fx.data, tokenizer=fx.tokenizer, hidden_mse=1.0,
                     max_steps=steps, batch_size=16, eval_split=None, device=device)
    if not all(math.isfinite(v) for v in report.losses):
        raise AssertionError("non-finite loss")
    return f"hidden-state loss {report.losses[0]:.4f}->{report.losses[-1]:.4f}"


def check_pass(fx: Fixture, device: str, spec: str) -> str:
    from optc.passes.context import PassContext
    from optc.passes.manager import PassManager
    from optc.passes.spec import parse_pipeline

    module = fx.fresh()
    report = PassManager(parse_pipeline(spec)).run(module, PassContext(device=device))
    stats = report.records[-1].stats
    keep = ("loss", "sparsity", "heads_removed", "neurons_removed", "qat_activations")
    return ", ".join(f"{k}={stats[k]}" for k in keep if k in stats)


def check_resume(fx: Fixture, device: str, steps: int) -> str:
    from optc.train import TrainingInterrupted, finetune

    def run(module: Any, **kw: Any) -> Any:
        return finetune(module, TASK, fx.data, tokenizer=fx.tokenizer, max_steps=steps,
                        batch_size=16, lr=2e-3, eval_split=None, device=device, **kw)

    whole = fx.fresh()
    run(whole)

    def stop(info: Any) -> None:
        if info.step == 2:
            raise KeyboardInterrupt

    ckpt = fx.root / f"ckpt-{device.replace(':', '-')}"
    with contextlib.suppress(TrainingInterrupted):
        run(fx.fresh(), checkpoint_dir=ckpt, progress=stop)
    module = fx.fresh()
    run(module, resume=ckpt)
    worst = max(_max_diff(whole.params[n].data, module.params[n].data) for n in whole.params)
    limit = 0.0 if device == "cpu" else 1e-4
    if worst > limit:
        raise AssertionError(f"resumed weights differ by {worst:.1e} (> {limit:g})")
    return f"interrupted at step 2 of {steps}, resumed: max weight difference {worst:.1e}"


def check_eval(fx: Fixture, device: str) -> str:
    import optc
    from optc.tasks import evaluate
    from optc.train import finetune

    module = fx.trained
    if module is None:  # train fp32 was skipped
        module = fx.fresh()
        finetune(module, TASK, fx.data, tokenizer=fx.tokenizer, max_steps=4, batch_size=16,
                 lr=3e-3, eval_split=None)
    cpu = evaluate(TASK, optc.to_eager(module), "dev", fx.tokenizer, data=fx.data)
    dev = evaluate(TASK, optc.to_eager(module, device=device), "dev", fx.tokenizer, data=fx.data,
                   device=device)
    agree = sum(a == b for a, b in zip(cpu.predictions, dev.predictions, strict=True))
    if agree < 0.98 * len(cpu.predictions):
        raise AssertionError(f"predictions agree on {agree}/{len(cpu.predictions)}")
    return (f"{cpu.main_metric} {dev.score:.2f} on {device} vs {cpu.score:.2f} on cpu, "
            f"{agree}/{len(cpu.predictions)} predictions equal")


def check_semi_structured(dry: bool) -> str:
    from optc.tools.checks import gpu_semi_structured

    out = io.StringIO()
    argv = ["--layers", "2", "--batch", "8", "--seq", "64", "--rounds", "3", "--block", "2"]
    with contextlib.redirect_stdout(out):
        code = gpu_semi_structured.main(argv + (["--cpu-dry-run"] if dry else []))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    if code != 0:
        raise AssertionError("; ".join(line for line in lines if line.startswith("FAIL"))
                             or lines[-1])
    return lines[-1]


def check_backend(fx: Fixture, device: str, backend: str) -> str:
    import optc
    from optc.backends import write_backend
    from optc.backends.selfcheck import example_inputs, tolerance_for

    module = fx.fresh()
    path = fx.root / f"out-{backend}{'.pt' if backend == 'torchscript' else ''}"
    if backend == "onnx":
        import onnxruntime as ort

        if device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
        path = fx.root / "out.onnx"
    write_backend(module, backend, path)  # written and self-checked on the CPU
    names = [v.name for v in module.graph.inputs]
    if backend == "eager":
        from optc.artifacts import load_module

        compiled = optc.to_eager(load_module(path), device=device)
        run: Callable[[dict], dict] = lambda x: compiled(**x)  # noqa: E731
    elif backend == "torchscript":
        scripted = torch.jit.load(str(path), map_location=device)
        run = lambda x: dict(scripted(*[x[n] for n in names]))  # noqa: E731
    elif backend == "onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider"]
        session = ort.InferenceSession(str(path), providers=providers)
        wanted = [i.name for i in session.get_inputs()]
        outs = [o.name for o in session.get_outputs()]
        run = lambda x: dict(zip(outs, (torch.from_numpy(a) for a in session.run(  # noqa: E731
            None, {n: x[n].cpu().numpy() for n in wanted})), strict=True))
    else:
        from optc.backends.hf import load_exported

        model = load_exported(path).to(device)
        run = lambda x: {k: v for k, v in model(**x).items() if v is not None}  # noqa: E731
    reference = optc.to_eager(module)
    tol = max(tolerance_for(module, backend), 1e-4)
    worst = 0.0
    for feed in example_inputs(module):
        with torch.inference_mode():
            want = reference(**feed)
            got = run({k: v.to(device) for k, v in feed.items()})
        for key, value in want.items():
            worst = max(worst, _max_diff(value, got[key]))
    if not worst <= tol:
        raise AssertionError(f"{backend} on {device} differs from the IR by {worst:.1e} "
                             f"(tolerance {tol:g})")
    return f"{backend} on {device} vs eager IR on cpu: max rel diff {worst:.1e} (<= {tol:g})"


def check_processes(fx: Fixture, device: str, dry: bool) -> str:
    import optc
    from optc.tools.cli.launch import launch_local

    if not dry and torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs for NCCL with one GPU each (torch sees "
                   f"{torch.cuda.device_count()})")
    model = fx.root / "model-dp"
    optc.save(fx.fresh(), model)
    out = fx.root / "dp-out"
    code = launch_local(["finetune", str(model), "--task", TASK, "--data", str(fx.data),
                         "--max-steps", "3", "--batch-size", "16", "--eval-split", "none",
                         "--device", "cpu" if dry else "cuda", "-o", str(out), "-q"], 2,
                        threads=1)
    if code != 0 or not out.exists():
        raise AssertionError(f"optc finetune --nproc 2 exited with {code}")
    return f"optc finetune --nproc 2 ({'gloo' if dry else 'nccl'}): wrote {out.name}"


# -- driver -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.checks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="CUDA device to check (default cuda)")
    p.add_argument("--dry", action="store_true", help="run the same code paths on the CPU")
    p.add_argument("--steps", type=int, default=4, help="training steps per check (default 4)")
    p.add_argument("--skip", nargs="+", default=[], metavar="NAME", choices=CHECKS,
                   help="checks to leave out")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (--dry runs the same code paths on the CPU)")
        return 2
    device = "cpu" if args.dry else args.device
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    where = "cpu (dry run)" if args.dry else (f"{device} ({torch.cuda.get_device_name(device)})")
    print(f"optc GPU check on {where}, torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    steps = max(2, args.steps)
    with tempfile.TemporaryDirectory(prefix="optc-gpu-check-") as tmp:
        fx = build_fixture(Path(tmp))
        data = str(fx.data)
        specs = {
            "gradual-prune": f"gradual-prune{{task={TASK},data={data},sparsity=0.5,"
                             f"max_steps={steps},batch_size=16,eval_split=none}}",
            "l0-prune": f"l0-prune{{task={TASK},data={data},target_flops=0.7,"
                        f"max_steps={steps},batch_size=16,eval_split=none,max_length=32}}",
            "qat": f"quantize{{mode=qat,task={TASK},data={data},max_steps={steps},"
                   f"batch_size=16,eval_split=none,samples=32}}",
        }
        checks: dict[str, Callable[[], str]] = {
            **{f"train {pr}": (lambda pr=pr: check_train(fx, device, pr, steps))
               for pr in ("fp32", "bf16", "fp16")},
            "distill": lambda: check_distill(fx, device, steps),
            **{name: (lambda s=spec: check_pass(fx, device, s)) for name, spec in specs.items()},
            "resume": lambda: check_resume(fx, device, steps),
            "eval": lambda: check_eval(fx, device),
            "semi-structured 2:4": lambda: check_semi_structured(args.dry),
            **{f"self-check {b}": (lambda b=b: check_backend(fx, device, b))
               for b in ("eager", "torchscript", "onnx", "hf")},
            "2 processes": lambda: check_processes(fx, device, args.dry),
        }
        for name in CHECKS:
            if name in args.skip:
                continue
            began = time.perf_counter()
            if name == "search evaluation":
                status, detail = "skip", "not covered: search evaluations have no device option yet"
            else:
                try:
                    status, detail = "ok", checks[name]()
                except Skip as exc:
                    status, detail = "skip", str(exc)
                except Exception as exc:  # noqa: BLE001 - a check script reports and goes on
                    first = (str(exc).strip().splitlines() or [""])[0]
                    status, detail = "FAIL", f"{type(exc).__name__}: {first}"[:300]
            rows.append(Row(name, status, time.perf_counter() - began, detail))
            print(f"{status:<4}  {name:<22} {rows[-1].seconds:6.1f} s  {detail}", flush=True)
    failed = [r for r in rows if r.status == "FAIL"]
    width = max(len(r.name) for r in rows) if rows else 5
    print(f"\n{'check':<{width}}  status  seconds  detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.status:<6}  {r.seconds:7.1f}  {r.detail}")
    print(f"\n{len(failed)} failed, {sum(r.status == 'ok' for r in rows)} ok, "
          f"{sum(r.status == 'skip' for r in rows)} skipped; {time.perf_counter() - start:.0f} s "
          f"on {where}")
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
