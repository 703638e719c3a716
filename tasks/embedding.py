"""Sentence-embedding tasks: scored on the embeddings pooled from a model's token states,
with no head and no training.

- ``sentence-similarity`` (kind ``embedding-similarity``): zero-shot semantic similarity as
  MTEB scores STS. Both sentences of a pair are embedded on their own, the cosine of the two
  embeddings is the prediction, and the Spearman (main) and Pearson correlations of the
  cosines with the gold scores are reported (x100). Default data: GLUE STS-B's tsv files
  (columns ``sentence1``, ``sentence2``, ``score``).
- ``embedding`` (kind ``embedding-agreement``): label-free. The user's own texts (a ``.txt``
  file, one text per line, or a column of a TSV/CSV/JSONL file) are embedded by the model and
  by a reference model (the model it was compressed from); reported are the mean cosine of
  each text's two embeddings and the top-10 retrieval agreement (for each text, the share of
  its 10 nearest neighbours among the texts by the reference that the model also has among
  its 10 nearest), both x100. The per-text loss is ``1 - cosine``.

Embeddings are :class:`~optc.tasks.pooling.Pooling` of ``last_hidden_state`` with the
attention mask: the task's ``pooling`` option, else the pooling the model's directory
declares (sentence-transformers ``modules.json``), else mean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from optc.errors import InputError
from optc.tasks.batching import batches
from optc.tasks.pooling import DEFAULT_POOLING, Pooling, parse_pooling
from optc.tasks.readers import TABLE_SUFFIXES, TableFormat
from optc.tasks.records import Example
from optc.tasks.task import AGREEMENT_METRICS, Task, model_output

__all__ = ["sentence_similarity", "embedding", "embed", "neighbour_agreement",
           "similarity_scores", "agreement_scores", "embedding_task_spec", "NEIGHBOURS"]

NEIGHBOURS = 10
"""Nearest neighbours compared by the top-k retrieval agreement."""

_HINT = " (point the task at your columns with text_column=, pair_column=, label_column=)"
_CHUNK = 1024
"""Rows of the similarity matrix computed at once."""

Progress = Callable[[int, int], None]


def _float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"sentence-similarity option {name}={value!r} must be a number") from None


def sentence_similarity(text_column: str = "sentence1", pair_column: str = "sentence2",
                        label_column: str = "score", pooling: str | Pooling | None = None,
                        max_score: float | str = 5.0,
                        data: str | os.PathLike | None = None) -> Task:
    """Zero-shot similarity of sentence pairs: the cosine of the two sentences' embeddings
    against gold scores (Spearman, Pearson). ``data`` defaults to ``glue/STS-B`` under the data
    root; ``pooling`` overrides the model's own (see :func:`~optc.tasks.pooling.parse_pooling`);
    ``max_score`` is the top of the gold scale (for the per-pair loss only)."""
    table = TableFormat(text=text_column, pair=pair_column, label=label_column, hint=_HINT)
    return Task(name="sentence-similarity", kind="embedding-similarity", num_labels=1,
                label_names=(), text_columns=(text_column, pair_column),
                label_column=label_column, splits=("train", "dev"),
                file_names=tuple(f"{{split}}{suffix}" for suffix in TABLE_SUFFIXES),
                metrics=("spearman", "pearson"), main_metric="spearman", table=table,
                data_path=str(data) if data is not None else "glue/STS-B",
                description="zero-shot sentence similarity: cosine of embeddings vs gold scores",
                pooling=parse_pooling(pooling), max_score=_float("max_score", max_score))


def embedding(data: str | os.PathLike | None = None, text_column: str = "text",
              pooling: str | Pooling | None = None) -> Task:
    """Label-free agreement of a model's embeddings with a reference model's on your texts:
    ``data`` is a ``.txt`` file (one text per line) or a TSV/CSV/JSONL file whose
    ``text_column`` holds the texts (or a directory with ``dev.txt``, ``dev.tsv``, ...)."""
    table = TableFormat(text=text_column, text_lines=True,
                        hint=" (name the column holding your texts with text_column=)")
    return Task(name="embedding", kind="embedding-agreement", num_labels=0, label_names=(),
                text_columns=(text_column,), label_column=None, splits=("train", "dev"),
                file_names=("{split}.txt",) + tuple(f"{{split}}{s}" for s in TABLE_SUFFIXES),
                metrics=AGREEMENT_METRICS, main_metric="cosine", table=table,
                data_path=str(data) if data is not None else None,
                description="label-free: embeddings' cosine and top-10 neighbours vs a reference",
                pooling=parse_pooling(pooling))


def embedding_task_spec(task: Task) -> str | None:
    """The spec ``get_task`` rebuilds an embedding task from, options that differ from the
    defaults included (``embedding{data=texts.txt,pooling=cls}``); None for other tasks. What
    a trained module records in ``meta["task"]["spec"]``."""
    if task.kind not in ("embedding-similarity", "embedding-agreement"):
        return None
    options = []
    if task.kind == "embedding-agreement":
        if task.data_path is not None:
            options.append(f"data={task.data_path}")
        if task.text_columns != ("text",):
            options.append(f"text_column={task.text_columns[0]}")
    else:
        if task.data_path != "glue/STS-B":
            options.append(f"data={task.data_path}")
        defaults = {"text_column": "sentence1", "pair_column": "sentence2", "label_column": "score"}
        given = dict(zip(("text_column", "pair_column"), task.text_columns, strict=True),
                     label_column=task.label_column)
        options += [f"{k}={v}" for k, v in given.items() if v != defaults[k]]
        if task.max_score != 5.0:
            options.append(f"max_score={task.max_score:g}")
    if task.pooling is not None:
        options.append(f"pooling={task.pooling.spec}")
    return f"{task.name}{{{','.join(options)}}}" if options else task.name


# --------------------------------------------------------------------------------------------
# Embedding texts


def _token_states(task: Task, outputs: Any) -> torch.Tensor:
    try:
        hidden = model_output(outputs, "last_hidden_state")
    except InputError:
        keys = ", ".join(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise InputError(f"task '{task.name}' pools the model's token states "
                         f"(last_hidden_state), but the model outputs only {keys}: evaluate the "
                         "encoder without its task head") from None
    if hidden.dim() != 3:
        raise InputError(f"task '{task.name}' pools token states [batch, seq, hidden], but "
                         f"last_hidden_state has shape {tuple(hidden.shape)}")
    return hidden


def embed(task: Task, model_fn: Callable[..., Any], texts: Sequence[str], tokenizer: Any,
          pooling: Pooling | None, batch_size: int, max_length: int, names: Sequence[str],
          device: torch.device | str | None = None,
          progress: Progress | None = None, pad_to: int | None = None) -> torch.Tensor:
    """[len(texts), width] float32 embeddings, in the order of ``texts``: batches sorted by
    length (padded to ``pad_to`` tokens when given), the model called with the inputs
    ``names``, its ``last_hidden_state`` pooled with the attention mask by ``task.pooling``,
    else ``pooling``, else mean."""
    chosen = task.pooling or pooling or DEFAULT_POOLING
    wanted = tuple(dict.fromkeys((*names, "attention_mask")))
    rows: list[torch.Tensor | None] = [None] * len(texts)
    done = 0
    with torch.no_grad():
        for batch in batches([Example(t) for t in texts], tokenizer, batch_size, max_length,
                             wanted, pad_to=pad_to):
            inputs = {k: batch[k] if device is None else batch[k].to(device) for k in names}
            hidden = _token_states(task, model_fn(**inputs)).detach().float().cpu()
            pooled = chosen(hidden, batch["attention_mask"])
            for row, i in enumerate(batch["index"].tolist()):
                rows[i] = pooled[row]
            done += len(batch["index"])
            if progress is not None:
                progress(done, len(texts))
    return torch.stack(rows)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Scores


def similarity_scores(task: Task, first: torch.Tensor, second: torch.Tensor,
                      scores: Sequence[float]) -> tuple[torch.Tensor, list[float], dict[str, float]]:
    """(per-pair losses, cosines, metrics) of pair embeddings ``first``/``second`` against
    the gold ``scores``."""
    cosines = F.cosine_similarity(first.float(), second.float(), dim=-1)
    losses = task.loss({"embeddings": first, "pair_embeddings": second}, list(scores),
                       reduction="none")
    predictions = [float(c) for c in cosines]
    return losses.float(), predictions, task.compute_metrics(predictions, list(scores))


def neighbour_agreement(embeddings: torch.Tensor, reference: torch.Tensor,
                        k: int = NEIGHBOURS) -> torch.Tensor:
    """Per row in [0, 1]: the share of its ``k`` nearest other rows by cosine in ``reference``
    that are also among its ``k`` nearest in ``embeddings`` (``k`` is capped at rows - 1)."""
    n = embeddings.shape[0]
    if n < 2:
        raise InputError(f"top-{k} retrieval agreement needs at least 2 texts, got {n}")
    k = min(k, n - 1)

    def neighbours(vectors: torch.Tensor, rows: slice) -> torch.Tensor:
        unit = F.normalize(vectors.float(), dim=-1)
        sims = unit[rows] @ unit.T
        own = torch.arange(rows.start, min(rows.stop, n))
        sims[torch.arange(len(own)), own] = float("-inf")  # a text is not its own neighbour
        return sims.topk(k, dim=-1).indices

    shares = []
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        mine, theirs = neighbours(embeddings, rows), neighbours(reference, rows)
        shared = (theirs[:, :, None] == mine[:, None, :]).any(dim=-1).sum(dim=-1)
        shares.append(shared.float() / k)
    return torch.cat(shares)


def agreement_scores(task: Task, embeddings: torch.Tensor, reference: torch.Tensor,
                     ) -> tuple[torch.Tensor, list[dict[str, float]], dict[str, float]]:
    """(per-text losses ``1 - cosine``, per-text ``{cosine, top10_agreement}``, metrics) of
    ``embeddings`` against the ``reference`` embeddings of the same texts."""
    if reference.shape[0] != embeddings.shape[0]:
        raise InputError(f"the reference has embeddings of {reference.shape[0]} texts, the "
                         f"model of {embeddings.shape[0]}: embed the same texts")
    if reference.dim() != 2:
        raise InputError(f"reference embeddings must be [texts, width], got "
                         f"{tuple(reference.shape)}")
    if embeddings.shape != reference.shape:
        raise InputError(f"the model's embeddings are {embeddings.shape[1]} wide and the "
                         f"reference's {reference.shape[1]}: their cosine is undefined")
    cosines = F.cosine_similarity(embeddings.float(), reference.float(), dim=-1).clamp(-1.0, 1.0)
    shares = neighbour_agreement(embeddings, reference)
    losses = task.loss({"embeddings": embeddings}, reference, reduction="none").float()
    predictions = [{"cosine": float(c), "top10_agreement": float(s)}
                   for c, s in zip(cosines.tolist(), shares.tolist(), strict=True)]
    return losses, predictions, task.compute_metrics(predictions, [None] * len(predictions))
