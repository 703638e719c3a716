"""The textual IR: print -> parse -> print is the identity; parse errors point at the problem."""

from __future__ import annotations

import math

import pytest
import torch

from optc.errors import ParseError
from optc.ir import DimRange, Module, parse_module, print_module
from optc.ir.printer import format_literal
from optc.ir.types import SymType, TensorType
from optc.ir.verifier import collect_problems


def roundtrip(text: str, **kwargs) -> Module:
    """Parse ``text``, check it prints back verbatim, and return the module."""
    module = parse_module(text, **kwargs)
    assert print_module(module) == text
    return module


LITERALS = """module @literals {
  graph(%x : f32[2,3]) {
    %a : f32[2,3] = aten.ints.default(%x, 0, -1, 9223372036854775807, [-2, 3])
    %b : f32[2,3] = aten.floats.default(%a, 1e-12, 0.5, -2.25, 1e+20, -0.0, 3.0)
    %c : f32[2,3] = aten.specials.default(%b, inf, -inf, nan)
    %d : f32[2,3] = aten.bools.default(%c, true, false, none)
    %e : f32[2,3] = aten.strings.default(%d, "plain", "with \\"quotes\\"", "back\\\\slash", "tab\\tnl\\n", "\\u00e9", "")
    %f : f32[2,3] = aten.torch.default(%e, torch.float32, torch.int64, torch.bfloat16, torch.bool, torch.strided, torch.contiguous_format, torch.channels_last)
    %g : f32[2,3] = aten.devices.default(%f, device("cpu"), device("cuda:0"))
    %h : f32[2,3] = aten.nested.default(%g, [[1, 2], [3, [4]]], (1, (2, 3)), (%x,), (), [], [(5,), [%x, none]])
    %i : f32[2,3] = aten.kw.default(%h, dtype=torch.float16, layout=torch.strided, device=device("cpu"), pin_memory=false, value=-inf, items=[1, 2])
    return (out=%i)
  }
}
"""


def test_roundtrip_every_literal_kind():
    module = roundtrip(LITERALS)
    nodes = {n.output.name: n for n in module.graph}
    x = module.graph.inputs[0]
    assert nodes["a"].args[1:] == (0, -1, 9223372036854775807, [-2, 3])
    floats = nodes["b"].args[1:]
    assert floats == (1e-12, 0.5, -2.25, 1e20, -0.0, 3.0)
    assert all(isinstance(f, float) for f in floats)
    assert math.copysign(1.0, floats[4]) == -1.0
    pos, neg, nan = nodes["c"].args[1:]
    assert pos == math.inf and neg == -math.inf and math.isnan(nan)
    assert nodes["d"].args[1:] == (True, False, None)
    assert nodes["e"].args[1:] == ("plain", 'with "quotes"', "back\\slash", "tab\tnl\n", "é", "")
    assert nodes["f"].args[1:] == (
        torch.float32, torch.int64, torch.bfloat16, torch.bool, torch.strided,
        torch.contiguous_format, torch.channels_last,
    )
    assert nodes["g"].args[1:] == (torch.device("cpu"), torch.device("cuda:0"))
    nested = nodes["h"].args[1:]
    assert nested == ([[1, 2], [3, [4]]], (1, (2, 3)), (x,), (), [], [(5,), [x, None]])
    assert isinstance(nested[2], tuple) and len(nested[2]) == 1  # 1-tuples stay tuples
    assert isinstance(nested[4], list)
    assert nodes["i"].kwargs == {
        "dtype": torch.float16, "layout": torch.strided, "device": torch.device("cpu"),
        "pin_memory": False, "value": -math.inf, "items": [1, 2],
    }
    assert x.users() == [nodes["a"], nodes["h"]]
    assert x.num_uses == 3


