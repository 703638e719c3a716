"""sparsify: patterns honoured and verified, scopes, targets by role, errors leave the IR
unchanged, backends agree."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends
from optc.errors import PipelineSpecError, VerificationError
from optc.ir import collect_problems, parse_module, print_module
from optc.ir.attributes import Sparsity
from optc.passes import PassManager, parse_pipeline
from optc.passes.sparsify import linear_targets
from optc.tests.conftest import assert_refused_unchanged

QUERY = "encoder.layer.0.attention.self.query.weight"


def _weights(module, roles=("attention", "ffn")):
    return {n.args[1].name: n.args[1] for _, _, n in linear_targets(module, roles)}


def test_unstructured_per_tensor_hits_the_sparsity_of_every_weight(bert) -> None:
    module = bert[1].clone()
    dense = {k: p.data for k, p in _weights(module).items()}
    report = PassManager("sparsify{sparsity=0.75}").run(module)
    assert report.records[0].modified and report.records[0].stats["weights"] == 12
    for name, p in _weights(module).items():
        w = p.data
        assert (w == 0).float().mean().item() == pytest.approx(0.75, abs=1 / w.numel())
        kept = dense[name][w != 0].abs()
        assert kept.min() >= dense[name][w == 0].abs().max()  # the largest survive
        assert torch.equal(w[w != 0], dense[name][w != 0])  # unchanged values
        assert p.attrs["sparsity"].pattern == "unstructured"
        assert p.attrs["sparsity"].density == pytest.approx(0.25, abs=1e-5)
    assert not collect_problems(module)


def test_embeddings_and_head_untouched_unless_asked() -> None:
    from optc.tests.frontends.hf_cases import captured

    _, base = captured("bert", "sequence-classification")
    module = base.clone()
    PassManager("sparsify{sparsity=0.5}").run(module)
    untouched = [p for p in module.params.values() if "sparsity" not in p.attrs]
    assert any("embeddings" in p.name for p in untouched)
    assert any("classifier" in p.name for p in untouched)
    assert any("pooler" in p.name for p in untouched)
    PassManager("sparsify{sparsity=0.5,targets=head}").run(module)
    assert "sparsity" in module.params["classifier.weight"].attrs
    assert not any("sparsity" in p.attrs for p in module.params.values() if "embeddings" in p.name)


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("3:8", 3, 8)])
def test_n_m_keeps_the_largest_n_of_each_group(bert, pattern, n, m) -> None:
    module = bert[1].clone()
    dense = module.params[QUERY].data
    PassManager(f"sparsify{{pattern={pattern}}}").run(module)
    w = module.params[QUERY].data
    groups, ref = w.reshape(-1, m), dense.reshape(-1, m).abs()
    assert ((groups != 0).sum(1) == n).all()
    expected = ref.topk(n, dim=1).values.sum(1)
    assert torch.allclose(groups.abs().sum(1), expected)
    assert module.params[QUERY].attrs["sparsity"] == Sparsity("n:m", round(n / m, 6), n=n, m=m)
    assert not collect_problems(module)


@pytest.mark.parametrize("block", ["1x4", "4x4", "16x16"])
def test_block_pattern_zeroes_whole_tiles(bert, block) -> None:
    module = bert[1].clone()
    r, c = map(int, block.split("x"))
    PassManager(f"sparsify{{sparsity=0.5,pattern=block,block={block}}}").run(module)
    w = module.params[QUERY].data
    tiles = (w != 0).reshape(w.shape[0] // r, r, w.shape[1] // c, c)
    alive = tiles.any(3).any(1)
    assert alive.float().mean().item() == pytest.approx(0.5)
    full = tiles.all(3).all(1)
    assert torch.equal(alive, full)  # a tile is all zero or untouched
    assert module.params[QUERY].attrs["sparsity"].block == (r, c)
    assert not collect_problems(module)


def test_global_scope_shares_one_threshold(bert) -> None:
    module = bert[1].clone()
    dense = {k: p.data for k, p in _weights(module).items()}
    PassManager("sparsify{sparsity=0.6,scope=global}").run(module)
    weights = _weights(module)
    zeros = sum(int((p.data == 0).sum()) for p in weights.values())
    total = sum(p.data.numel() for p in weights.values())
    assert zeros / total == pytest.approx(0.6, abs=1e-4)
    pruned = torch.cat([dense[k][p.data == 0].abs() for k, p in weights.items()])
    kept = torch.cat([dense[k][p.data != 0].abs() for k, p in weights.items()])
    assert pruned.max() <= kept.min()
    per_weight = sorted(round((p.data == 0).float().mean().item(), 3) for p in weights.values())
    assert per_weight[0] != per_weight[-1]  # uneven across weights


def test_per_layer_scope_hits_the_sparsity_within_each_layer(bert) -> None:
    module = bert[1].clone()
    PassManager("sparsify{sparsity=0.6,scope=per_layer}").run(module)
    for layer in (0, 1):
        ws = [p.data for n, p in _weights(module).items() if f"layer.{layer}." in n]
        zeros = sum(int((w == 0).sum()) for w in ws)
        assert zeros / sum(w.numel() for w in ws) == pytest.approx(0.6, abs=1e-4)


def test_second_run_is_a_no_op(bert) -> None:
    module = bert[1].clone()
    PassManager("sparsify{sparsity=0.5,pattern=block,block=4x4,scope=global}").run(module)
    text = print_module(module)
    again = PassManager("sparsify{sparsity=0.5,pattern=block,block=4x4,scope=global}").run(module)
    assert not again.records[0].modified
    assert print_module(module) == text


def test_attribute_prints_parses_and_the_verifier_names_a_broken_weight(bert) -> None:
    module = bert[1].clone()
    PassManager("sparsify{pattern=2:4}").run(module)
    text = print_module(module)
    assert 'sparsity=sparsity(pattern="n:m", density=0.5, n=2, m=4)' in text
    weights = {k: p.data for k, p in module.params.items()}
    assert print_module(parse_module(text, weights)) == text
    w = module.params[QUERY].data.clone()
    w[0, :4] = 1.0  # a group of four nonzeros
    module.params[QUERY].data = w
    with pytest.raises(VerificationError, match=f"@{QUERY}.*2:4"):
        optc.verify(module)


def test_backends_agree_on_a_sparsified_model(bert) -> None:
    model, base, inputs = bert
    module = base.clone()
    PassManager("sparsify{sparsity=0.8,pattern=block,block=1x4},dce").run(module)
    report = check_backends(module, inputs)
    assert set(report.diffs) == {"torchscript", "onnx", "hf"}  # hf stores the zeros densely


@pytest.mark.parametrize("spec,message", [
    ("sparsify{sparsity=1.0}", "sparsity must be in [0, 1)"),
    ("sparsify{sparsity=-0.1}", "sparsity must be in [0, 1)"),
    ("sparsify", "needs sparsity=FRACTION"),
    ("sparsify{pattern=4:2}", "need 0 < N < M"),
    ("sparsify{pattern=2:4,sparsity=0.9}", "means sparsity=0.5"),
    ("sparsify{pattern=diagonal,sparsity=0.5}", "pattern must be"),
    ("sparsify{pattern=block,block=4,sparsity=0.5}", "block must be RxC"),
    ("sparsify{sparsity=0.5,targets=embeddings}", "unknown target 'embeddings'"),
])
def test_bad_options_are_spec_errors(spec, message) -> None:
    with pytest.raises(PipelineSpecError, match="pass 'sparsify'") as info:
        parse_pipeline(spec)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_refusals_name_the_parameter_and_leave_the_ir_unchanged(bert) -> None:
    module = bert[1].clone()
    assert_refused_unchanged(module, "sparsify{pattern=3:5}", "is not a multiple of 5")
    assert_refused_unchanged(module, "sparsify{pattern=3:5}", "@encoder.layer.0.attention.self.query.weight")
    assert_refused_unchanged(module, "sparsify{sparsity=0.5,pattern=block,block=3x3}",
                             "does not tile weight @")
    PassManager("sparsify{pattern=2:4}").run(module)
    assert_refused_unchanged(module, "sparsify{sparsity=0.9}", "already sparse with pattern n:m")
    PassManager("quantize").run(module)
    assert_refused_unchanged(module, "sparsify{pattern=2:4}", "sparsify before quantize")
