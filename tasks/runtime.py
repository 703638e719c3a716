"""Run any backend's output on a list of texts: tokenize, sort by length, batch, put back.

    from optc.tasks.runtime import Runner

    runner = Runner.open("minilm.onnx", threads=2)   # an artifact, .onnx or TorchScript .pt
    vectors = runner.encode(texts, batch_size=32)    # [len(texts), width], in input order
    logits = Runner.open("sst2-model")(["a fine film", "dull"])   # classifiers: logits

The output's recorded tokenizer and max length are used (:mod:`optc.backends.runtime` loads
it). Texts are tokenized once, sorted by length and cut into batches of ``batch_size`` that are
padded only to their own longest row (:func:`optc.tasks.batching.batches`, the batching
``optc eval`` uses), so a corpus of short and long texts spends its FLOPs on tokens, not on
padding. Rows come back in the order of ``texts``.

What a row is depends on the model's outputs: ``logits`` (a classifier or regressor) are
returned as they are; ``last_hidden_state`` (an encoder) is pooled with the attention mask into
one embedding per text (:class:`~optc.tasks.pooling.Pooling`: ``pooling=``, else the recorded
task's, else what the model's sentence-transformers directory declares, else mean).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from optc.backends.eager import EagerModule
from optc.backends.runtime import LoadedOutput, open_output
from optc.errors import InputError
from optc.ir.core import Module
from optc.tasks.batching import INPUT_NAMES, batches
from optc.tasks.limits import check_tokenizer, model_limits
from optc.tasks.pooling import DEFAULT_POOLING, Pooling, parse_pooling, read_pooling
from optc.tasks.records import Example
from optc.tasks.registry import get_task
from optc.tasks.task import model_output

__all__ = ["Runner", "DEFAULT_MAX_LENGTH"]

DEFAULT_MAX_LENGTH = 128
"""Token limit when the output records none (what ``optc eval`` uses), clamped to the model's
position table where it is known."""

Text = str | tuple[str, str]
"""A text, or a pair of texts (for pair classifiers such as MRPC)."""


class Runner:
    """A loaded output that maps texts to rows: logits or pooled embeddings.

    Build it with :meth:`open`. ``runner(texts)`` and ``runner.encode(texts)`` are the same.
    """

    def __init__(self, loaded: LoadedOutput, tokenizer: Any, max_length: int,
                 pooling: Pooling, pad_to: int | None = None) -> None:
        self.loaded = loaded
        """The output: its model, input names and recorded meta."""
        self.tokenizer = tokenizer
        """The tokenizer texts are split with."""
        self.max_length = max_length
        """Texts (pairs: both segments together) are truncated to this many tokens."""
        self.pooling = pooling
        """How token states become one embedding per text (encoders only)."""
        self.input_names = tuple(n for n in loaded.input_names if n in INPUT_NAMES)
        """The token inputs the model is called with."""
        self.pad_to = pad_to
        """Every batch is padded to this many tokens (a model captured for one length)."""

    @classmethod
    def open(cls, target: str | os.PathLike | Module | EagerModule, tokenizer: Any = None,
             threads: int | None = None, max_length: int | None = None,
             pooling: str | Pooling | None = None) -> Runner:
        """Load ``target`` (an optc artifact directory, an ``.onnx`` file, a TorchScript
        ``.pt`` file, or an IR module / compiled module). ``tokenizer`` (an object, directory
        or id) defaults to the one the output records or carries; ``max_length`` to the one it
        was fine-tuned with, else :data:`DEFAULT_MAX_LENGTH` within its position table;
        ``pooling`` (``mean``, ``cls``, ``max``, ``mean_sqrt_len``, ``+normalize``) as the
        module docstring says. ``threads``: see :func:`optc.backends.runtime.open_output`."""
        loaded = open_output(target, threads=threads)
        if "input_ids" not in loaded.input_names:
            raise InputError(f"{loaded.where} takes no input_ids (its inputs: "
                             f"{', '.join(loaded.input_names)}): the runner feeds token ids")
        tok = loaded.tokenizer(tokenizer)
        limits = model_limits(loaded.model)
        check_tokenizer(tok, limits, f"running {loaded.where}")
        if max_length is not None and (isinstance(max_length, bool)
                                       or not isinstance(max_length, int) or max_length < 1):
            raise InputError(f"max_length must be a positive integer, not {max_length!r}")
        length = max_length or loaded.max_length or limits.length or DEFAULT_MAX_LENGTH
        if limits.positions is not None and length > limits.positions:
            if max_length is not None:
                raise InputError(f"max_length {max_length} is longer than the model's position "
                                 f"table: give at most {limits.positions} tokens")
            length = limits.positions
        return cls(loaded, tok, length, _pooling(loaded, tok, pooling), limits.length)

    def __call__(self, texts: Sequence[Text], batch_size: int = 32) -> torch.Tensor:
        return self.encode(texts, batch_size)

    def encode(self, texts: Sequence[Text], batch_size: int = 32) -> torch.Tensor:
        """[len(texts), width] float32 rows in the order of ``texts``: the model's logits, or
        its pooled token states. Batches are sorted by length and padded to their longest
        row; ``texts`` holds strings, or (text, text_pair) tuples, not a mix."""
        if isinstance(texts, str):
            raise InputError("encode takes a list of texts, not one string: wrap it in a list")
        rows: list[torch.Tensor | None] = [None] * len(texts)
        for index, values in self.batches(texts, batch_size):
            for row, i in enumerate(index):
                rows[i] = values[row]
        if not rows:
            return torch.empty(0, 0)
        return torch.stack(rows)  # type: ignore[arg-type]

    def batches(self, texts: Sequence[Text], batch_size: int = 32,
                ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(the texts' positions, their rows) per model call, longest texts first."""
        examples = [_example(t, i) for i, t in enumerate(texts)]
        if not examples:
            return
        wanted = tuple(dict.fromkeys((*self.input_names, "attention_mask")))
        with torch.no_grad():
            for batch in batches(examples, self.tokenizer, batch_size, self.max_length, wanted,
                                 pad_to=self.pad_to):
                outputs = self.loaded.model(**{k: batch[k] for k in self.input_names})
                yield batch["index"].tolist(), self._rows(outputs, batch["attention_mask"])

    def _rows(self, outputs: Any, mask: torch.Tensor) -> torch.Tensor:
        keys = set(outputs) if isinstance(outputs, dict) else set()
        if "logits" in keys or hasattr(outputs, "logits"):
            return model_output(outputs, "logits").detach().float().cpu()
        try:
            hidden = model_output(outputs, "last_hidden_state")
        except InputError:
            raise InputError(f"{self.loaded.where} outputs {', '.join(sorted(keys)) or 'nothing'}"
                             ": the runner returns logits or pooled last_hidden_state (score QA "
                             "models with optc eval)") from None
        return self.pooling(hidden.detach().float().cpu(), mask)


def _example(text: Any, i: int) -> Example:
    if isinstance(text, str):
        return Example(text)
    if isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, str) for t in text):
        return Example(text[0], text[1])
    raise InputError(f"text {i} is a {type(text).__name__}: give strings, or (text, text_pair) "
                     "tuples of two strings")


def _pooling(loaded: LoadedOutput, tokenizer: Any, given: str | Pooling | None) -> Pooling:
    """``given``, else the recorded task's pooling, else the model directory's, else mean."""
    chosen = parse_pooling(given)
    if chosen is not None:
        return chosen
    task = loaded.meta.get("task")
    spec = task.get("spec") if isinstance(task, dict) else None
    if spec:
        recorded = get_task(str(spec)).pooling
        if recorded is not None:
            return recorded
    source = loaded.meta.get("source")
    for ref in ((source or {}).get("tokenizer") if isinstance(source, dict) else None,
                getattr(tokenizer, "name_or_path", None)):
        if ref and Path(str(ref)).is_dir():
            found = read_pooling(ref)
            if found is not None:
                return found
    return DEFAULT_POOLING
