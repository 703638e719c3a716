"""The optc IR: graph, values, types, ops, printer/parser and verifier."""

from optc.ir.core import DimRange, Graph, Module, Node, Parameter, Value
from optc.ir.ops import OpDef, all_ops, get_op
from optc.ir.parser import parse_module
from optc.ir.printer import print_module
from optc.ir.types import SymType, TensorType
from optc.ir.verifier import collect_problems, verify

__all__ = [
    "DimRange",
    "Graph",
    "Module",
    "Node",
    "Parameter",
    "Value",
    "all_ops",
    "OpDef",
    "get_op",
    "parse_module",
    "print_module",
    "SymType",
    "TensorType",
    "collect_problems",
    "verify",
]
