"""What ``optc eval`` scores: a target (artifact, Hugging Face model, ONNX or TorchScript file)
loaded with its task, tokenizer, inputs and the max length it was fine-tuned with.

The task is found before the model is loaded (:func:`eval_task`: the one given with
``--task``, checked against the one the target records, read without loading it), so that
the data can be read and checked first; :func:`load_for_eval` then loads the model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from optc.errors import InputError

__all__ = ["target_kind", "same_head", "eval_task", "load_for_eval", "max_length_for",
           "token_names", "model_pooling"]


def target_kind(target: str) -> str:
    from optc.artifacts import is_artifact

    path = Path(target)
    if is_artifact(path):
        return "artifact"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in (".pt", ".ts", ".jit"):
        return "torchscript"
    return "hf"


def _tokenizer(ref: str | None, target: str, record: Any = None) -> Any:
    """``ref`` (--tokenizer) if given, else the tokenizer files an ONNX or TorchScript output
    carries, else the recorded tokenizer path or id."""
    import tempfile

    from optc.frontends.huggingface import load_tokenizer

    if ref is None and record is not None and record.tokenizer_files:
        with tempfile.TemporaryDirectory(prefix="optc-tokenizer-") as tmp:
            try:
                return load_tokenizer(record.write_tokenizer(tmp))
            except InputError as exc:
                raise InputError(f"the tokenizer recorded in '{target}' does not load "
                                 f"({str(exc).split(': pass')[0]}): pass --tokenizer DIR") from None
    if ref is None and record is not None:
        ref = record.tokenizer
    if ref is None:
        raise InputError(f"'{target}' records no tokenizer: pass --tokenizer DIR (the model "
                         "directory or a tokenizer directory)")
    return load_tokenizer(ref)


def same_head(a: Any, b: Any) -> bool:
    """Whether tasks ``a`` and ``b`` read the same outputs the same way (kind and labels; the
    embedding tasks all read the pooled token states, so a model distilled on its own texts
    is scored on STS-B too)."""
    if a.head == b.head == "base":
        return True
    return (a.kind, a.num_labels, a.label_names) == (b.kind, b.num_labels, b.label_names)


def _task_for(target: str, given: str | None, meta: dict[str, Any], default: Any = None) -> Any:
    """The task to score ``target`` on: the one it records, or ``given`` (--task). A ``given``
    task with other labels than the recorded one is refused (the model's outputs mean other
    classes); one with the same labels but other columns or metrics wins with a warning."""
    from optc.tasks import get_task
    from optc.train import task_from_meta

    recorded = task_from_meta(meta)
    if given is None:
        task = recorded or default
        if task is None:
            raise InputError(f"'{target}' records no task: pass --task NAME")
        return task
    task = get_task(given)
    if recorded is None or task == recorded:
        return task
    spec = (meta.get("task") or {}).get("spec") or recorded.name
    if not same_head(task, recorded):
        labels = ",".join(recorded.label_names) or recorded.kind
        raise InputError(f"--task {given} does not fit '{target}': it records task {spec} "
                         f"({labels}); drop --task to use the recorded one")
    print(f"optc: warning: --task {given} differs from the task '{target}' records ({spec}); "
          f"scoring with --task", file=sys.stderr)
    return task


def _hf_export_meta(target: str) -> dict[str, Any]:
    """``{"task": ...}`` as optc's hf backend records it in config.json (``optc.task``), else
    empty (a Hugging Face id or a directory optc did not write)."""
    config_file = Path(target) / "config.json"
    if not config_file.is_file():
        return {}
    from optc.backends.hf import read_config

    task = (read_config(target).get("optc") or {}).get("task")
    return {"task": task} if isinstance(task, dict) else {}


def load_for_eval(target: str, task: Any, tokenizer_ref: str | None, threads: int | None,
                  device: Any = None,
                  ) -> tuple[Any, Any, Any, tuple[str, ...] | None, int | None, dict[str, Any]]:
    """(task, model_fn, tokenizer, input names, the token limit it was fine-tuned with, the
    module's meta) for ``target``, scored on ``task`` (:func:`eval_task`, found before the
    model is loaded). optc artifacts, ONNX and TorchScript files record their max length and
    tokenizer; ``tokenizer_ref`` (--tokenizer) overrides it. ``device`` (a torch.device,
    None: the CPU) is where the model runs; ONNX files run in ONNX Runtime on the CPU."""
    from optc.train import trained_max_length

    cuda = device is not None and device.type == "cuda"

    kind = target_kind(target)
    record = None
    if kind == "artifact":
        from optc.artifacts import load_module
        from optc.backends.eager import to_eager

        module = load_module(target)
        meta = module.meta
        _refuse_untrained_head(target, meta)
        runner, names = to_eager(module, device=device), tuple(v.name for v in module.graph.inputs)
    elif kind == "onnx":
        from optc.backends.runtime import open_onnx

        runner, record = open_onnx(target, threads)
        meta, names = record.meta, tuple(runner.input_names)
    elif kind == "torchscript":
        from optc.backends.record import load_torchscript

        runner, record = load_torchscript(target)
        names = tuple(a.name for a in runner.forward.schema.arguments[1:])
        runner.eval()  # loaded artifacts and Hugging Face models are in eval mode already
        if cuda:
            runner.to(device)
        meta = record.meta
    else:
        from optc.frontends.huggingface import load_model

        meta = _hf_export_meta(target)
        model, source = load_model(target, task=task.head)
        _refuse_untrained_head(target, {"source": source, **meta})
        if cuda:
            model.to(device)
        return (task, model, _tokenizer(tokenizer_ref or source.get("tokenizer"), target),
                None, trained_max_length(meta), meta)
    tokenizer_ref = tokenizer_ref or (None if record else (meta.get("source") or {}).get("tokenizer"))
    return task, runner, _tokenizer(tokenizer_ref, target, record), names, trained_max_length(meta), meta


def eval_task(target: str, task_spec: str | None, device: Any, default_task: Any = None) -> Any:
    """The task to score ``target`` on (:func:`_task_for` with what it records, read without
    loading it), after the checks that need no model: the target exists, an ONNX file is not
    asked to run on CUDA, an artifact's head was trained."""
    from optc.tools.cli.preflight import recorded_meta

    kind = target_kind(target)
    if kind != "hf" and not Path(target).exists():
        raise InputError(f"'{target}' does not exist")
    if kind == "onnx" and device is not None and device.type == "cuda":
        raise InputError(f"'{target}' is an ONNX file, run by ONNX Runtime on the CPU here: "
                         "drop --device cuda (or evaluate the optc artifact on CUDA)")
    meta = recorded_meta(target)
    if kind == "artifact":
        _refuse_untrained_head(target, meta)
    return _task_for(target, task_spec, meta, default_task)


