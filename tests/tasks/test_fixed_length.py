"""A module captured for one sequence length (its code turns the length into a constant) is
evaluated on rows of many lengths: every batch is padded to that length, and the scores are
the model's own."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import optc
from optc.errors import PipelineSpecError
from optc.tasks import batches, evaluate, get_task
from optc.tasks.limits import ModelLimits, fit_max_length, model_limits
from optc.tasks.records import Example

LENGTH = 12


class MaskedMeanClassifier(torch.nn.Module):
    """Token + position embeddings, masked mean, a linear head; the length becomes a Python
    int, so torch.export specializes it."""

    def __init__(self, vocab: int, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Parameter(torch.randn(64, hidden))
        self.head = torch.nn.Linear(hidden, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        n = int(input_ids.shape[1])
        x = self.emb(input_ids) + self.pos[:n]
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"logits": self.head(torch.tanh(pooled))}


EXAMPLES = [Example("a short one", None, 0), Example("a", None, 1),
            Example("a sentence that is a good deal longer than twelve word pieces, surely",
                    None, 1),
            Example("medium length text here", None, 0), Example("two words", None, 1),
            Example("and one more sentence of some length", None, 0)]


@pytest.fixture(scope="module")
def captured(tokenizer):
    model = MaskedMeanClassifier(len(tokenizer)).eval()
    example = tokenizer(["a b c"] * 2, padding="max_length", max_length=LENGTH,
                        return_tensors="pt")
    inputs = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
    batch, seq = Dim("batch"), Dim("seq", max=64)
    module = optc.capture(model, inputs, dynamic_shapes=[{0: batch, 1: seq}] * 2)
    return model, module


def test_a_fixed_length_module_pads_every_batch_and_scores_like_the_model(captured, tokenizer):
    model, module = captured
    assert module.graph.inputs[0].type.shape == ("batch", LENGTH)
    limits = model_limits(module)
    assert limits.length == LENGTH
    task = get_task("sst2")
    assert fit_max_length(task, None, limits) == LENGTH
    with pytest.raises(PipelineSpecError, match=f"captured for: give at most {LENGTH}"):
        fit_max_length(task, 20, limits)
    assert fit_max_length(task, 20, ModelLimits(64, None)) == 20
    lengths = {len(tokenizer(e.text, truncation=True, max_length=LENGTH)["input_ids"])
               for e in EXAMPLES}
    assert min(lengths) < LENGTH // 2 and max(lengths) == LENGTH  # rows of many lengths
    run = optc.to_eager(module)  # refuses any other length (InputCheck)
    names = ["input_ids", "attention_mask"]
    got = evaluate(task, run, EXAMPLES, tokenizer, batch_size=2, input_names=names)
    want = evaluate(task, model, EXAMPLES, tokenizer, batch_size=2, max_length=LENGTH,
                    input_names=names)
    assert got.predictions == want.predictions
    torch.testing.assert_close(got.losses, want.losses, rtol=1e-5, atol=1e-6)


def test_batches_pad_to_the_fixed_length(tokenizer):
    out = list(batches(EXAMPLES, tokenizer, batch_size=4, max_length=LENGTH, pad_to=LENGTH))
    assert {b["input_ids"].shape[1] for b in out} == {LENGTH}
    short = out[-1]
    assert short["attention_mask"].sum(1).max() < LENGTH  # a batch of short rows, padded
    with pytest.raises(optc.errors.InputError, match="takes sequences of 4 tokens only"):
        list(batches(EXAMPLES, tokenizer, batch_size=4, max_length=LENGTH, pad_to=4))


def test_calibration_batches_are_padded_to_the_fixed_length(captured, tmp_path):
    """Passes that measure the model on calibration data pad to the captured length too."""
    from optc.frontends.huggingface import default_model_path
    from optc.passes.support.calibration import calibration_batches

    _, module = captured
    data = tmp_path / "cal.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in EXAMPLES))
    batches = calibration_batches(module, str(data), samples=6, batch_size=4, max_length=128,
                                  tokenizer=str(default_model_path()), why="test")
    assert [tuple(b.inputs["input_ids"].shape) for b in batches] == [(4, LENGTH), (2, LENGTH)]
    assert batches[0].labels.tolist() == [0, 1, 1, 0]
