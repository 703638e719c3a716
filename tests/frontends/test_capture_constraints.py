"""capture() when torch.export refuses a dynamic sequence length: each kind of constraint a
model's code can put on it, reproduced by a tiny module (see optc.frontends.capture_shapes)."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import optc
from optc.backends.model_inputs import InputCheck, fixed_length, seq_range
from optc.backends.selfcheck import example_inputs
from optc.errors import FrontendError, ModelInputError
from optc.frontends.capture import _explain
from optc.frontends.capture_shapes import constraint_line, export_adapting

VOCAB, HIDDEN, MAX = 50, 8, 128


class Base(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, HIDDEN)
        self.pos = torch.nn.Parameter(torch.randn(MAX, HIDDEN))


class Specializes(Base):
    """Turns the length into a Python int (Funnel, Mamba, RWKV do the like)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = int(ids.shape[1])
        return self.emb(ids) + self.pos[:n] * n


class Blocks(Base):
    """Pads the sequence to a multiple of a block of 4 and works block by block (LongT5's local
    attention, Qwen3.5's chunked rule)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, s, h = x.shape
        x = torch.nn.functional.pad(x, (0, 0, 0, (-s) % 4))
        blocks = x.reshape(b, -1, 4, h)
        return (blocks - blocks.mean(2, keepdim=True)).reshape(b, -1, h)[:, :s]


class Clamped(Base):
    """Keeps min(16, seq) positions: torch's solver cannot bound ``min(16, s) <= s`` although
    it always holds (DeepSeek-V3.2, MiniMax)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        k = min(16, x.shape[1])
        return x[:, :k].sum(1) + x.topk(k, dim=1).values.mean(1)


class OneLength(Base):
    """Computes differently at seq == 2 (MobileBERT)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        return x if x.shape[1] == 2 else x * 2 + self.pos[: x.shape[1]]


def _ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _capture(model: torch.nn.Module, seq: int = 7) -> optc.Module:
    shapes = [{0: Dim("batch"), 1: Dim("seq", max=MAX)}]
    return optc.capture(model.eval(), {"ids": _ids(3, seq)}, dynamic_shapes=shapes)


def _same(model: torch.nn.Module, module: optc.Module, batch: int, seq: int) -> None:
    ids = _ids(batch, seq, seed=seq)
    with torch.no_grad():
        want = model(ids)
    got = optc.to_eager(module)(ids=ids)["output"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_specialized_length_is_captured_static_and_only_that_length_runs(caplog):
    model = Specializes()
    with caplog.at_level("WARNING", logger="optc"):
        module = _capture(model)
    assert "captured for seq == 7 only: inputs are padded to 7 tokens" in caplog.text
    assert "turns seq into a constant (7 in the example)" in caplog.text
    assert module.graph.inputs[0].type.shape == ("batch", 7)
    assert fixed_length(module) == 7 and seq_range(module) == (7, 7)
    _same(model, module, 2, 7)
    _same(model, module, 5, 7)  # the batch stays dynamic
    with pytest.raises(ModelInputError, match="captured for sequences of 7 tokens only"):
        InputCheck(module)({"ids": _ids(2, 5)})
    assert {feeds["ids"].shape[1] for feeds in example_inputs(module)} == {7}


def test_a_dynamic_module_has_no_fixed_length():
    module = _capture(OneLength())
    assert fixed_length(module) is None
    InputCheck(module)({"ids": _ids(2, 9)})


def test_block_padding_stays_dynamic():
    """torch.export cannot even build the fix it suggests here; the capture keeps seq
    symbolic (Dim.AUTO), and lengths that are and are not multiples of the block agree."""
    model = Blocks()
    module = _capture(model)
    assert module.graph.inputs[0].type.shape == ("batch", "seq")
    assert seq_range(module) == (1, MAX)
    for seq in (3, 8, 13, 64):
        _same(model, module, 2, seq)


def test_a_guard_the_solver_cannot_bound_stays_dynamic_over_the_whole_range(caplog):
    model = Clamped()
    with caplog.at_level("WARNING", logger="optc"):
        module = _capture(model)
    assert seq_range(module) == (1, MAX)
    assert "captured for" not in caplog.text  # nothing is limited
    for seq in (3, 16, 40, MAX):  # past 16 too: min(16, seq) is computed, not traced
        _same(model, module, 2, seq)


def test_a_branch_on_one_length_narrows_the_range(caplog):
    model = OneLength()
    with caplog.at_level("WARNING", logger="optc"):
        module = _capture(model)
    assert "captured for seq 3..128 only" in caplog.text
    assert seq_range(module) == (3, MAX)
    _same(model, module, 2, 5)
    with pytest.raises(ModelInputError):
        InputCheck(module)({"ids": _ids(2, 2)})


class Star(torch.nn.Module):
    """Takes ``*args``, as capture's wrapper does (dynamic shapes: one tuple of entries)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(*args)