def _refuse_untrained_head(target: str, meta: dict[str, Any]) -> None:
    """Scores of a head the checkpoint lacked (random weights) mean nothing: refuse them,
    unless optc finetune has trained the model since (it records the task)."""
    fresh = (meta.get("source") or {}).get("newly_initialized") or []
    if fresh and not (meta.get("task") or {}).get("trained_steps"):
        raise InputError(
            f"'{target}' has weights its checkpoint lacked, initialized at random "
            f"({', '.join(fresh[:3])}{', ...' if len(fresh) > 3 else ''}): train it first "
            "(optc finetune) before evaluating"
        )


def max_length_for(target: str, given: int | None, recorded: int | None,
                meta: dict[str, Any]) -> int | None:
    """The token limit to score with: ``given`` (--max-length), else the recorded one. A given
    limit that differs from the recorded one wins with a warning; an optc output that records
    none (not fine-tuned by optc) is scored at the task's default with a warning."""
    if given is not None and recorded is not None and given != recorded:
        print(f"optc: warning: --max-length {given} differs from the {recorded} tokens "
              f"'{target}' was fine-tuned with; scoring with {given}", file=sys.stderr)
    elif given is None and recorded is None and meta.get("task"):
        print(f"optc: warning: '{target}' records no max length (not fine-tuned by optc): "
              "scoring with the task's default, 128 tokens (384 for QA); pass --max-length N "
              "to choose", file=sys.stderr)
    return given or recorded


def token_names(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    from optc.tasks.batching import INPUT_NAMES

    return None if names is None else tuple(n for n in names if n in INPUT_NAMES)


def model_pooling(task: Any, tokenizer_ref: str | None, meta: dict[str, Any],
                   tokenizer: Any) -> Any:
    """The pooling the model's directory declares (sentence-transformers ``modules.json``) for
    the embedding tasks: the first directory of --tokenizer, the recorded source and the one
    the tokenizer was loaded from (a packaged model's name resolves to its directory); None
    for other tasks, or where no directory is known (then the task pools with mean)."""
    from optc.frontends.packaged import packaged_model, packaged_model_path
    from optc.tasks import read_pooling

    if task.trainable:
        return None
    for ref in (tokenizer_ref, (meta.get("source") or {}).get("tokenizer"),
                getattr(tokenizer, "name_or_path", None)):
        if not ref:
            continue
        path = Path(str(ref))
        if not path.is_dir():
            packaged = packaged_model(str(ref))
            path = (packaged_model_path(packaged.name) if packaged is not None else None) or path
        if path.is_dir():
            return read_pooling(path)
    return None