@pytest.mark.parametrize(
    "value, text",
    [
        (1e-12, "1e-12"),
        (0.1, "0.1"),
        (-3.5e-7, "-3.5e-07"),
        (1.0, "1.0"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (True, "true"),
        (None, "none"),
        (7, "7"),
        ("a\"b", '"a\\"b"'),
        ((1,), "(1,)"),
        ([], "[]"),
        (torch.float64, "torch.float64"),
        (torch.device("cpu"), 'device("cpu")'),
    ],
)
def test_format_literal_reads_back_exactly(value, text):
    assert format_literal(value) == text
    src = (
        "module @m {\n  graph(%x : f32[1]) {\n"
        f"    %y : f32[1] = aten.f.default(%x, {text})\n"
        "    return (y=%y)\n  }\n}\n"
    )
    parsed = roundtrip(src).graph.nodes[0].args[1]
    assert parsed == value and type(parsed) is type(value)


def test_format_literal_refuses_unknown_objects():
    with pytest.raises(TypeError, match="cannot print IR literal"):
        format_literal(object())


TYPES = """module @"my model" {
  meta {"input_defaults": {"mask": "ones"}, "list": [1, 2.5, -1e-05, null, true, "s{}"], "nested": {"a": {"b": []}}}
  dim batch = [1, inf]
  dim seq = [2, 512]
  param @embed.weight : f32[16,8]
  param @"a b" : f16[8]
  param @"quo\\"te" : i64[]
  graph(%ids : i64[batch,seq], %mask : bool[batch,seq]) {
    %n : sym_int(seq) = aten.sym_size.int(%ids, 1)
    %m : sym_int("seq + 1") = py.operator.add(%n, 1)
    %f : sym_float() = py.torch.sym_float(%m)
    %b : sym_bool() = py.operator.gt(%m, 2)
    aten._assert_scalar.default(%b, "seq must be > 1")
    %emb : f32[batch,seq,8] = embedding(%ids, @embed.weight)
    %pad : f32[batch,"seq + 1",8] = aten.constant_pad_nd.default(%emb, [0, 0, 0, 1], 0.0)
    %values : f32[batch,8], %indices : i64[batch,8] = aten.max.dim(%emb, 1)
    %scaled : f16[8] = aten.mul.Tensor(@"a b", @"quo\\"te")
    return (pad=%pad, values=%values, "odd key"=%indices, weight=@"a b", scaled=%scaled)
  }
}
"""


def test_roundtrip_types_params_meta_dims_and_multi_output_nodes():
    module = roundtrip(TYPES)
    assert module.name == "my model"
    assert module.meta["list"] == [1, 2.5, -1e-05, None, True, "s{}"]
    assert module.dims["batch"].min == 1 and module.dims["batch"].max is None
    assert module.dims["seq"].max == 512
    assert list(module.params) == ["embed.weight", "a b", 'quo"te']
    assert module.params["a b"].type == TensorType(torch.float16, (8,))
    assert module.params['quo"te'].data.is_meta  # no weights given: meta tensors
    nodes = module.graph.nodes
    assert nodes[1].output.type == SymType("int", "seq + 1")
    assert nodes[2].output.type == SymType("float")
    assert nodes[4].outputs == ()
    assert nodes[6].output.type == TensorType(torch.float32, ("batch", "seq + 1", 8))
    values, indices = nodes[7].outputs
    assert values.producer is indices.producer is nodes[7] and indices.index == 1
    assert module.graph.outputs["odd key"] is indices
    assert module.graph.outputs["weight"] is module.params["a b"]
    assert collect_problems(module) == []


def test_hand_built_module_prints_and_parses_back():
    module = Module("built")
    module.dims["seq"] = DimRange(1, None)
    graph = module.graph
    x = graph.add_input("x", TensorType(torch.float32, ("seq", 4)))
    w = module.add_param("odd name!", torch.randn(2, 4))
    n = graph.create_node("aten.size.default", (x,), output_types=[SymType("int", "seq")])
    lin = graph.create_node("linear", (x, w, None), output_types=[TensorType(torch.float32, ("seq", 2))])
    graph.create_node("aten._assert_scalar.default", (n.output, "msg"))
    graph.set_output("y", lin.output)
    text = print_module(module)
    assert '@"odd name!"' in text
    assert "linear(%x, @\"odd name!\", none)" in text
    parsed = parse_module(text, weights={"odd name!": w.data})
    assert print_module(parsed) == text
    assert parsed.params["odd name!"].data is w.data
    assert collect_problems(parsed) == []


def test_dims_print_with_inf_and_expressions_quoted():
    module = Module()
    graph = module.graph
    graph.add_input("x", TensorType(torch.float32, ("batch", "2*seq", "Max(1, seq)", 3)))
    graph.set_output("x", graph.inputs[0])
    text = print_module(module)
    assert '%x : f32[batch,"2*seq","Max(1, seq)",3]' in text
    assert parse_module(text).graph.inputs[0].type == graph.inputs[0].type


def test_meta_with_infinity_roundtrips():
    module = parse_module(NAMED_A)
    module.meta = {"hi": math.inf, "eps": 1e-12}
    text = print_module(module)
    assert '"hi": Infinity' in text
    assert parse_module(text).meta == module.meta


def test_meta_with_negative_infinity_roundtrips():
    module = parse_module(NAMED_A)
    module.meta = {"lo": -math.inf}
    assert parse_module(print_module(module)).meta == {"lo": -math.inf}


def test_comments_and_whitespace_are_ignored():
    text = (
        "# leading comment\nmodule   @m{graph( %x:f32[ 2 , 3 ] ){  # trailing\n"
        "%y:f32[2,3]=aten.relu.default( %x )\n\n return(y = %y)}}"
    )
    module = parse_module(text)
    assert print_module(module) == (
        "module @m {\n  graph(%x : f32[2,3]) {\n"
        "    %y : f32[2,3] = aten.relu.default(%x)\n    return (y=%y)\n  }\n}\n"
    )


# -- canonical printing and locations ----------------------------------------------------------
NAMED_A = """module @m {
  param @w : f32[3,4]
  graph(%x : f32[2,4]) {
    %lin : f32[2,3] = linear(%x, @w)
    %act : f32[2,3] = aten.relu.default(%lin)
    return (out=%act)
  }
}
"""

NAMED_B = NAMED_A.replace("%lin", "%something_else").replace("%act", "%relu_17")


def test_canonical_printing_ignores_value_names():
    a, b = parse_module(NAMED_A), parse_module(NAMED_B)
    assert print_module(a) != print_module(b)
    assert print_module(a, canonical=True) == print_module(b, canonical=True)
    canonical = print_module(a, canonical=True)
    assert "%0 : f32[2,3] = linear(%x, @w)" in canonical  # inputs and params keep their names
    assert "return (out=%1)" in canonical
    assert parse_module(canonical) is not None


def test_canonical_printing_still_distinguishes_structure():
    a = parse_module(NAMED_A)
    c = parse_module(NAMED_A.replace("aten.relu.default", "aten.gelu.default"))
    assert print_module(a, canonical=True) != print_module(c, canonical=True)


def test_canonical_printing_with_numeric_input_names():
    src = """module @m {
      graph(%0 : f32[2]) {
        %a : f32[2] = aten.relu.default(%0)
        %b : f32[2] = aten.neg.default(%ARG)
        return (y=%b)
      }
    }"""
    uses_relu = parse_module(src.replace("%ARG", "%a"))
    uses_input = parse_module(src.replace("%ARG", "%0"))
    assert print_module(uses_relu, canonical=True) != print_module(uses_input, canonical=True)
    parse_module(print_module(uses_relu, canonical=True))


def test_locations_roundtrip():
    text = NAMED_A.replace(
        "linear(%x, @w)", 'linear(%x, @w) loc("encoder.layer.0.\\"q\\"")'
    )
    module = parse_module(text)
    assert module.graph.nodes[0].loc == 'encoder.layer.0."q"'
    assert module.graph.nodes[1].loc is None
    assert print_module(module, locations=True) == text
    assert "loc(" not in print_module(module)


# -- parse errors ------------------------------------------------------------------------------
def _body(lines: str, params: str = "") -> str:
    return (
        "module @m {\n" + params + "  graph(%x : f32[4]) {\n" + lines + "    return (out=%x)\n  }\n}\n"
    )


@pytest.mark.parametrize(
    "text, message, line, marker",
    [
        (_body("    %y : f32[4] = aten.relu.default(%z)\n"), "%z is used before it is defined", 3, "%z"),
        (
            _body("    %y : f32[4] = aten.relu.default(%x)\n    %y : f32[4] = aten.relu.default(%x)\n"),
            "%y is defined twice",
            4,
            "%y",
        ),
        (_body("    %x : f32[4] = aten.relu.default(%x)\n"), "%x is defined twice", 3, "%x"),
        (_body("    %y : f33[4] = aten.relu.default(%x)\n"), "unknown type 'f33'", 3, "f33"),
        (_body("    %y : sym_str() = aten.relu.default(%x)\n"), "unknown symbolic type", 3, "sym_str"),
        (_body("    %y : f32[4] = aten.relu.default(%x, bogus)\n"), "unknown literal 'bogus'", 3, "bogus"),
        (_body("    %y : f32[4] = aten.relu.default(%x, @nope)\n"), "@nope is not a declared parameter", 3, "@nope"),
        (_body("    %y : f32[4] = aten.relu.default(%x, $)\n"), "unexpected character '$'", 3, "$"),
        (_body("    %y : f32[4] = aten.relu.default(%x, a=1, 2)\n"), "positional argument after keyword", 3, "2)"),
        (_body("    %y : f32[4] = aten.relu.default(%x\n"), "expected ','", 4, "return"),
        (_body("", "  param @w : sym_int()\n"), "must have a tensor type", 2, "@w"),
        (_body("", "  param @w : f32[2]\n  param @w : f32[2]\n"), "declared twice", 3, "@w"),
        (_body("", "  bogus\n"), "expected 'meta', 'dim', 'param' or 'graph'", 2, "bogus"),
        (_body("", '  meta {"a": }\n'), "meta is not valid JSON", 2, "{"),
        (_body("", "  meta [1]\n"), "meta", 2, "["),
        ("module m {}", "module name '@Name'", 1, "m {"),
        (_body("") + "extra", "expected end of input", 6, "extra"),
    ],
)
def test_parse_errors_give_line_and_column(text, message, line, marker):
    column = text.splitlines()[line - 1].index(marker) + 1
    with pytest.raises(ParseError) as info:
        parse_module(text)
    err = info.value
    assert message in str(err)
    assert (err.line, err.column) == (line, column)
    assert f"line {line}, column {column}" in str(err)


def test_parse_error_missing_close_paren_mentions_paren():
    text = _body("    %y : f32[4] = aten.relu.default(%x\n")
    with pytest.raises(ParseError, match=r"'\)'"):
        parse_module(text)


def test_parse_error_weights_shape_differs_from_declared_type():
    text = _body("", "  param @w : f32[2,3]\n")
    with pytest.raises(ParseError) as info:
        parse_module(text, weights={"w": torch.zeros(3, 2)})
    assert "weights for @w are f32[3,2], but the IR declares f32[2,3]" in str(info.value)
    assert (info.value.line, info.value.column) == (2, 9)
    with pytest.raises(ParseError, match="i64"):
        parse_module(text, weights={"w": torch.zeros(2, 3, dtype=torch.int64)})
    ok = parse_module(text, weights={"w": torch.ones(2, 3)})
    assert torch.equal(ok.params["w"].data, torch.ones(2, 3))


# -- a real captured model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    import optc

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=120, max_position_embeddings=64,
    )
    model = transformers.AutoModel.from_config(config).eval()
    return optc.capture(model)


