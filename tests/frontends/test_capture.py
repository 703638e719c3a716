"""optc.capture: Hugging Face families and plain modules -> verified IR with high-level ops.

Structure is checked on the op graph (never on parameter names); numbers are checked in
tests/backends/test_eager.py. Failures to capture must be FrontendErrors naming the op and the
user's source line.
"""

from __future__ import annotations

import collections
import importlib.util

import pytest
import torch

import optc
from optc.errors import FrontendError
from optc.ir import Module, collect_problems
from optc.ir.core import Node
from optc.tests.conftest import tiny_model
from optc.tests.frontends.hf_cases import ENCODERS, OUTPUTS, captured

LAYERS, HEADS, HEAD_DIM, HIDDEN, FFN = 2, 4, 16, 64, 128


def ops_of(module: Module) -> collections.Counter[str]:
    return collections.Counter(node.op for node in module.graph)


def single_user(node: Node) -> Node | None:
    users = node.outputs[0].users()
    return users[0] if len(users) == 1 else None


def ffn_chains(module: Module) -> list[tuple[Node, Node, Node]]:
    """Every ``linear -> gelu -> linear`` chain in the graph."""
    chains = []
    for node in module.graph:
        if node.op != "gelu":
            continue
        up = node.args[0].producer
        down = single_user(node)
        if up is not None and up.op == "linear" and down is not None and down.op == "linear":
            chains.append((up, node, down))
    return chains


def assert_transformer_structure(module: Module, ffn: int = FFN, approximate: str = "none") -> None:
    ops = ops_of(module)
    assert collect_problems(module) == []
    attention = [n for n in module.graph if n.op == "attention"]
    assert len(attention) == LAYERS
    for node in attention:
        assert node.attr("num_heads") == HEADS and node.attr("head_dim") == HEAD_DIM
        assert [a.type.shape[-1] for a in node.args[:3]] == [HIDDEN] * 3
    chains = ffn_chains(module)
    assert len(chains) == LAYERS
    for up, gelu, down in chains:
        assert up.args[1].type.shape == (ffn, HIDDEN)
        assert down.args[1].type.shape == (HIDDEN, ffn)
        assert gelu.attr("approximate", "none") == approximate
    assert ops["layer_norm"] >= 2 * LAYERS
    assert ops["embedding"] >= 2
    leftovers = {op for op in ops if op.split(".")[1:2] in (
        ["scaled_dot_product_attention"], ["linear"], ["addmm"], ["softmax"], ["layer_norm"],
        ["embedding"], ["gelu"])}
    assert leftovers == set()


# -- Hugging Face families -------------------------------------------------------------------
@pytest.mark.parametrize(("family", "head"), ENCODERS)
def test_encoder_is_raised_to_transformer_ops(family, head):
    model, module = captured(family, head)
    assert_transformer_structure(module)
    assert list(module.graph.outputs) == OUTPUTS[(family, head)]
    names = [v.name for v in module.graph.inputs]
    expected = ["input_ids", "attention_mask"] + ([] if family == "distilbert" else ["token_type_ids"])
    assert names == expected
    assert module.dims["seq"].max == model.config.max_position_embeddings - (
        2 if "roberta" in family else 0)
    for name in names:
        assert module.graph.inputs[names.index(name)].type.shape == ("batch", "seq")
    assert module.meta["source"]["class"] == type(model).__name__
    assert not any(m.training for m in model.modules())  # an eval model stays in eval mode


def test_gpt2_captures_without_token_types_and_is_raised():
    model, module = captured("gpt2")
    assert [v.name for v in module.graph.inputs] == ["input_ids", "attention_mask"]
    assert_transformer_structure(module, ffn=4 * HIDDEN, approximate="tanh")
    ops = ops_of(module)
    assert "aten.addmm.default" not in ops and "aten.tanh.default" not in ops
    assert ops["linear"] == 6 * LAYERS  # q, k, v (split from c_attn), c_proj, c_fc, c_proj
    # The causal mask is folded into the boolean mask operand.
    for node in module.graph:
        if node.op == "attention":
            assert node.attr("causal") is False
            assert node.args[3].type.dtype == torch.bool


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_capture_with_eager_attention_gives_the_same_structure(family):
    _, module = captured(family, attn="eager")
    if family == "gpt2":
        assert_transformer_structure(module, ffn=4 * HIDDEN, approximate="tanh")
    else:
        assert_transformer_structure(module)
    mask_types = {n.args[3].type.dtype for n in module.graph if n.op == "attention"}
    assert mask_types == {torch.float32}  # additive mask, as the model computes it
    assert not any(n.op.startswith(("aten.matmul", "aten.softmax")) for n in module.graph)


def test_raise_ops_false_keeps_aten():
    model = tiny_model("bert")
    module = optc.capture(model, raise_ops=False)
    ops = ops_of(module)
    assert ops["aten.scaled_dot_product_attention.default"] == LAYERS
    assert not any("." not in op for op in ops)
    assert collect_problems(module) == []


def test_capture_restores_training_mode_and_leaves_parameters_alone():
    model = tiny_model("bert").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = optc.capture(model)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(n.op == "aten.dropout.default" for n in module.graph)  # captured in eval mode


def test_capture_restores_mixed_submodule_modes():
    model = tiny_model("bert").train()
    model.pooler.eval()
    optc.capture(model)
    assert model.training and not model.pooler.training


# -- plain modules ---------------------------------------------------------------------------
class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_plain_module_with_tuple_example_inputs():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(5, 8)
    module = optc.capture(model, (x,))
    assert [n.op for n in module.graph] == ["linear", "relu", "linear"]
    assert [v.name for v in module.graph.inputs] == ["input_0"]
    assert module.graph.inputs[0].type.shape == (5, 8)  # static unless dynamic_shapes are given
    assert list(module.graph.outputs) == ["output"]
    assert collect_problems(module) == []
    out = optc.to_eager(module)(x)
    torch.testing.assert_close(out["output"], model(x), rtol=0, atol=1e-6)


