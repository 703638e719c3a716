"""quantize on a weight that several linears read: DeBERTa-v3's position projections reuse the
layer's query/key weights (``share_att_key``), so dynamic int8 quantizes every reader of the
weight once, and static mode, which keeps one activation range per weight, refuses."""

from __future__ import annotations

import torch

from optc.backends.differential import check_backends, run_backend
from optc.ir import collect_problems
from optc.passes import PassManager
from optc.tests.conftest import assert_refused_unchanged
from optc.tests.frontends.deberta_cases import deberta_captured, deberta_inputs


def _linears_reading(module, weight):
    return [n for n in module.graph if n.op == "linear" and n.arg(1) is weight]


def test_dynamic_int8_quantizes_every_reader_of_a_shared_weight() -> None:
    _, base = deberta_captured("v3")
    module = base.clone()
    shared = [p for p in module.params.values()
              if len(_linears_reading(module, p)) > 1]
    assert shared, "DeBERTa-v3's query/key weights are read by the position projections too"
    stats = PassManager("quantize{mode=dynamic}").run(module).records[0].stats
    assert collect_problems(module) == []
    for weight in shared:
        readers = _linears_reading(module, weight)
        assert weight.data.dtype == torch.int8
        assert all(len(n.args) >= 4 and n.args[3] is readers[0].args[3] for n in readers)
    assert stats["linears"] == sum(1 for n in module.graph if n.op == "linear"
                                   and n.arg(1).data.dtype == torch.int8)
    inputs = deberta_inputs()
    report = check_backends(module, inputs)  # raises when a backend disagrees with eager
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    fp32 = run_backend(base, "eager", inputs)["last_hidden_state"]
    int8 = run_backend(module, "eager", inputs)["last_hidden_state"]
    cosine = torch.nn.functional.cosine_similarity(fp32.flatten(1), int8.flatten(1)).min()
    assert cosine > 0.99


def test_static_int8_refuses_a_weight_read_by_two_inputs() -> None:
    _, base = deberta_captured("v3")
    module = base.clone()
    assert_refused_unchanged(module, "quantize{mode=static,data=unused.tsv}",
                             "keeps one activation range per weight: use mode=dynamic")
