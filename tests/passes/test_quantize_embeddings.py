"""quantize's int8 embedding tables: per-row scales, dequantized after the gather, the same
numbers on every backend, and the embeddings=true|false|auto option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import optc
from optc.errors import BackendError, PassError, PipelineSpecError
from optc.ir.ops.quantized_embedding import quantize_table
from optc.ir.types import TensorType
from optc.passes import PassManager
from optc.passes.spec import parse_pipeline

WORD = "embeddings.word_embeddings.weight"
TABLES = (WORD, "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight")


def _tables(module) -> dict[str, torch.dtype]:  # noqa: ANN001
    return {n.args[1].name: n.args[1].data.dtype for n in module.graph if n.op == "embedding"}


@pytest.fixture(scope="module")
def quantized(bert):  # noqa: ANN001, ANN201
    _, base, _ = bert
    module = base.clone()
    report = PassManager("quantize").run(module)
    return module, report.records[-1].stats


def test_default_makes_every_table_int8_with_per_row_scales(bert, quantized) -> None:  # noqa: ANN001
    _, base, inputs = bert
    module, stats = quantized
    assert _tables(module) == dict.fromkeys(TABLES, torch.int8)
    assert stats["embeddings"] == 3
    before, after = (int(x) for x in stats["embedding_bytes"].split("->"))
    assert after < 0.3 * before
    word = module.params[WORD]
    scale = module.params[WORD + "_scale"]
    assert scale.data.shape == (word.data.shape[0],) and word.data.abs().max() <= 127
    # each row is within half a step of its fp32 row
    err = (word.data.float() * scale.data[:, None] - base.params[WORD].data).abs()
    assert bool((err <= scale.data[:, None] / 2 + 1e-7).all())
    # eager: the gathered rows dequantized, exactly the dequantized table's rows
    ids = inputs["input_ids"]
    node = next(n for n in module.graph if n.op == "embedding" and n.args[1] is word)
    from optc.ir.ops import get_op

    got = get_op("embedding").kernel(ids, word.data, scale.data)
    assert torch.equal(got, (word.data.float() * scale.data[:, None])[ids])
    assert node.outputs[0].type == TensorType(torch.float32, node.outputs[0].type.shape)


BEFORE = """module @m {
  dim batch = [1, inf]
  dim seq = [2, 64]
  param @word : f32[50,8]
  graph(%ids : i64[batch,seq]) {
    %emb : f32[batch,seq,8] = embedding(%ids, @word)
    %out : f32[batch,seq,8] = aten.mul.Tensor(%emb, 2.0)
    return (out=%out)
  }
}
"""

AFTER = """module @m {
  dim batch = [1, inf]
  dim seq = [2, 64]
  param @word : i8[50,8] {quantization=quantization(scheme="symmetric", axis=0)}
  param @word_scale : f32[50]
  graph(%ids : i64[batch,seq]) {
    %emb : f32[batch,seq,8] = embedding(%ids, @word, @word_scale)
    %out : f32[batch,seq,8] = aten.mul.Tensor(%emb, 2.0)
    return (out=%out)
  }
}
"""


def test_backends_agree_on_int8_tables(bert, tmp_path: Path) -> None:  # noqa: ANN001
    import onnx

    from optc.backends.onnx import OnnxModule, export_onnx
    from optc.backends.torchscript import export_torchscript
    from optc.ir import parse_module, print_module
    from optc.ir.verifier import verify
    from optc.passes.quantize import apply_int8_embeddings

    module = parse_module(BEFORE, weights={"word": torch.randn(50, 8)})
    fp32 = module.clone()
    stats = apply_int8_embeddings(module, [n for n in module.graph if n.op == "embedding"])
    verify(module)
    assert print_module(module) == AFTER and stats["embeddings"] == 1
    ids = torch.randint(0, 50, (3, 7))
    want = optc.to_eager(module)(ids)["out"]
    assert 0 < (want - optc.to_eager(fp32)(ids)["out"]).abs().max() < 0.1
    path = export_onnx(module, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert {i.name: i.data_type for i in graph.initializer}["word"] == onnx.TensorProto.INT8
    assert [n.op_type for n in graph.node if n.op_type in ("Gather", "DequantizeLinear")] == \
        ["Gather", "Gather"]  # rows and their scales gathered; the table is never dequantized
    got = OnnxModule(path)(input_ids=ids) if "input_ids" in OnnxModule(path).input_names \
        else OnnxModule(path)(ids)
    script = torch.jit.load(str(export_torchscript(module, tmp_path / "m.pt")))(ids)
    assert torch.equal(got["out"], want) and torch.equal(script["out"], want)
    _, base, _ = bert
    quantized = base.clone()
    PassManager("quantize").run(quantized)
    with pytest.raises(BackendError, match="int8"):
        optc.backends.write_backend(quantized, "hf", tmp_path / "hf")


def test_embeddings_false_and_second_pass_leave_tables(bert) -> None:  # noqa: ANN001
    _, base, _ = bert
    module = base.clone()
    stats = PassManager("quantize{embeddings=false}").run(module).records[-1].stats
    assert "embeddings" not in stats and set(_tables(module).values()) == {torch.float32}
    PassManager("quantize{targets=matmuls}").run(module)  # auto: no linears, no tables
    assert set(_tables(module).values()) == {torch.float32}
    again = base.clone()
    PassManager("quantize{targets=attention}").run(again)
    text = again.clone()
    with pytest.raises(PassError, match="already int8"):
        PassManager("quantize{targets=ffn,embeddings=true}").run(again)
    assert _tables(again) == _tables(text)  # refused: unchanged
    stats = PassManager("quantize{targets=ffn}").run(again).records[-1].stats  # auto skips them
    assert "embeddings" not in stats


def test_tied_table_is_skipped_by_auto_and_refused_by_true(bert) -> None:  # noqa: ANN001
    _, base, _ = bert
    module = base.clone()
    word = module.params[WORD]
    hidden = module.graph.outputs["last_hidden_state"]
    last = list(module.graph)[-1]
    vocab = int(word.data.shape[0])
    head = module.graph.create_node(
        "linear", (hidden, word), {},
        [TensorType(torch.float32, hidden.tensor_type.shape[:-1] + (vocab,))],
        names="lm_logits", after=last)
    module.graph.set_output("logits", head.outputs[0])
    with pytest.raises(PassError, match="tied"):
        PassManager("quantize{embeddings=true}").run(module)
    stats = PassManager("quantize").run(module).records[-1].stats
    assert stats["embeddings"] == 2 and _tables(module)[WORD] == torch.float32


def test_bad_option_and_table_rounding() -> None:
    with pytest.raises(PipelineSpecError, match="embeddings"):
        parse_pipeline("quantize{embeddings=maybe}")
    assert parse_pipeline("quantize{embeddings=auto}")[0].embeddings == "auto"
    assert parse_pipeline("quantize{embeddings=false}")[0].embeddings is False
    table = torch.tensor([[0.0, 0.0], [1.0, -0.5], [-254.0, 127.0]])
    q, scale = quantize_table(table)
    assert q.tolist() == [[0, 0], [127, -64], [-127, 64]]  # -63.5 rounds to even
    assert torch.allclose(scale, torch.tensor([1.0, 1.0 / 127, 2.0]))
