"""The text pipeline spec: parsing, option conversion, errors, and formatting back."""

from __future__ import annotations  # option annotations are strings: spec must resolve them

import dataclasses
import pkgutil
from dataclasses import dataclass
from typing import Literal

import pytest

from optc.errors import PipelineSpecError
from optc.ir.core import Module
from optc.passes import Pass, PassResult, format_pipeline, get_pass, parse_pipeline, register_pass
from optc.passes.canonicalize import Canonicalize
from optc.passes.dce import DeadCodeElimination
from optc.passes.registry import all_passes
from optc.passes.spec import describe_type


@register_pass
@dataclass(frozen=True)
class SpecOptionsPass(Pass):
    """A throwaway pass whose options cover every kind of option type."""

    name = "test-spec-options"

    heads: tuple[tuple[int, int], ...] = ()
    strategy: Literal["top", "bottom"] = "top"
    count: int | None = None
    amount: float = 0.0
    flag: bool = False
    label: str = "x"
    layers: tuple[int, ...] = (1, 2)

    def run(self, module: Module) -> PassResult:
        return PassResult(False)


@register_pass
@dataclass(frozen=True)
class SpecValidatedPass(Pass):
    """A throwaway pass that checks its options in __post_init__."""

    name = "test-spec-validated"

    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")

    def run(self, module: Module) -> PassResult:
        return PassResult(False)


# -- built-in passes ---------------------------------------------------------------------------
def test_parse_single_pass():
    assert parse_pipeline("dce") == [DeadCodeElimination()]


def test_parse_pass_with_option():
    (p,) = parse_pipeline("dce{keep_params=true}")
    assert p == DeadCodeElimination(keep_params=True)
    assert parse_pipeline("dce{keep_params=false}") == [DeadCodeElimination(keep_params=False)]
    assert parse_pipeline("dce{}") == [DeadCodeElimination()]


@pytest.mark.parametrize("text", ["yes", "on", "1", "TRUE", "True"])
def test_bool_spellings(text):
    assert parse_pipeline(f"dce{{keep_params={text}}}") == [DeadCodeElimination(keep_params=True)]


def test_parse_multiple_passes_with_whitespace():
    passes = parse_pipeline("  canonicalize ,\n dce { keep_params = true } , dce  ")
    assert passes == [Canonicalize(), DeadCodeElimination(keep_params=True), DeadCodeElimination()]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_spec_is_empty_pipeline(text):
    assert parse_pipeline(text) == []


# -- errors ------------------------------------------------------------------------------------
def test_unknown_pass_lists_valid_passes():
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("dce,frobnicate")
    message = str(info.value)
    assert "unknown pass 'frobnicate'" in message
    assert "valid passes:" in message
    for name in ("canonicalize", "dce", "test-spec-options"):
        assert name in message


def test_unknown_option_lists_valid_options():
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("dce{keep=true}")
    assert "pass 'dce' has no option 'keep'; valid options: keep_params" in str(info.value)


def test_unknown_option_on_pass_without_options():
    with pytest.raises(PipelineSpecError, match="valid options: none"):
        parse_pipeline("canonicalize{x=1}")


def test_bad_bool():
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("dce{keep_params=maybe}")
    assert "option 'keep_params' of pass 'dce': 'maybe' is not a boolean; use true or false" in str(info.value)


def test_option_given_twice():
    with pytest.raises(PipelineSpecError, match="option 'keep_params' of pass 'dce' is given twice"):
        parse_pipeline("dce{keep_params=true,keep_params=false}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("dce{keep_params=true", "missing '}'"),
        ("dce}", "unbalanced '}' at position 4"),
        ("dce{keep_params=true}}", "unbalanced '}'"),
        ("dce{keep_params=true}x", "text after '}'"),
        ("dce,,dce", "empty pass name"),
        ("dce,", "empty pass name"),
        ("dce{keep_params}", "'keep_params' in pass 'dce' is not an option: write key=value"),
        ("dce{keep_params=true,false}", "takes one value, got true, false"),
    ],
)
def test_malformed_specs(text, message):
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline(text)
    assert message in str(info.value)
    assert info.value.exit_code == 2


# -- option types (test pass) ------------------------------------------------------------------
def test_list_of_pairs_option():
    (p,) = parse_pipeline("test-spec-options{heads=0:1,0:3,2:5}")
    assert p.heads == ((0, 1), (0, 3), (2, 5))


def test_list_option_followed_by_another_option():
    (p,) = parse_pipeline("test-spec-options{heads=0:1,2:5,strategy=bottom,layers=3}")
    assert p == SpecOptionsPass(heads=((0, 1), (2, 5)), strategy="bottom", layers=(3,))


def test_empty_list_option():
    (p,) = parse_pipeline("test-spec-options{layers=}")
    assert p.layers == ()


def test_bad_pair():
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("test-spec-options{heads=0:1,3}")
    assert "option 'heads' of pass 'test-spec-options': '3' should have the form int:int" in str(info.value)
    with pytest.raises(PipelineSpecError, match="'a' is not an integer"):
        parse_pipeline("test-spec-options{heads=a:1}")


def test_literal_choices():
    (p,) = parse_pipeline("test-spec-options{strategy=bottom}")
    assert p.strategy == "bottom"
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("test-spec-options{strategy=middle}")
    assert "'middle' is not valid; choose one of top, bottom" in str(info.value)


