"""Greedy text generation with a compiled causal LM, with or without a key/value cache.

``greedy_generate(runner, input_ids, max_new_tokens)`` works on anything with the eager
backend's calling convention (keyword inputs, a dict with ``logits`` out) that lists its
``input_names``: an :class:`~optc.backends.eager.EagerModule` or an
:class:`~optc.backends.onnx.OnnxModule`.

- A runner built from a module rewritten by the ``kv-cache`` pass (it takes
  ``past_attention_mask``, ``past_key.<i>``, ``past_value.<i>``) runs the prompt once, then one
  token per step, feeding each step's ``present_key.<i>``/``present_value.<i>`` back as past.
- Any other causal LM re-runs the whole sequence at every step (the reference the cache must
  match).

Tokens are picked by argmax of the last position's logits, as Hugging Face's
``generate(do_sample=False)``. With ``eos_token_id``, a row that produced it gets
``pad_token_id`` afterwards and generation stops once every row has finished.
"""

from __future__ import annotations

from typing import Any

import torch

from optc.errors import InputError

__all__ = ["greedy_generate", "cache_layout"]

_ONNX_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16,
                "tensor(double)": torch.float64}


def cache_layout(runner: Any) -> dict[str, tuple[int, torch.dtype]]:
    """``{past input name: (width, dtype)}`` of a cached runner (empty: no cache)."""
    layout: dict[str, tuple[int, torch.dtype]] = {}
    ir = getattr(runner, "ir", None)
    if ir is not None:
        for v in ir.graph.inputs:
            if v.name.startswith(("past_key.", "past_value.")):
                layout[v.name] = (int(v.tensor_type.shape[-1]), v.tensor_type.dtype)
        return layout
    session = getattr(runner, "session", None)
    if session is not None:
        for i in session.get_inputs():
            if i.name.startswith(("past_key.", "past_value.")):
                layout[i.name] = (int(i.shape[-1]), _ONNX_DTYPES.get(i.type, torch.float32))
        return layout
    raise InputError("greedy_generate needs an EagerModule or an OnnxModule (a runner with "
                     "input_names and .ir or .session)")


def greedy_generate(runner: Any, input_ids: torch.Tensor, max_new_tokens: int, *,
                    attention_mask: torch.Tensor | None = None, eos_token_id: int | None = None,
                    pad_token_id: int = 0) -> torch.Tensor:
    """``input_ids`` [batch, prompt] followed by up to ``max_new_tokens`` greedy tokens.

    ``attention_mask`` (default all ones) marks the prompt's padding; generated tokens are
    attended. Uses the runner's key/value cache when it has one (see the module docstring)."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise InputError(f"input_ids must be [batch, prompt >= 1], got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    names = list(getattr(runner, "input_names", []))
    if "input_ids" not in names:
        raise InputError(f"greedy_generate needs a model with an input_ids input; it takes "
                         f"{', '.join(names) or 'nothing'}")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
    if mask.shape != input_ids.shape:
        raise InputError(f"attention_mask {tuple(mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    cached = "past_attention_mask" in names
    layout = cache_layout(runner) if cached else {}
    batch = input_ids.shape[0]
    tokens = input_ids
    done = torch.zeros(batch, dtype=torch.bool)
    step_ids, step_mask = input_ids, mask
    past_mask = mask[:, :0]
    past = {name: torch.zeros(batch, 0, width, dtype=dtype) for name, (width, dtype) in layout.items()}
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if cached:
                out = runner(input_ids=step_ids, attention_mask=step_mask,
                             past_attention_mask=past_mask, **past)
                past = {name: out[name.replace("past_", "present_", 1)] for name in layout}
                past_mask = torch.cat([past_mask, step_mask], 1)
            else:
                feeds = {"input_ids": tokens}
                if "attention_mask" in names:
                    feeds["attention_mask"] = mask
                out = runner(**feeds)
            nxt = out["logits"][:, -1].argmax(-1).to(tokens.dtype)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
                done |= nxt == eos_token_id
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
            step_ids, step_mask = nxt[:, None], torch.ones_like(nxt)[:, None]
            if eos_token_id is not None and bool(done.all()):
                break
    return tokens
