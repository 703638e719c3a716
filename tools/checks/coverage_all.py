"""Coverage of every text architecture ``transformers`` exposes, not of a list chosen by hand.

``python -m optc.tools.checks.coverage --all-transformers`` enumerates every model type of the
installed ``transformers`` with a ``...Model``, ``...ForCausalLM`` or
``...ForSequenceClassification`` class whose main input is ``input_ids`` and whose declared
input modalities are text only (vision, audio, video and multimodal classes declare others),
builds a tiny random-weight config for it by shrinking the default config's sizes generically
(hidden size, layers, heads, key/value heads, head dim, intermediate sizes, experts, vocab,
position table: matched by attribute name and by equality with the config's own hidden /
intermediate size, never by model type), and checks, each family in its own forked process
under a timeout so a hang or a crash is one row:

- capture: ``optc.capture`` of the model on token ids with a padded row;
- raised: every layer (``num_hidden_layers``, encoder + decoder for encoder-decoders) has its
  attention raised (the FFN count is reported beside it);
- prune-heads: head 1 of layer 0 removed equals the captured model with that head's slices
  zeroed (the edit the pruning claims to be exact for), on eager;
- backends: eager, TorchScript and ONNX of the captured model equal the model (<= 1e-4).

It prints one line per family as it finishes, then a markdown table and the share of families
whose attention is raised in every layer.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["text_families", "tiny_config", "check_text_family", "run_all", "load_rows"]

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS, VOCAB, POSITIONS = 32, 4, 2, 8, 64, 2, 256, 128
COLUMNS = ("class", "capture", "raised", "prune-heads", "backends")
_UNBUILT = "no: building the tiny model: "
_DONE, _NEXT = "done", "next"  # keys of the messages a check sends: finished / running

_LAYERS = re.compile(r"(^|_)(n_?layers?|num_(\w+_)?layers|(\w+_)?layers)$")
_KV = re.compile(r"(kv|key_value)_heads?$")
_HEADS = re.compile(r"(^|_)(n_)?heads?$|attention_heads$|num_heads$")
_HEAD_DIM = re.compile(r"head_dim$|^d_kv$|head_size$")
_INTER = re.compile(r"intermediate|ffn|(^|_)d_ff$|inner|mlp_dim|^hidden_dim$")
_EXPERTS = re.compile(r"(num|n)_(\w+_)?experts$")
_POSITIONS = re.compile(r"^(max_position_embeddings|n_positions|n_ctx|max_seq_len(gth)?)$")


def _modalities(cls: type) -> tuple[str, ...]:
    mods = getattr(cls, "input_modalities", "text")
    return (mods,) if isinstance(mods, str) else tuple(mods)


def text_families() -> dict[str, str]:
    """``{model_type: class name}`` for every text-input architecture; the base ``...Model``
    is preferred, then ``...ForCausalLM``, then ``...ForSequenceClassification``."""
    import transformers
    from transformers.models.auto import modeling_auto as auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    mappings = (auto.MODEL_MAPPING_NAMES, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    families = {}
    for model_type in sorted(set().union(*mappings)):
        if model_type not in CONFIG_MAPPING_NAMES:
            continue
        for mapping in mappings:
            names = mapping.get(model_type)
            if names is None:
                continue
            name = names[0] if isinstance(names, (list, tuple)) else names
            try:
                cls = getattr(transformers, name)
                main_input = cls.main_input_name
            except (ImportError, AttributeError):  # a class needing a missing backend
                continue
            if main_input == "input_ids" and _modalities(cls) == ("text",):
                families[model_type] = name
                break
    return families


def _shrunk(key: str, value: Any, hidden: Any, inter: Any, heads: Any, layers: Any) -> Any:
    """The tiny value of one integer config attribute, or ``value`` when it is not a size."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if key.endswith("token_id"):
        return value
    if key.endswith("vocab_size"):
        return min(value, VOCAB)
    if _KV.search(key):
        return KV_HEADS if heads and value < heads else HEADS
    if _HEAD_DIM.search(key):
        return HEAD_DIM
    if _HEADS.search(key) and value > HEADS:
        return HEADS
    if _LAYERS.search(key) and value > LAYERS:
        return LAYERS
    if _EXPERTS.search(key) and value > 4:
        return 4
    if key.endswith("experts_per_tok") or key in ("top_k", "moe_topk"):
        return min(value, 2)
    if key.endswith("_rank") and value > 16:
        return 16
    if _POSITIONS.match(key):
        return min(value, POSITIONS)
    if hidden and value == hidden:
        return HIDDEN
    if (inter and value == inter) or (_INTER.search(key) and value > HIDDEN):
        return INTER
    if key.endswith(("embedding_size", "embed_dim", "hidden_size")) and value > HIDDEN:
        return HIDDEN
    return value