def test_roundtrip_captured_tiny_bert(tiny_bert):
    import optc

    text = print_module(tiny_bert, locations=True)
    weights = {name: p.data for name, p in tiny_bert.params.items()}
    parsed = parse_module(text, weights=weights)
    assert print_module(parsed, locations=True) == text
    assert parsed.meta == tiny_bert.meta
    assert collect_problems(parsed) == []

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 120, (2, 7), generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        want = optc.to_eager(tiny_bert)(**inputs)
        got = optc.to_eager(parsed)(**inputs)
    assert set(got) == set(want) and want
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("line", [
    "    %y : f32[4] = aten.relu.default(%x, " + "b" * 5_000_000 + ")\n",  # unknown literal
    "    %y : f32[4] = aten.relu.default(%" + "v" * 5_000_000 + ")\n",  # used before defined
    '    %y : f32[4] = aten.relu.default(%x) ' + '"' + "s" * 5_000_000 + '"\n',  # stray string
])
def test_parse_errors_quote_a_huge_token_cut_short(line):
    """A corrupted model.optc with a 5 MB line: the error quotes ~200 characters of it."""
    with pytest.raises(ParseError) as info:
        parse_module(_body(line))
    message = str(info.value)
    assert len(message) < 400, message[:500]
    assert "... (5,000,00" in message and "characters)" in message
