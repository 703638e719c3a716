"""hard-attention takes ``k`` or ``fraction``, never both (the pair used to be accepted while
the kernels read one and the stats the other); the default stays k = 30."""

from __future__ import annotations

import pytest

import optc
from optc.errors import PipelineSpecError
from optc.ir.printer import print_module
from optc.passes import parse_pipeline
from optc.passes.hard_attention import DEFAULT_K, HardAttention


def test_k_and_fraction_together_are_a_bad_option(bert) -> None:
    with pytest.raises(PipelineSpecError, match="k or fraction, not both"):
        HardAttention(k=2, fraction=0.5)
    with pytest.raises(PipelineSpecError, match="k or fraction, not both"):
        parse_pipeline("hard-attention{k=2,fraction=0.5}")
    _, base, _ = bert
    module = base.clone()
    before = print_module(module)
    with pytest.raises(PipelineSpecError, match="k or fraction, not both"):
        optc.run_pipeline(module, "hard-attention{k=30,fraction=0.5}")  # even the default k
    assert print_module(module) == before


def test_default_k_and_fraction_alone(bert) -> None:
    _, base, _ = bert
    plain = base.clone()
    report = optc.run_pipeline(plain, "hard-attention")
    assert report.records[0].stats["k"] == DEFAULT_K == 30
    assert all(n.attr("topk") == 30 and n.attr("topk_fraction") is None
               for n in plain.graph if n.op == "attention")
    assert HardAttention().spec() == "hard-attention"
    frac = base.clone()
    report = optc.run_pipeline(frac, "hard-attention{fraction=0.5}")
    assert report.records[0].stats["k"] == "0.5 x seq"
    assert all(n.attr("topk_fraction") == 0.5 for n in frac.graph if n.op == "attention")
    assert HardAttention(fraction=0.5).spec() == "hard-attention{fraction=0.5}"
    assert HardAttention(k=4).spec() == "hard-attention{k=4}"