def test_optional_int():
    assert parse_pipeline("test-spec-options{count=3}")[0].count == 3
    assert parse_pipeline("test-spec-options{count=none}")[0].count is None
    assert parse_pipeline("test-spec-options{count=None}")[0].count is None
    with pytest.raises(PipelineSpecError, match="'three' is not an integer"):
        parse_pipeline("test-spec-options{count=three}")


def test_float_and_str_options():
    (p,) = parse_pipeline("test-spec-options{amount=2.5e-3,label=hello world}")
    assert p.amount == 2.5e-3 and isinstance(p.amount, float)
    assert p.label == "hello world"
    assert parse_pipeline("test-spec-options{amount=3}")[0].amount == 3.0
    with pytest.raises(PipelineSpecError, match="'lots' is not a number"):
        parse_pipeline("test-spec-options{amount=lots}")


def test_future_annotations_are_resolved():
    # This module uses `from __future__ import annotations`, so the dataclass annotations are
    # strings; the spec resolves them with typing.get_type_hints.
    assert dataclasses.fields(SpecOptionsPass)[0].type == "tuple[tuple[int, int], ...]"
    (p,) = parse_pipeline("test-spec-options{heads=1:2,layers=4,5,flag=on,count=7}")
    assert p.heads == ((1, 2),) and p.layers == (4, 5) and p.flag is True and p.count == 7


def test_post_init_value_error_becomes_spec_error():
    assert parse_pipeline("test-spec-validated{count=2}") == [SpecValidatedPass(count=2)]
    with pytest.raises(PipelineSpecError) as info:
        parse_pipeline("test-spec-validated{count=0}")
    assert "pass 'test-spec-validated': count must be >= 1, got 0" in str(info.value)


def test_describe_type():
    hints = {
        "heads": "list of int:int",
        "strategy": "top|bottom",
        "count": "int or none",
        "amount": "float",
        "flag": "bool",
    }
    import typing

    resolved = typing.get_type_hints(SpecOptionsPass)
    for key, text in hints.items():
        assert describe_type(resolved[key]) == text


# -- formatting --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "passes, text",
    [
        ([DeadCodeElimination()], "dce"),
        ([DeadCodeElimination(keep_params=True), Canonicalize()], "dce{keep_params=true},canonicalize"),
        ([], ""),
        ([SpecOptionsPass()], "test-spec-options"),
        (
            [SpecOptionsPass(heads=((0, 1), (2, 5)), strategy="bottom", count=3, amount=0.25)],
            "test-spec-options{heads=0:1,2:5,strategy=bottom,count=3,amount=0.25}",
        ),
        ([SpecOptionsPass(flag=True, label="a b", layers=())], "test-spec-options{flag=true,label=a b,layers=}"),
        ([SpecOptionsPass(layers=(7,), amount=1e-05)], "test-spec-options{amount=1e-05,layers=7}"),
    ],
)
def test_format_pipeline_round_trip(passes, text):
    assert format_pipeline(passes) == text
    assert parse_pipeline(text) == passes
    assert ",".join(p.spec() for p in passes) == text


def test_spec_method_matches_format():
    p = SpecOptionsPass(count=2)
    assert p.spec() == "test-spec-options{count=2}"
    assert parse_pipeline(p.spec()) == [p]


# -- registry ----------------------------------------------------------------------------------
def test_registry_lookup():
    assert get_pass("dce") is DeadCodeElimination
    assert get_pass("test-spec-options") is SpecOptionsPass
    names = list(all_passes())
    assert names == sorted(names)
    assert DeadCodeElimination.summary().startswith("Remove nodes whose results are unused")
    assert [f.name for f in DeadCodeElimination.options()] == ["keep_params"]


def test_passes_holds_passes_and_their_infrastructure_only():
    """Every module directly in optc.passes defines a pass, but the pass machinery; what passes
    share lives in a sub-package (optc.passes.support), which the registry does not scan."""
    import optc.passes

    direct = {info.name for info in pkgutil.iter_modules(optc.passes.__path__) if not info.ispkg}
    infrastructure = {"base", "context", "manager", "registry", "spec"}
    with_a_pass = {cls.__module__.removeprefix("optc.passes.") for cls in all_passes().values()
                   if cls.__module__.startswith("optc.passes.")}
    assert infrastructure <= direct
    assert with_a_pass == direct - infrastructure, sorted(with_a_pass ^ (direct - infrastructure))


def test_register_refuses_bad_names_and_taken_names():
    @dataclass(frozen=True)
    class BadName(Pass):
        name = "Bad_Name"

    with pytest.raises(PipelineSpecError, match="kebab-case"):
        register_pass(BadName)

    @dataclass(frozen=True)
    class Taken(Pass):
        name = "dce"

    with pytest.raises(PipelineSpecError, match="taken by DeadCodeElimination"):
        register_pass(Taken)
    assert get_pass("dce") is DeadCodeElimination


def test_register_refuses_pass_that_is_not_itself_a_dataclass():
    class NotADataclass(Pass):
        name = "test-spec-not-a-dataclass"
        count: int = 1

    with pytest.raises(PipelineSpecError, match="frozen dataclass"):
        register_pass(NotADataclass)
