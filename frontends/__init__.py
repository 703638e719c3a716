"""Frontends: PyTorch / Hugging Face models -> optc IR."""

from optc.frontends.capture import capture, example_inputs_for
from optc.frontends.huggingface import default_model_path, load_model, load_tokenizer
from optc.frontends.raising import raise_high_level_ops

__all__ = [
    "capture",
    "example_inputs_for",
    "default_model_path",
    "load_model",
    "load_tokenizer",
    "raise_high_level_ops",
]