def _export(model: torch.nn.Module):
    def export(args, shapes):
        return torch.export.export(Star(model), args, dynamic_shapes=shapes, strict=False)
    return export


def _resize(ids: torch.Tensor):
    def resize(name: str, n: int):
        assert name == "seq"
        return (torch.cat([ids, ids[:, -1:].expand(-1, n - ids.shape[1])], 1),)
    return resize


def test_a_specialized_length_is_captured_at_the_length_asked_for():
    ids = _ids(3, 7)
    shapes = ({0: Dim("batch"), 1: Dim("seq", max=MAX)},),
    out = export_adapting(_export(Specializes().eval()), (ids,), shapes, resize=_resize(ids),
                          static_length=32)
    assert out.args[0].shape == (3, 32)
    assert out.note.startswith("captured for seq == 32 only: inputs are padded to 32 tokens")
    ids_input = next(n for n in out.program.graph.nodes if n.op == "placeholder"
                     and n.meta["val"].dtype == torch.int64)
    assert ids_input.meta["val"].shape[1] == 32


class OnlySeven(Specializes):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] != 7:
            raise ValueError("this model takes 7 tokens")
        return super().forward(ids)


def test_a_length_the_model_refuses_falls_back_to_the_example_length():
    ids = _ids(3, 7)
    shapes = ({0: Dim("batch"), 1: Dim("seq", max=MAX)},),
    out = export_adapting(_export(OnlySeven().eval()), (ids,), shapes, resize=_resize(ids),
                          static_length=32)
    assert out.args[0].shape == (3, 7)
    assert "captured for seq == 7 only" in out.note
    assert "at 32 tokens it fails: this model takes 7 tokens" in out.note


def test_a_constraint_failure_is_one_line():
    shapes = ({0: Dim("batch"), 1: Dim("seq", max=MAX)},)
    with pytest.raises(Exception, match="Constraints violated") as info:
        torch.export.export(Specializes().eval(), (_ids(3, 7),), dynamic_shapes=shapes,
                            strict=False)
    assert len(str(info.value).splitlines()) > 3  # what torch says
    assert constraint_line(info.value) == \
        "the model's code turns seq into a constant (7 in the example)"
    error = _explain(info.value, "Specializes")
    assert isinstance(error, FrontendError)
    assert "\n" not in str(error) and "turns seq into a constant (7" in str(error)
    with pytest.raises(Exception, match="Constraints violated") as info:
        torch.export.export(OneLength().eval(), (_ids(3, 7),), dynamic_shapes=shapes,
                            strict=False)
    line = constraint_line(info.value)
    assert "\n" not in line and line.startswith("not every seq in")


@pytest.mark.parametrize("cls", [Blocks, Clamped, Specializes])
def test_every_backend_runs_what_the_retries_capture(cls):
    """Dim.AUTO graphs compute sizes symbolically (``-s % 4``, ``min(16, s)``): every backend
    must lower those too."""
    from optc.backends.differential import run_backend

    model = cls().eval()
    module = _capture(model)
    for seq in (7,) if cls is Specializes else (5, 40):
        ids = _ids(2, seq, seed=seq)
        with torch.no_grad():
            want = model(ids)
        for backend in ("eager", "torchscript", "onnx"):
            got = run_backend(module, backend, {"ids": ids})["output"]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class BatchConstant(Base):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids) * int(ids.shape[0])


def test_a_specialized_batch_is_kept_at_the_example_size_never_resized():
    ids = _ids(3, 7)
    shapes = ({0: Dim("batch"), 1: Dim("seq", max=MAX)},),
    out = export_adapting(_export(BatchConstant().eval()), (ids,), shapes, resize=_resize(ids),
                          static_length=32)  # _resize refuses any dim but seq
    assert out.args[0].shape == (3, 7)
    assert out.note.startswith("captured for batch == 3 only: batches must have 3 rows")