def tiny_config(model_type: str) -> Any:
    """The default config of ``model_type`` with every size shrunk (see the module doc)."""
    from transformers import AutoConfig

    base = AutoConfig.for_model(model_type)
    hidden = getattr(base, "hidden_size", None)
    inter = getattr(base, "intermediate_size", None)
    heads = getattr(base, "num_attention_heads", None)
    layers = getattr(base, "num_hidden_layers", None)
    changes = {}
    for key, value in base.to_dict().items():
        new = _shrunk(key, value, hidden, inter, heads, layers)
        if key == "vocab_size" and value is None:  # no default vocabulary (ESM)
            new = VOCAB
        if isinstance(value, list) and layers and len(value) == layers and layers > LAYERS:
            new = value[:LAYERS]  # per-layer lists (layer types, windows)
        if new != value:
            changes[key] = new
    vocab = changes.get("vocab_size", getattr(base, "vocab_size", None))
    spare = iter(range(VOCAB))  # special tokens past the shrunk vocabulary get small ids
    for key, value in base.to_dict().items():
        if not key.endswith("token_id") or not isinstance(vocab, int):
            continue
        if isinstance(value, int) and value >= vocab:
            changes[key] = next(spare)
        elif isinstance(value, list):
            changes[key] = [v if v < vocab else next(spare) for v in value]
    config = type(base)(**{**base.to_dict(), **changes})
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return config


def _expected_layers(config: Any) -> int:
    if getattr(config, "is_encoder_decoder", False):
        enc = next((getattr(config, k) for k in ("encoder_layers", "num_layers", "num_hidden_layers")
                    if isinstance(getattr(config, k, None), int)), 0)
        dec = next((getattr(config, k) for k in ("decoder_layers", "num_decoder_layers")
                    if isinstance(getattr(config, k, None), int)), enc)
        return int(enc + dec)
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def _inputs(model: torch.nn.Module, seq: int = 7) -> dict[str, torch.Tensor]:
    import inspect

    params = inspect.signature(model.forward).parameters
    vocab = int(getattr(model.config, "vocab_size", VOCAB) or VOCAB)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(vocab, 4), (3, seq), generator=gen)
    inputs = {"input_ids": ids}
    if "attention_mask" in params:
        mask = torch.ones(3, seq, dtype=torch.long)
        mask[0, 5:] = 0
        inputs["attention_mask"] = mask
    if getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        inputs["decoder_input_ids"] = ids.clone()
    return inputs


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120] if text else ''}"


def check_text_family(model_type: str, class_name: str, atol: float = 1e-4,
                      progress: Callable[[dict[str, str]], None] | None = None) -> dict[str, str]:
    """Every column for one family: ``yes`` or ``no: <one-line reason>``. ``progress`` gets
    the cells after each check (so a later check that hangs does not hide the earlier ones).
    The model keeps the attention implementation ``transformers`` picks for it."""
    import transformers

    from optc.backends.differential import run_backend
    from optc.backends.model_inputs import fixed_length
    from optc.frontends.capture import capture
    from optc.ir.analysis import analyze
    from optc.passes import PassManager

    cells = {c: "-" for c in COLUMNS}
    cells["class"] = class_name
    try:
        config = tiny_config(model_type)
        torch.manual_seed(0)
        model = getattr(transformers, class_name)._from_config(config).eval()
        inputs = _inputs(model)
        with torch.inference_mode():
            out = model(**inputs)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        cells["capture"] = f"{_UNBUILT}{_reason(exc)}"
        return cells
    notes = _Notes()
    logging.getLogger("optc").addHandler(notes)
    try:
        module = capture(model, inputs)
    except Exception as exc:  # noqa: BLE001
        cells["capture"] = f"no: {_reason(exc)}"
        return cells
    finally:
        logging.getLogger("optc").removeHandler(notes)
    cells["capture"] = "yes"
    report = progress or (lambda cells: None)
    length = fixed_length(module)
    if length is not None and length != inputs["input_ids"].shape[1]:
        inputs = _inputs(model, length)  # captured for one length: the checks run at it
        with torch.inference_mode():
            out = model(**inputs)
    want = {k: out[k] for k in module.graph.outputs}
    layers = analyze(module).layers
    expected = _expected_layers(model.config)
    n_att = sum(1 for x in layers if x.attention)
    n_ffn = sum(1 for x in layers if x.ffn)
    if expected and n_att == expected and len(layers) == expected:
        cells["raised"] = "yes" + ("" if n_ffn == expected else f" (FFN in {n_ffn} of {expected})")
    else:
        why = next((m.split(" (first: ", 1)[-1].rsplit("); `optc inspect`", 1)[0] for m in notes.messages
                    if "were not raised" in m), "")
        cells["raised"] = (f"no: attention in {n_att} of {expected} layers ({len(layers)} found)"
                           + (f"; first miss: {why[:200]}" if why else ""))
    report({**cells, _NEXT: "prune-heads"})
    refused = layers[0].attention.prunable if n_att and layers[0].attention else None
    if refused:  # what prune-heads itself says (e.g. q/k/v not their own projections)
        cells["prune-heads"] = f"no: {refused}"
    elif n_att and layers[0].attention and layers[0].attention.node.attr("num_heads") > 1:
        try:
            m = module.clone()
            for s in analyze(m).layers[0].attention.head_slices(1):
                p = m.params[s.param]
                data = p.data.clone()
                data.index_fill_(s.dim, torch.tensor(list(s.index)), 0.0)
                p.data = data
            zeroed = run_backend(m, "eager", inputs)
            PassManager("prune-heads{heads=0:1}").run(m)
            diff = _max_diff(run_backend(m, "eager", inputs), zeroed)
            cells["prune-heads"] = "yes" if diff <= atol else f"no: differs by {diff:.2g}"
        except Exception as exc:  # noqa: BLE001
            cells["prune-heads"] = f"no: {_reason(exc)}"
    report({**cells, _NEXT: "backends"})
    bad = []
    for backend in ("eager", "torchscript", "onnx"):
        try:
            diff = _max_diff(run_backend(module, backend, inputs), want)
            if diff > atol:
                bad.append(f"{backend} differs by {diff:.2g}")
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{backend}: {_reason(exc)}")
    cells["backends"] = "yes" if not bad else "no: " + "; ".join(bad)
    return cells


