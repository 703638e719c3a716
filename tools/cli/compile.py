"""``optc [MODEL] --passes=SPEC [--backend eager] -o OUT``: compile a model into an artifact.

Its argument parser, the run (options checked before any slow work, the model loaded and
captured, the pass pipeline run, sparse kernels chosen) and the output: written under a
hidden name beside OUT, checked against the IR and moved into place, then the pass report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from optc.errors import PipelineSpecError
from optc.tools.cli.targets import load_target
from optc.tools.cli.task_option import (
    add_task_arguments,
    fill_task,
    give_head,
    resolve_task_option,
)
from optc.tools.common import EPILOG, output_path
from optc.tools.common import Parser as _Parser

__all__ = ["cmd_compile"]


def _input_paths(args: argparse.Namespace) -> list[Path]:
    """Existing paths the compile command reads: -o must never replace one of them."""
    paths = []
    for given in (args.model, args.data, args.dump_dir):
        if given is not None and os.path.lexists(given):
            paths.append(Path(given))
    if args.model is not None and Path(args.model).suffix == ".safetensors":
        paths.append(Path(args.model).parent)  # a weights file is loaded with its directory
    return paths


def _compile_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="optc",
        description="Compile a transformer model: capture it, run a pass pipeline, write an artifact.",
        epilog="subcommands: 'optc inspect TARGET', 'optc passes', 'optc tasks', 'optc ops', "
               "'optc bench TARGET...', 'optc eval TARGET', 'optc finetune [MODEL]', "
               "'optc specialize MODEL -o OUT', "
               "'optc report TARGET [BASELINE] -o OUT.html' (each has "
               "--help); '--verbose' anywhere shows debug detail\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="Hugging Face id, local model directory, or optc artifact "
                        "(default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--passes", default="", metavar="SPEC",
                   help="pipeline spec, e.g. 'dce' or 'drop-layers{strategy=top,count=2},dce' "
                        "(list passes with 'optc passes')")
    p.add_argument("--backend", default="eager",
                   choices=["eager", "torchscript", "onnx", "hf", "onnx-st"],
                   help="eager: optc artifact directory (default); torchscript: file for "
                        "torch.jit.load; onnx: ONNX model for ONNX Runtime; hf: Hugging Face "
                        "directory for transformers (trust_remote_code=True); onnx-st: "
                        "sentence-transformers directory with onnx/model.onnx for "
                        "SentenceTransformer(OUT, backend='onnx') (fp32 or int8 embedding models)")
    p.add_argument("-o", "--output", metavar="OUT", type=output_path,
                   help="where to write: a directory (eager, hf, onnx-st) or a file "
                        "(torchscript, onnx)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_task_arguments(p, "the task of the passes that read task data (finetune, distill, "
                          "quantize max_drop, ...) where their spec names none")
    p.add_argument("--data", metavar="PATH",
                   help="calibration data for passes that measure the model (a text file, GLUE "
                        "tsv, SQuAD json or task directory; relative paths are also tried under "
                        "$OPTC_DATA_DIR); fills each such pass's data= option")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--dump-dir", metavar="DIR", type=output_path, help="write the IR before and after every pass to DIR")
    p.add_argument("--no-verify", action="store_true", help="skip IR verification between passes")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check: by default OUT is loaded back, run on example "
                        "inputs and compared with the IR before it is installed (exit 6 and "
                        "nothing written if it disagrees)")
    p.add_argument("--compare", action="store_true",
                   help="after writing OUT, print it side by side with the input model: "
                        "parameters, size on disk, measured latency (batch 1, seq 128, 1 thread) "
                        "and agreement of the outputs on fixed sentences")
    p.add_argument("--sparse-kernel", metavar="KERNEL",
                   choices=["auto", "dense", "csr", "bsr", "semi-structured"],
                   help="how eager and TorchScript run sparse weights: dense (default), csr, bsr, "
                        "semi-structured (2:4, CUDA only) or auto (a sparse kernel only where it "
                        "is measured faster on this machine); prints the choice per layer and "
                        "records it in OUT (see optc.backends.sparse_exec)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where training passes (finetune, distill, gradual-prune, qat, l0-prune) "
                        "train: cpu, cuda, cuda:N or auto (cuda when torch sees a GPU; default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of training passes (default fp32)")
    p.add_argument("--json", action="store_true", help="print the pass report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("--version", action="version", version=f"optc {_version()}")
    return p


def _version() -> str:
    from optc import __version__

    return __version__


def cmd_compile(argv: list[str]) -> int:
    """``optc [MODEL] --passes=SPEC [--backend B] -o OUT``."""
    from optc.backends import write_backend
    from optc.backends.writers import DIRECTORY_BACKENDS
    from optc.passes.context import PassContext
    from optc.passes.manager import DumpIR, PassManager, PrintAfterAll
    from optc.passes.spec import parse_pipeline
    from optc.tools.progress import Progress
    from optc.train.device import check_precision, resolve_device

    args = _compile_parser().parse_args(argv)
    progress = Progress(enabled=not args.quiet)
    head, task = resolve_task_option(args, _compile_parser())  # a bad task fails here
    passes = parse_pipeline(args.passes)  # bad specs fail before any slow work
    device = resolve_device(args.device)  # a cuda request without CUDA fails here
    context = PassContext(device=str(device), precision=check_precision(args.precision, device),
                          task=task)  # calibration data is read as the task reads it
    if args.data is not None:
        from optc.tasks.readers import resolve_data_path

        resolve_data_path(args.data)  # a missing data path fails before any slow work
        passes = [
            dataclasses.replace(p, data=args.data)
            if p.uses_data and p.data is None else p
            for p in passes
        ]
    if task is not None:
        passes = fill_task(passes, args.task)
    out = Path(args.output) if args.output else None
    if args.compare and (out is None or args.backend in ("hf", "onnx-st")):
        raise PipelineSpecError("--compare measures the written output: give -o OUT and "
                                "--backend eager, torchscript or onnx")
    if args.sparse_kernel and args.backend not in ("eager", "torchscript"):
        _compile_parser().error("--sparse-kernel chooses eager and TorchScript kernels; ONNX "
                                "and hf outputs carry sparsity annotations instead: drop it")
    if args.sparse_kernel:
        from optc.backends.sparse_exec import check_kernel_available

        check_kernel_available(args.sparse_kernel)  # before any slow work
    kind = "artifact" if args.backend in DIRECTORY_BACKENDS else "file"
    inputs = _input_paths(args)
    if out is not None:
        from optc.outputs import check_output

        check_output(out, args.force, kind=kind, inputs=inputs)  # before any slow work
    if any(p.uses_data for p in passes):
        from optc.tools.cli.preflight import check_pass_data, recorded_task

        with progress.step("reading the passes' data"):  # bad data fails before loading
            check_pass_data(passes, task or recorded_task(args.model), task)
    module = load_target(args.model, head, progress)
    if task is not None:
        give_head(module, task, args.task, passes)  # the head the task implies
    instruments: list[Any] = []
    if args.print_after_all:
        instruments.append(PrintAfterAll(sys.stderr))
    if args.dump_dir:
        instruments.append(DumpIR(args.dump_dir))
    manager = PassManager(passes, verify=not args.no_verify, instruments=instruments)
    original = module.clone() if args.compare else None
    with progress.step("running passes"):
        report = manager.run(module, context)
    module.meta["pipeline"] = list(module.meta.get("pipeline", [])) + [p.spec() for p in passes]
    if passes:  # stats and times of every pass, for `optc report` (JSON-safe copies)
        module.meta["pass_stats"] = list(module.meta.get("pass_stats", [])) + json.loads(
            json.dumps(report.to_json(), default=str))
    sparse_plan = None
    if args.sparse_kernel:
        from optc.backends.eager import EagerModule
        from optc.backends.sparse_exec import plan_sparse_kernels

        module.meta["sparse_kernel"] = args.sparse_kernel  # what the backends and optc.load use
        with progress.step(f"choosing sparse kernels ({args.sparse_kernel})"):
            sparse_plan = plan_sparse_kernels(module, args.sparse_kernel,
                                              runner=lambda p: EagerModule(module, p))
    if out is not None:
        from optc.backends.selfcheck import check_written
        from optc.outputs import staged_output

        # Written under a hidden name beside OUT, loaded back and run against the eager IR
        # (unless --no-check), and moved into place only when complete and correct.
        with staged_output(out, args.force, kind=kind, inputs=inputs) as staged:
            with progress.step(f"writing {out} ({args.backend})"):
                write_backend(module, args.backend, staged, check=False)  # checked below
            if not args.no_check:
                with progress.step(f"checking {out} against the IR"):
                    check_written(module, args.backend, staged, label=out)
    comparison = None
    if original is not None and out is not None:
        from optc.tools.reports.compare import compare_models

        with progress.step("comparing with the input model"):
            comparison = compare_models(original, module, out, args.backend)
    if args.json:
        print(json.dumps({
            "output": str(out) if out else None,
            "parameters": module.num_parameters(),
            "passes": report.to_json(),
            "sparse_kernels": sparse_plan.to_json() if sparse_plan else None,
            "comparison": comparison.to_json() if comparison else None,
        }, indent=2))
        return 0
    if passes:
        print(report.table())
    if sparse_plan is not None:
        print(sparse_plan.table(), end="")
    params = module.num_parameters()
    where = f"wrote {out}" if out else "compiled (no -o given, nothing written)"
    print(f"{where}: {params:,} parameters, {len(module.graph)} nodes")
    if comparison is not None:
        from optc.tools.reports.compare import format_comparison

        print(format_comparison(comparison), end="")
    return 0
