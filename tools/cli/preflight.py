"""What the commands check before they load a model: what a target records, and its data.

Loading and capturing a model takes up to a minute or more; a bad data path, a missing
column, an unknown label or a bad task spec found after that wastes it. So ``optc
finetune``, ``optc eval``, ``optc specialize`` and ``optc MODEL --passes`` (for passes that
read task data) first find the task (given with ``--task``, or the one the target records,
read here without loading the model: :func:`recorded_meta`) and read the data the command
will use through the task's own readers (:meth:`~optc.tasks.task.Task.read`), inside
:func:`~optc.tasks.reuse_reads` so that the later read takes what was read here instead of
parsing the file again.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["recorded_meta", "recorded_task", "read_task_data", "read_search_data",
           "check_pass_data", "reads_task"]


def recorded_meta(target: str | os.PathLike | None) -> dict[str, Any]:
    """The module ``meta`` that ``target`` records (its task, source and tokenizer), read
    without loading the model: an optc artifact's (the ``meta`` line of its IR text), the
    record in an ONNX or TorchScript output, the task in an optc ``hf`` export's
    ``config.json``; empty for anything else (a Hugging Face model or id, the embedded
    model). A file that cannot be read is the one-line error loading it would give."""
    from optc.artifacts import IR_FILE, is_artifact

    if target is None:
        return {}
    path = Path(target)
    if is_artifact(path):
        return _ir_meta(path / IR_FILE)
    if path.suffix == ".onnx" and path.is_file():
        return _onnx_meta(path)
    if path.suffix in (".pt", ".ts", ".jit") and path.is_file():
        return _torchscript_meta(path)
    if path.is_dir() and (path / "config.json").is_file():
        from optc.backends.hf import read_config

        task = (read_config(path).get("optc") or {}).get("task")
        return {"task": task} if isinstance(task, dict) else {}
    return {}


def recorded_task(target: str | os.PathLike | None) -> Any:
    """The task ``target`` records (:func:`recorded_meta`), or None."""
    from optc.train import task_from_meta

    return task_from_meta(recorded_meta(target))


def _ir_meta(file: Path) -> dict[str, Any]:
    """The ``meta {...}`` line :func:`optc.ir.printer.print_module` writes after the module's
    first line (one line of JSON), without parsing the rest of the IR."""
    from optc.errors import ArtifactError

    try:
        with open(file, encoding="utf-8") as f:
            lines = [f.readline(), f.readline()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read '{file}': {getattr(exc, 'strerror', None) or exc}") from None
    text = lines[1].strip()
    if not text.startswith("meta "):
        return {}
    try:
        meta = json.loads(text[len("meta "):])
    except ValueError as exc:
        raise ArtifactError(f"'{file}' line 2: meta is not valid JSON ({exc}); rebuild the "
                            "artifact with optc or fix its model.optc") from None
    return meta if isinstance(meta, dict) else {}


def _onnx_meta(path: Path) -> dict[str, Any]:
    import onnx

    from optc.backends.record import read_onnx_record
    from optc.errors import InputError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise their own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot load ONNX model '{path}': {first}") from None
    props = {p.key: p.value for p in model.metadata_props}
    return read_onnx_record(props, f"'{path}'").meta


def _torchscript_meta(path: Path) -> dict[str, Any]:
    """The record among a TorchScript file's extra files (``ARCHIVE/extra/optc.json`` in
    its zip), read with zipfile: torch.jit.load would load the whole model."""
    from optc.backends.record import RECORD_KEY, read_onnx_record
    from optc.errors import InputError

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist()
                         if n.endswith(f"/extra/{RECORD_KEY}")), None)
            text = archive.read(name).decode("utf-8") if name is not None else ""
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InputError(f"cannot load TorchScript file '{path}': {exc}") from None
    # The same record as an ONNX file's metadata_props entry (optc.backends.record).
    return read_onnx_record({RECORD_KEY: text}, f"'{path}'").meta


def read_task_data(task: Any, data: str | os.PathLike | None,
                   eval_split: str | None = None) -> None:
    """Read the files training on ``task`` reads (:func:`optc.train.finetune`): its train
    file (a directory without one, such as SQuAD's: its dev file, which training then
    splits), and its dev file when ``eval_split`` is ``dev``. Bad data raises its
    :class:`~optc.errors.InputError` here; inside :func:`~optc.tasks.reuse_reads` training
    then takes what was read."""
    from optc.errors import InputError

    try:
        task.data_file("train", data)
    except InputError:
        task.read("dev", data)  # or it says what is missing
        return
    task.read("train", data, val_size=0)
    if eval_split == "dev":
        task.read("dev", data)


def read_search_data(task: Any, args: Any) -> None:
    """Read the files ``optc specialize`` reads (``args``: its options): the validation data
    (``--val-data``, else the train file the validation split is carved from) and the dev
    file it reports on (unless ``--no-dev``; a task without one reports on another part of
    its file)."""
    from optc.errors import InputError

    if args.val_data is not None:
        task.read_file(args.val_data)
    else:
        read_task_data(task, args.data)
    if not getattr(args, "no_dev", False):
        try:
            task.data_file("dev", args.data)
        except InputError:
            return
        task.read("dev", args.data)


def check_pass_data(passes: list[Any], recorded: Any = None, task: Any = None) -> None:
    """Read the data each pass of a pipeline will read, before the model is loaded (run inside
    :func:`~optc.tasks.reuse_reads`, so that a pass reading a task's file again parses it no
    more): a pass that trains or scores on a task reads its training file (its ``task``
    option, else ``recorded``: the task the model records; a directory without a train file,
    such as SQuAD's, its dev file); a pass that calibrates reads the examples it takes (its
    ``samples``) as :func:`~optc.passes.support.calibration.calibration_batches` does, as ``task`` (the
    pipeline's ``--task``, what the passes get as ``ctx.task``) reads them. A pass with no data
    to read is left to say so itself."""
    from optc.passes.quantize import Quantize
    from optc.passes.support.calibration import CalibrationOptions, calibration_examples
    from optc.tasks import get_task

    for p in passes:
        if not p.uses_data:
            continue
        if reads_task(p):
            chosen = get_task(p.task) if p.task else recorded
            if chosen is not None:  # else the pass says that it needs one
                read_task_data(chosen, p.data, p.eval_split)
        elif isinstance(p, CalibrationOptions):
            if p.data is not None or (task is not None and task.data_path is not None):
                calibration_examples(p.data, p.samples, task=task)
        elif isinstance(p, Quantize):  # mode=static: its own task, else --task
            chosen = get_task(p.task) if p.task else task
            if p.data is not None or (chosen is not None and chosen.data_path is not None):
                calibration_examples(p.data, p.samples, "train", chosen)


def reads_task(p: Any) -> bool:
    """Whether pass ``p`` reads its task's data: the training passes (finetune, distill and
    the passes built on it), of ``quantize`` only ``mode=qat`` and ``max_drop`` (its
    ``static`` mode reads calibration data)."""
    from optc.passes.finetune import TrainingPass

    if not isinstance(p, TrainingPass):
        return False
    if p.name == "quantize":
        return p.mode == "qat" or p.max_drop is not None
    return True