class _Notes(logging.Handler):
    """Collects optc's warnings (the capture names the first attention it could not raise)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    return max(((got[k].float() - want[k].float()).abs().max().item() for k in want), default=0.0)


def _child(model_type: str, class_name: str, conn: Any) -> None:
    torch.set_num_threads(1)
    try:
        cells = check_text_family(model_type, class_name, progress=conn.send)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        cells = {"class": class_name, "capture": f"no: {_reason(exc)}"}
        traceback.print_exc()
    conn.send({**cells, _DONE: "yes"})
    conn.close()


def _run_one(model_type: str, class_name: str, timeout: float) -> dict[str, str]:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(model_type, class_name, child), daemon=True)
    proc.start()
    child.close()
    cells: dict[str, str] = {"class": class_name}
    deadline = time.monotonic() + timeout
    try:
        while _DONE not in cells and parent.poll(max(0.0, deadline - time.monotonic())):
            cells = parent.recv()
    except EOFError:
        pass
    finally:  # also when the run itself is interrupted: no check outlives it
        proc.join(5 if _DONE in cells else 0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if _DONE not in cells:  # the checks not finished say why
        why = (f"timed out after {timeout:.0f} s" if proc.exitcode in (None, -9)
               else f"the check process died (exit {proc.exitcode})")
        cells = {**cells, cells.get(_NEXT, "capture"): f"no: {why}"}
    return {c: cells.get(c, "-") for c in COLUMNS}


def markdown(results: dict[str, dict[str, str]]) -> str:
    lines = ["| model type | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for family, cells in results.items():
        lines.append(f"| {family} | " + " | ".join(cells[c].replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines)


def summary(results: dict[str, dict[str, str]]) -> str:
    total = len(results)
    captured = sum(1 for c in results.values() if c["capture"] == "yes")
    raised = sum(1 for c in results.values() if c["raised"].startswith("yes"))
    pruned = sum(1 for c in results.values() if c["prune-heads"] == "yes")
    lowered = sum(1 for c in results.values() if c["backends"] == "yes")
    built = sum(1 for c in results.values() if not c["capture"].startswith(_UNBUILT))
    pct = (lambda n: f"{n}/{total} ({100 * n / total:.0f}%)") if total else str
    of_built = f"{raised}/{built} ({100 * raised / built:.0f}%)" if built else "0/0"
    return (f"text families: {total}; captured {pct(captured)}; attention raised in every layer "
            f"{pct(raised)}; prune-heads exact {pct(pruned)}; every backend equal {pct(lowered)}; "
            f"of the {built} whose tiny model transformers builds and runs: raised {of_built}")


def load_rows(path: str) -> dict[str, dict[str, str]]:
    """The rows a run appended to ``path`` (``--jsonl``), the last one of each family."""
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows[row["family"]] = {c: row.get(c, "-") for c in COLUMNS}
    return rows


def run_all(families: list[str] | None = None, timeout: float = 240.0,
            jsonl: str | None = None) -> dict[str, dict[str, str]]:
    """Check ``families`` (default: every text family) one forked process each; a line per
    family on stderr (and appended to ``jsonl``) as it finishes."""
    import transformers  # noqa: F401 - imported once before forking

    from optc.frontends.capture import capture  # noqa: F401

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the running check too
    every = text_families()
    unknown = [f for f in families or [] if f not in every]
    if unknown:
        raise ValueError(f"not text model types of transformers {transformers.__version__}: {unknown}")
    results = {}
    for family in families or list(every):
        start = time.monotonic()
        results[family] = _run_one(family, every[family], timeout)
        line = {"family": family, **results[family], "seconds": round(time.monotonic() - start, 1)}
        print(json.dumps(line), file=sys.stderr, flush=True)
        if jsonl:
            with open(jsonl, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
    return results
