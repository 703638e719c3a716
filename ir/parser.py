"""Parser for the textual IR printed by :mod:`optc.ir.printer`.

``parse_module(text, weights)`` rebuilds the module. Parameters take their tensors from
``weights`` (name -> tensor); parameters without an entry get a tensor on the ``meta`` device
of the declared shape, so IR text alone can be parsed, printed and verified.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch

from optc.errors import IRError, ParseError, excerpt
from optc.ir.attributes import Attribute, attribute_kind, make_attribute
from optc.ir.core import DimRange, Module, Node, Value
from optc.ir.types import Dim, SymType, TensorType, Type, dtype_from_name, is_dtype_name

__all__ = ["parse_module"]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<param>@(?:[A-Za-z0-9_.]+|"(?:[^"\\]|\\.)*"))
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+))
  | (?P<neginf>-inf\b|-Infinity\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{},=:])
    """,
    re.VERBOSE,
)

_TORCH_CONSTANTS: dict[str, Any] = {}
for _name in dir(torch):
    _obj = getattr(torch, _name, None)
    if isinstance(_obj, (torch.dtype, torch.layout, torch.memory_format)):
        _TORCH_CONSTANTS[f"torch.{_name}"] = _obj


class _Tok:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int) -> None:
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self) -> str:
        return f"{self.kind}:{self.text!r}"


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"unexpected character {text[pos]!r}", line, pos - line_start + 1)
        kind = m.lastgroup or ""
        if kind == "nl":
            line, line_start = line + 1, m.end()
        elif kind != "ws":
            tokens.append(_Tok(kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    tokens.append(_Tok("eof", "", line, pos - line_start + 1))
    return tokens


class _Parser:
    def __init__(self, text: str, weights: Mapping[str, torch.Tensor]) -> None:
        self.toks = _tokenize(text)
        self.i = 0
        self.weights = weights
        self.module = Module()
        self.values: dict[str, Value] = {}

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, message: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.tok
        return ParseError(message, tok.line, tok.col)

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind in ("punct", "ident")

    def expect(self, text: str) -> _Tok:
        if not self.at(text):
            raise self.error(f"expected {excerpt(text)}, found {excerpt(self.tok.text or 'end of input')}")
        return self.next()

    def expect_sep(self, close: str) -> _Tok:
        if not self.at(","):
            raise self.error(f"expected ',' or '{close}', found {excerpt(self.tok.text or 'end of input')}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> _Tok:
        if self.tok.kind != kind:
            raise self.error(f"expected {what}, found {excerpt(self.tok.text or 'end of input')}")
        return self.next()

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> Module:
        self.expect("module")
        tok = self.expect_kind("param", "module name '@Name'")
        self.module.name = _param_name(tok.text)
        self.expect("{")
        while not self.at("graph"):
            if self.at("meta"):
                self.next()
                self.module.meta = self.parse_json_object()
            elif self.at("dim"):
                self.parse_dim()
            elif self.at("param"):
                self.parse_param()
            else:
                raise self.error(f"expected 'meta', 'dim', 'param' or 'graph', found {excerpt(self.tok.text)}")
        self.parse_graph()
        self.expect("}")
        self.expect_kind("eof", "end of input")
        return self.module

    def parse_json_object(self) -> dict[str, Any]:
        # JSON is re-read from the raw tokens' span: collect balanced braces.
        start = self.i
        depth = 0
        parts: list[str] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                raise self.error("unterminated meta object", self.toks[start])
            if tok.text == "{" and tok.kind == "punct":
                depth += 1
            elif tok.text == "}" and tok.kind == "punct":
                depth -= 1
            parts.append(tok.text)
            if depth == 0:
                break
        try:
            obj = json.loads(" ".join(parts))
        except json.JSONDecodeError as exc:
            raise self.error(f"meta is not valid JSON: {exc}", self.toks[start]) from None
        if not isinstance(obj, dict):
            raise self.error("meta must be a JSON object", self.toks[start])
        return obj

    def parse_dim(self) -> None:
        self.expect("dim")
        name = self.expect_kind("ident", "dim name").text
        self.expect("=")
        self.expect("[")
        lo = int(self.expect_kind("number", "dim minimum").text)
        self.expect(",")
        if self.at("inf"):
            self.next()
            hi = None
        else:
            hi = int(self.expect_kind("number", "dim maximum or inf").text)
        self.expect("]")
        self.module.dims[name] = DimRange(lo, hi)

    def parse_param(self) -> None:
        self.expect("param")
        tok = self.expect_kind("param", "parameter name '@name'")
        name = _param_name(tok.text)
        self.expect(":")
        type_ = self.parse_type()
        if not isinstance(type_, TensorType):
            raise self.error(f"parameter @{excerpt(name, quote=False)} must have a tensor type", tok)
        data = self.weights.get(name)
        if data is None:
            shape = [d if isinstance(d, int) else 0 for d in type_.shape]
            data = torch.empty(shape, dtype=type_.dtype, device="meta")
        elif TensorType.of(data) != type_:
            raise self.error(
                f"weights for @{excerpt(name, quote=False)} are {TensorType.of(data)}, but the IR declares {type_}", tok
            )
        if name in self.module.params:
            raise self.error(f"parameter @{excerpt(name, quote=False)} is declared twice", tok)
        param = self.module.add_param(name, data)
        if self.at("{"):
            self.next()
            while not self.at("}"):
                key = self.expect_kind("ident", "an attribute name").text
                self.expect("=")
                attr_tok = self.tok
                value = self.parse_literal()
                if not isinstance(value, Attribute):
                    raise self.error(f"parameter attribute {excerpt(key, quote=False)} must be a typed attribute such "
                                     "as sparsity(...)", attr_tok)
                param.attrs[key] = value
                if not self.at("}"):
                    self.expect_sep("}")
            self.next()

    def parse_type(self) -> Type:
        tok = self.expect_kind("ident", "a type")
        if tok.text.startswith("sym_"):
            kind = tok.text[4:]
            if kind not in ("int", "float", "bool"):
                raise self.error(f"unknown symbolic type {excerpt(tok.text)}", tok)
            self.expect("(")
            expr = None if self.at(")") else str(self.parse_dim_expr())
            self.expect(")")
            return SymType(kind, expr)
        if not is_dtype_name(tok.text):
            raise self.error(f"unknown type {excerpt(tok.text)}", tok)
        self.expect("[")
        shape: list[Dim] = []
        while not self.at("]"):
            shape.append(self.parse_dim_expr())
            if not self.at("]"):
                self.expect(",")
        self.expect("]")
        return TensorType(dtype_from_name(tok.text), tuple(shape))

    def parse_dim_expr(self) -> Dim:
        tok = self.next()
        if tok.kind == "number" and re.fullmatch(r"-?\d+", tok.text):
            return int(tok.text)
        if tok.kind == "ident":
            return tok.text
        if tok.kind == "string":
            return json.loads(tok.text)
        raise self.error(f"expected a dimension, found {excerpt(tok.text)}", tok)

    def parse_graph(self) -> None:
        graph = self.module.graph
        self.expect("graph")
        self.expect("(")
        while not self.at(")"):
            tok = self.expect_kind("value", "graph input '%name'")
            self.expect(":")
            value = graph.add_input(tok.text[1:], self.parse_type())
            self.define(value, tok)
            if not self.at(")"):
                self.expect_sep(")")
        self.expect(")")
        self.expect("{")
        while not self.at("return"):
            self.parse_node()
        self.expect("return")
        self.expect("(")
        while not self.at(")"):
            key_tok = self.next()
            if key_tok.kind == "string":
                key = json.loads(key_tok.text)
            elif key_tok.kind == "ident":
                key = key_tok.text
            else:
                raise self.error("expected an output name", key_tok)
            self.expect("=")
            graph.set_output(key, self.parse_literal())
            if not self.at(")"):
                self.expect_sep(")")
        self.expect(")")
        self.expect("}")

    def define(self, value: Value, tok: _Tok) -> None:
        if value.name in self.values:
            raise self.error(f"%{excerpt(value.name, quote=False)} is defined twice (SSA)", tok)
        self.values[value.name] = value

    def parse_node(self) -> None:
        defs: list[tuple[_Tok, Type]] = []
        if self.tok.kind == "value":
            while True:
                tok = self.expect_kind("value", "'%name'")
                self.expect(":")
                defs.append((tok, self.parse_type()))
                if self.at("="):
                    self.next()
                    break
                self.expect(",")
        op_tok = self.expect_kind("ident", "an op name")
        self.expect("(")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        while not self.at(")"):
            if self.tok.kind == "ident" and self.toks[self.i + 1].text == "=":
                key = self.next().text
                self.next()
                kwargs[key] = self.parse_literal()
            else:
                if kwargs:
                    raise self.error("positional argument after keyword argument")
                args.append(self.parse_literal())
            if not self.at(")"):
                self.expect_sep(")")
        self.expect(")")
        outputs = [Value(tok.text[1:], type_) for tok, type_ in defs]
        node = Node(op_tok.text, tuple(args), kwargs, outputs)
        if self.at("loc"):
            self.next()
            self.expect("(")
            node.loc = json.loads(self.expect_kind("string", "a location string").text)
            self.expect(")")
        for (tok, _), value in zip(defs, outputs, strict=True):
            self.define(value, tok)
        self.module.graph.insert(node)

    def parse_literal(self) -> Any:
        tok = self.next()
        kind, text = tok.kind, tok.text
        if kind == "value":
            value = self.values.get(text[1:])
            if value is None:
                raise self.error(f"%{excerpt(text[1:], quote=False)} is used before it is defined", tok)
            return value
        if kind == "param":
            name = _param_name(text)
            if name not in self.module.params:
                raise self.error(f"@{excerpt(name, quote=False)} is not a declared parameter", tok)
            return self.module.params[name]
        if kind == "number":
            return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        if kind == "neginf":
            return float("-inf")
        if kind == "string":
            return json.loads(text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "none":
                return None
            if text in ("inf", "nan"):
                return float(text)
            if text in _TORCH_CONSTANTS:
                return _TORCH_CONSTANTS[text]
            if attribute_kind(text) is not None and self.at("("):
                return self.parse_attribute(text, tok)
            if text == "device":
                self.expect("(")
                dev = json.loads(self.expect_kind("string", "a device string").text)
                self.expect(")")
                return torch.device(dev)
            raise self.error(f"unknown literal {excerpt(text)}", tok)
        if text == "[":
            items = self.parse_items("]")
            return items
        if text == "(":
            return tuple(self.parse_items(")"))
        raise self.error(f"expected a value or literal, found {excerpt(text)}", tok)

    def parse_attribute(self, kind: str, tok: _Tok) -> Attribute:
        self.expect("(")
        values: dict[str, Any] = {}
        while not self.at(")"):
            key = self.expect_kind("ident", f"a field of {kind}").text
            self.expect("=")
            values[key] = self.parse_literal()
            if not self.at(")"):
                self.expect_sep(")")
        self.next()
        try:
            return make_attribute(kind, values)
        except IRError as exc:
            raise self.error(str(exc), tok) from None

    def parse_items(self, close: str) -> list[Any]:
        items: list[Any] = []
        while not self.at(close):
            items.append(self.parse_literal())
            if not self.at(close):
                self.expect_sep(close)
        self.next()
        return items


def _param_name(text: str) -> str:
    body = text[1:]
    return json.loads(body) if body.startswith('"') else body


def parse_module(text: str, weights: Mapping[str, torch.Tensor] | None = None) -> Module:
    """Parse the textual IR into a module; see the module docstring for ``weights``."""
    return _Parser(text, weights or {}).parse()
