"""The IR foundation: op definitions in one place, fast clones, dtypes in the verifier, typed
attributes, stable layer/head/neuron ids and the raise-ops pass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.errors import IRError, ParseError, PassError, VerificationError
from optc.ir import parse_module, print_module
from optc.ir.analysis import analyze, module_flops
from optc.ir.attributes import Quantization, Sparsity
from optc.ir.core import Module
from optc.ir.ids import format_ids, parse_ids
from optc.ir.ops import Attr, OpDef, Operand, all_ops, get_op, register_op
from optc.ir.ops.base import numel
from optc.ir.types import TensorType
from optc.ir.verifier import collect_problems
from optc.passes import run_pipeline
from optc.tests.conftest import tiny_model, token_inputs
from optc.tools.reports.inspection import diff_modules, summarize

F32 = torch.float32


@pytest.fixture(scope="module")
def bert() -> tuple[torch.nn.Module, Module]:
    model = tiny_model("bert")
    return model, optc.capture(model)


# -- clone ------------------------------------------------------------------------------------
def test_clone_is_an_independent_copy_sharing_tensors(bert):
    module = bert[1]
    copy = module.clone()
    assert print_module(copy, locations=True) == print_module(module, locations=True)
    assert collect_problems(copy) == []
    name = next(iter(module.params))
    assert copy.params[name].data is module.params[name].data  # copy-on-write sharing
    assert copy.params[name] is not module.params[name]
    # editing the copy leaves the original alone
    text = print_module(module)
    run_pipeline(copy, "prune-heads{heads=0:1},drop-layers{layers=1}")
    assert print_module(module) == text
    assert collect_problems(module) == []
    # both generate the same fresh names afterwards
    a = module.clone()
    assert a.graph.unique_name("linear") == module.clone().graph.unique_name("linear")


def test_clone_keeps_parameter_attributes_and_meta_independent(bert):
    module = bert[1].clone()
    weight = next(n for n in module.graph if n.op == "linear").args[1]
    weight.attrs["sparsity"] = Sparsity("unstructured", 1.0)
    copy = module.clone()
    assert copy.params[weight.name].attrs == {"sparsity": Sparsity("unstructured", 1.0)}
    copy.params[weight.name].attrs.clear()
    copy.meta["source"]["class"] = "changed"
    assert weight.attrs and module.meta["source"]["class"] != "changed"


# -- dtypes -----------------------------------------------------------------------------------
def test_verifier_rejects_an_int8_weight_under_a_float_linear(bert):
    module = bert[1].clone()
    node = next(n for n in module.graph if n.op == "linear")
    weight = node.args[1]
    weight.data = torch.zeros(weight.data.shape, dtype=torch.int8)
    problems = collect_problems(module)
    assert any(f"%{node.outputs[0].name} = linear" in p and "'weight'" in p and "i8" in p
               and "must be float" in p for p in problems), problems
    with pytest.raises(VerificationError, match="is i8 but must be float"):
        optc.verify(module)


def test_verifier_rejects_a_mixed_precision_linear(bert):
    module = bert[1].clone()
    node = next(n for n in module.graph if n.op == "linear")
    weight = node.args[1]
    weight.data = weight.data.half()
    assert any("'weight' is f16 but 'x' is f32" in p for p in collect_problems(module))


def test_verifier_checks_dtypes_of_aten_results(bert):
    module = bert[1].clone()
    node = next(n for n in module.graph if n.op == "aten.add.Tensor"
                and n.outputs[0].tensor_type.dtype == F32)
    out = node.outputs[0]
    out.type = TensorType(torch.float16, out.tensor_type.shape)
    problems = collect_problems(module)
    assert any(f"%{out.name} = aten.add.Tensor" in p and "declares result dtype float16" in p
               and "computes float32" in p for p in problems), problems


def test_num_parameters_counts_every_parameter_and_bytes_separately():
    module = parse_module(
        "module @m {\n  param @w : f32[4,3]\n  param @q : i8[4,3]\n  param @ids : i64[5]\n"
        "  graph(%x : f32[2,3]) {\n    %y : f32[2,4] = linear(%x, @w)\n    return (y=%y)\n  }\n}\n",
        {"w": torch.ones(4, 3), "q": torch.ones(4, 3, dtype=torch.int8),
         "ids": torch.arange(5)},
    )
    assert module.num_parameters() == 12 + 12 + 5
    assert module.parameter_bytes() == 12 * 4 + 12 * 1 + 5 * 8


# -- typed attributes -------------------------------------------------------------------------
def _linear_module(weight: torch.Tensor, attr: str) -> str:
    out, inp = weight.shape
    return (f"module @m {{\n  param @w : f32[{out},{inp}] {{{attr}}}\n"
            f"  graph(%x : f32[2,{inp}]) {{\n    %y : f32[2,{out}] = linear(%x, @w)\n"
            "    return (y=%y)\n  }\n}\n")


def test_sparsity_attribute_prints_parses_and_round_trips():
    weight = torch.tensor([[1.0, 0, 0, 2], [0, 3, 4, 0]])
    text = _linear_module(weight, 'sparsity=sparsity(pattern="n:m", density=0.5, n=2, m=4)')
    module = parse_module(text, {"w": weight})
    assert module.params["w"].attrs["sparsity"] == Sparsity("n:m", 0.5, n=2, m=4)
    assert print_module(module) == text
    assert collect_problems(module) == []
    block = Sparsity("block", 0.25, block=(2, 2))
    module.params["w"].attrs["sparsity"] = block
    assert parse_module(print_module(module), {"w": weight}).params["w"].attrs["sparsity"] == block


@pytest.mark.parametrize(("attr", "weight", "message"), [
    ('sparsity(pattern="n:m", density=0.5, n=2, m=4)', [[1.0, 1, 1, 0], [0, 0, 0, 0]],
     "has a group of 4 with 3 nonzeros"),
    ('sparsity(pattern="unstructured", density=0.25)', [[1.0, 1, 1, 0], [0, 0, 0, 0]],
     "has density 0.3750 but declares at most 0.2500"),
    ('sparsity(pattern="block", density=0.25, block=(1, 2))', [[1.0, 0, 1, 0], [0, 0, 0, 0]],
     "keeps 2 blocks of 1x2"),
    ('sparsity(pattern="n:m", density=0.5, n=2, m=3)', [[1.0, 0, 0, 0], [0, 0, 0, 0]],
     "not a multiple of m=3"),
    ('quantization(scheme="symmetric")', [[1.0, 0, 0, 0], [0, 0, 0, 0]],
     "declares 8-bit quantization"),
])
def test_verifier_names_a_parameter_that_breaks_its_attribute(attr, weight, message):
    weight = torch.tensor(weight)
    module = parse_module(_linear_module(weight, "a=" + attr), {"w": weight})
    problems = collect_problems(module)
    assert any(p.startswith("parameter @w ") and message in p for p in problems), problems


def test_bad_attribute_text_is_a_parse_error():
    weight = torch.zeros(2, 4)
    with pytest.raises(ParseError, match="pattern must be one of"):
        parse_module(_linear_module(weight, 's=sparsity(pattern="diagonal", density=0.5)'), {"w": weight})
    with pytest.raises(ParseError, match="sparsity has no field 'dense'"):
        parse_module(_linear_module(weight, 's=sparsity(pattern="unstructured", dense=1)'), {"w": weight})
    assert Quantization("affine", bits=4).fields() == {"scheme": "affine", "bits": 4}


# -- one op, one place ------------------------------------------------------------------------
def _scale(x: torch.Tensor, *, factor: float) -> torch.Tensor:
    return x * factor


def test_a_new_op_defined_in_one_place_runs_on_every_backend(bert):
    """An op is one definition: the verifier, printer/parser, cost model and all three
    backends read it (the README's "add an op" example)."""
    if get_op("scale") is None:
        register_op(OpDef(
            name="scale", doc="y = x * factor", operands=(Operand("x"),),
            attrs={"factor": Attr(float, doc="multiplier")},
            infer=lambda node: [node.args[0].type], kernel=_scale,
            script="def k_scale(x: Tensor, factor: float) -> Tensor:\n    return x * factor\n",
        ))
    model, captured = bert
    module = captured.clone()
    out = module.graph.outputs["last_hidden_state"]
    node = module.graph.create_node("scale", (out,), {"factor": 2.0}, [out.type], names="scaled")
    module.graph.set_output("last_hidden_state", node.outputs[0])
    optc.verify(module)
    assert "= scale(%" in print_module(module)
    reparsed = parse_module(print_module(module), {n: p.data for n, p in module.params.items()})
    optc.verify(reparsed)
    inputs = token_inputs(model, 2, 6)
    check_backends(module, inputs)  # TorchScript and ONNX agree with eager
    expected = model(**inputs).last_hidden_state * 2
    got = optc.to_eager(module)(**inputs)["last_hidden_state"]
    assert torch.allclose(got, expected, atol=1e-5)
    node.set_attr("factor", 2)  # an int where a float is declared
    assert any("attribute 'factor' has a bad value 2" in p for p in collect_problems(module))


def test_every_builtin_op_has_all_lowerings_and_documented_attributes():
    ops = {n: op for n, op in all_ops().items()  # builtins: not the ones tests register
           if op.kernel.__module__.startswith("optc.ir.ops.")}
    assert {"linear", "attention", "layer_norm", "rms_norm", "embedding", "rotary", "gelu"} <= set(ops)
    for name, op in ops.items():
        assert op.kernel is not None and f"def k_{name}(" in op.script, name
        assert op.doc and all(spec.doc for spec in op.attrs.values()), name
    assert get_op("attention").onnx is not None and get_op("gelu").onnx is not None


def test_cost_model_reads_the_op_definitions(bert):
    module = bert[1]
    dims = {"batch": 1, "seq": 16}
    linear = next(n for n in module.graph if n.op == "linear")
    w = linear.args[1].tensor_type.shape
    cost = get_op("linear").cost(linear, dims)
    assert cost["flops"] == 2 * 16 * w[0] * w[1]
    assert cost["bytes"] >= (w[0] * w[1] + 16 * w[1] + 16 * w[0]) * 4
    attention = next(n for n in module.graph if n.op == "attention")
    assert get_op("attention").cost(attention, dims)["flops"] == 4 * 16 * 16 * 64
    assert numel(TensorType(F32, ("batch", "seq", 8)), dims) == 128
    assert module_flops(module, 16) == sum(get_op(n.op).cost(n, {"batch": 1, "seq": 16})["flops"]
                                           for n in module.graph if get_op(n.op))


# -- stable ids -------------------------------------------------------------------------------
def test_ids_format_and_parse():
    assert format_ids([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_ids("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_ids("") == []
    for bad in ("3-1", "1,1", "a", "-2"):
        with pytest.raises(IRError):
            parse_ids(bad)


def test_layers_heads_and_neurons_keep_their_ids_through_pruning(tmp_path):
    model = tiny_model("bert")
    model.config.num_hidden_layers = 4
    model = type(model)(model.config).eval()
    module = optc.capture(model)
    assert [layer.id for layer in analyze(module).layers] == [0, 1, 2, 3]
    report = run_pipeline(module, "drop-layers{layers=1},prune-heads{heads=2:0,ids=true},"
                                  "prune-neurons{neurons=3:5,3:6,ids=true},prune-heads{heads=2:1}")
    layers = analyze(module).layers
    assert [layer.id for layer in layers] == [0, 2, 3]
    assert layers[1].attention.head_ids == [1, 2, 3]       # head 0 of original layer 2 went
    assert layers[2].attention.head_ids == [0, 2, 3]       # position 2 is layer id 3
    assert 5 not in layers[2].ffn.neuron_ids and 6 not in layers[2].ffn.neuron_ids
    assert layers[2].ffn.neuron_ids[5] == 7
    assert report.records[0].stats["layer_ids"] == "1"
    assert report.records[1].stats["layer_ids"] == "0,2,3"
    # the ids are part of the IR: saved, loaded and verified
    optc.save(module, tmp_path / "a")
    loaded = optc.load_module(tmp_path / "a")
    assert [x.attention.head_ids for x in analyze(loaded).layers] == [[0, 1, 2, 3], [1, 2, 3], [0, 2, 3]]
    # a head id that is gone is refused by name
    text = print_module(module)
    with pytest.raises(PassError, match="head id 0 is no longer in layer id 2"):
        run_pipeline(module, "prune-heads{heads=2:0,ids=true}")
    with pytest.raises(PassError, match="there is no layer with id 1"):
        run_pipeline(module, "drop-layers{layers=1,ids=true}")
    assert print_module(module) == text


def test_a_layer_emptied_by_pruning_keeps_the_others_ids():
    model = tiny_model("bert")
    module = optc.capture(model)
    base = module.clone()
    run_pipeline(module, "prune-heads{heads=0:0,0:1,0:2,0:3},"
                         "prune-neurons{neurons=" + ",".join(f"0:{i}" for i in range(128)) + "}")
    # layer 0 lost every head and neuron and vanished from the analysis; layer 1 keeps id 1
    assert [layer.id for layer in analyze(module).layers] == [1]
    module = base.clone()
    run_pipeline(module, "prune-heads{heads=0:0,0:1,0:2,0:3},drop-layers{layers=0,blocks=ffn}")
    assert [layer.id for layer in analyze(module).layers] == [1]
    diff = diff_modules(base, module)
    assert [(r["id"], r["removed"]) for r in diff["layers"]] == [(0, True), (1, False)]


def test_inspect_diff_names_removed_heads_by_id(bert):
    base = bert[1]
    pruned = base.clone()
    run_pipeline(pruned, "prune-heads{heads=0:1,0:3,1:0}")
    rows = diff_modules(base, pruned)["layers"]
    assert [r["heads_removed"] for r in rows] == [[1, 3], [0]]
    assert summarize(pruned)["layers"][0]["head_ids"] == [0, 2]


def test_stale_ids_are_a_verification_error(bert):
    module = bert[1].clone()
    attention = next(n for n in module.graph if n.op == "attention")
    attention.set_attr("head_ids", "0-2")
    assert any("head_ids='0-2' names 3 units but there are 4 heads" in p
               for p in collect_problems(module))


# -- raise-ops --------------------------------------------------------------------------------
class _ReturnsProbabilities(torch.nn.Module):
    """Attention whose probabilities are also returned: the rule refuses to raise it."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16) for _ in range(4))
        self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, 2, 8).transpose(1, 2)

        probs = torch.softmax(torch.matmul(split(self.q(x)), split(self.k(x)).transpose(-1, -2)) / 8 ** 0.5, -1)
        a = torch.matmul(probs, split(self.v(x))).transpose(1, 2).reshape(b, s, 16)
        x = x + self.o(a)
        return x + self.down(torch.relu(self.up(x))), probs


def test_raise_ops_reports_what_it_raised_and_why_not(caplog):
    model = tiny_model("bert")
    plain = optc.capture(model, raise_ops=False)
    assert not analyze(plain).layers
    record = run_pipeline(plain, "raise-ops").records[0]
    assert record.modified
    assert "attention=2" in record.stats["raised"] and "linear=" in record.stats["raised"]
    assert record.stats["layers_identified"] == 2
    assert [layer.id for layer in analyze(plain).layers] == [0, 1]
    assert not run_pipeline(plain, "raise-ops").records[0].modified  # idempotent

    with caplog.at_level("WARNING", logger="optc"):
        module = optc.capture(_ReturnsProbabilities().eval(), (torch.randn(2, 5, 16),))
    assert "structural passes will not see those layers" in caplog.text
    record = run_pipeline(module.clone(), "raise-ops").records[0]
    assert record.stats["missed"] >= 1
    assert "probabilities are used elsewhere" in record.stats["misses"]


def test_drop_layers_refuses_to_drop_only_ffns_when_attention_was_not_raised():
    from optc.tests.conftest import assert_refused_unchanged

    module = optc.capture(_ReturnsProbabilities().eval(), (torch.randn(2, 5, 16),))
    assert [(x.attention, x.ffn is not None) for x in analyze(module).layers] == [(None, True)]
    assert_refused_unchanged(module, "drop-layers{layers=0}", "attention pattern(s) of the "
                             "model were not raised")
    report = run_pipeline(module, "drop-layers{layers=0,blocks=ffn}")
    assert report.records[0].stats["blocks_removed"] == 1


@dataclass(frozen=True)
class _Case:
    spec: str
    message: str


@pytest.mark.parametrize("case", [
    _Case("prune-heads{heads=0:0}", "the module has no transformer layers"),
    _Case("prune-neurons{neurons=0:0}", "the module has no transformer layers"),
    _Case("drop-layers{layers=0}", "the module has no transformer layers"),
])
def test_no_layers_is_said_plainly(case):
    module = optc.capture(tiny_model("bert"), raise_ops=False)
    with pytest.raises(PassError) as info:
        run_pipeline(module, case.spec)
    assert case.message in str(info.value) and "0..-1" not in str(info.value)