def test_plain_module_with_dict_inputs_and_dynamic_batch():
    torch.manual_seed(0)
    model = MLP().eval()
    batch = torch.export.Dim("batch")
    module = optc.capture(model, {"x": torch.randn(3, 8)}, dynamic_shapes=[{0: batch}])
    assert [v.name for v in module.graph.inputs] == ["x"]
    assert module.graph.inputs[0].type.shape[1] == 8
    assert isinstance(module.graph.inputs[0].type.shape[0], str)
    x = torch.randn(7, 8)
    torch.testing.assert_close(optc.to_eager(module)(x=x)["output"], model(x), rtol=0, atol=1e-6)


def test_plain_module_needs_example_inputs():
    with pytest.raises(FrontendError, match="example_inputs"):
        optc.capture(MLP())


def test_capture_rejects_non_modules():
    with pytest.raises(FrontendError, match="nn.Module"):
        optc.capture(42)  # type: ignore[arg-type]


def test_example_inputs_must_be_tensors():
    with pytest.raises(FrontendError, match="not a tensor"):
        optc.capture(MLP(), ([1.0] * 8,))


FAILING_MODULES = """
import torch


class DataDependentBranch(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


class DataDependentShape(torch.nn.Module):
    def forward(self, x):
        return x.view(int(x.sum().item()), -1)


class DataDependentOp(torch.nn.Module):
    def forward(self, x):
        if torch.equal(x, x * 1):
            return x
        return x + 1


@torch.library.custom_op("optc_test_capture::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class OpWithoutFakeKernel(torch.nn.Module):
    def forward(self, x):
        return double(x) + 1
"""
FAILURES = [
    ("DataDependentBranch", "if x.sum() > 0:", None),
    ("DataDependentShape", "return x.view(int(x.sum().item()), -1)", None),
    ("DataDependentOp", "if torch.equal(x, x * 1):", "aten.equal.default"),
    ("OpWithoutFakeKernel", "return double(x) + 1", "optc_test_capture.double.default"),
]


@pytest.fixture(scope="module")
def user_code(tmp_path_factory):
    """The failing modules, in a user's file outside the optc checkout."""
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(FAILING_MODULES)
    spec = importlib.util.spec_from_file_location("optc_test_user_models", path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


@pytest.mark.parametrize(("cls", "line", "op"), FAILURES)
def test_capture_failure_names_the_op_and_the_source_line(user_code, cls, line, op):
    with pytest.raises(FrontendError) as info:
        optc.capture(getattr(user_code, cls)(), (torch.ones(3, 4),))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot capture {cls};")
    lineno = FAILING_MODULES.splitlines().index(" " * 8 + line) + 1
    assert f"at {user_code.__file__}:{lineno}: {line}" in message
    if op is not None:
        assert f"op {op} failed" in message
    assert isinstance(info.value.__cause__, Exception)  # the torch error is kept as the cause


class BranchInTestFile(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_capture_failure_names_a_source_line_inside_the_checkout():
    with pytest.raises(FrontendError) as info:
        optc.capture(BranchInTestFile(), (torch.ones(3, 4),))
    assert f"{__file__}:" in str(info.value) and "if x.sum() > 0:" in str(info.value)


def test_guards_are_read_without_eval_and_give_the_allowed_run():
    from optc.frontends.capture_shapes import _allowed_run, _guard_holds

    assert _guard_holds("((-1) + s) != 1", 3) and not _guard_holds("((-1) + s) != 1", 2)
    mpt = "(64 + ((-1)*max(0, 64 + ((-1)*s)))) != 64"
    assert _guard_holds(mpt, 63) and not _guard_holds(mpt, 64)
    assert _allowed_run(["((-1) + s) != 1"], 0, 64, 8) == (3, 64)
    assert _allowed_run(["s != 64", mpt], 0, 64, 8) == (0, 63)
    assert _allowed_run(["s > 100"], 0, 64, 8) is None  # nothing holds
    assert _allowed_run(["s != 1"], 0, None, 8) is None  # unbounded: not searched
    for bad in ("__import__('os').system('x') == 0", "s.bit_length() > 1", "lambda: 1"):
        with pytest.raises(ValueError):
            _guard_holds(bad, 3)
    assert _allowed_run(["__import__('os') != 1"], 0, 64, 8) is None


def test_a_model_that_branches_on_one_length_is_captured_for_the_rest(caplog):
    """MobileBERT's export fails on the whole sequence range (it branches on seq == 2): the
    capture narrows the range to the run the guards allow, says so, records it (inputs
    outside are refused) and matches the model inside it."""
    import transformers as tf

    from optc.backends.model_inputs import seq_range
    from optc.errors import ModelInputError

    torch.manual_seed(0)
    model = tf.MobileBertModel(tf.MobileBertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, embedding_size=16, intra_bottleneck_size=16,
        num_feedforward_networks=1, max_position_embeddings=64)).eval()
    with caplog.at_level("WARNING", logger="optc"):
        module = optc.capture(model)
    assert "captured for seq 3..64 only" in caplog.text
    assert seq_range(module) == (3, 64)
    run = optc.to_eager(module)
    ids = torch.randint(5, 120, (2, 6))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    got = run(input_ids=ids)["last_hidden_state"]
    assert (got - want).abs().max().item() < 1e-4
    with pytest.raises(ModelInputError):
        run(input_ids=ids[:, :2])
