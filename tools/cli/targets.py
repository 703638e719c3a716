"""Loading what an ``optc`` subcommand is given as an IR module: an optc artifact, a model
directory, a Hugging Face id or (no target) the embedded all-MiniLM-L6-v2, with a ``--head``
that does not fit an artifact refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optc.errors import InputError

__all__ = ["load_target"]


def load_target(target: str | None, task: str, progress: Any) -> Any:
    """An IR module from an artifact, a model directory, a hub id, or the embedded MiniLM."""
    from optc.artifacts import is_artifact, load_module

    if target is not None and is_artifact(target):
        with progress.step(f"loading artifact {target}"):
            module = load_module(target)
        _check_task(target, task, module)
        return module
    if target is not None and Path(target).is_dir() and not (Path(target) / "config.json").exists():
        if (Path(target) / "metadata.json").exists() or (Path(target) / "model.optc").exists():
            raise InputError(f"'{target}' looks like an incomplete optc artifact (model.optc or metadata.json missing)")
    from optc.frontends.capture import capture
    from optc.frontends.huggingface import load_model

    with progress.step(f"loading {target or 'all-MiniLM-L6-v2 (embedded)'}"):
        model, source = load_model(target, task=task)
    with progress.step("capturing with torch.export"):
        return capture(model, source=source)


_TASK_HEADS = {"sequence-classification": "ForSequenceClassification",
               "question-answering": "ForQuestionAnswering",
               "token-classification": "ForTokenClassification"}


def _check_task(target: str, task: str, module: Any) -> None:
    """Refuse a --head that differs from the head an artifact was compiled with."""
    if task == "auto":
        return
    from optc.tasks import HEADS

    cls = str((module.meta.get("source") or {}).get("class") or "")
    head = next((t for t, suffix in _TASK_HEADS.items() if cls.endswith(suffix)), "base")
    kind = (module.meta.get("task") or {}).get("kind")
    if kind in HEADS:  # a head added by optc finetune
        head, cls = HEADS[kind], cls or "optc task head"
    if cls and head == task:
        return
    raise InputError(
        f"--head {task} does not apply to '{target}': an optc artifact's head is fixed when it is "
        f"compiled ({cls or 'unknown class'}, head {head if cls else 'unknown'}); drop --head, or "
        "compile the original model with --head"
    )
