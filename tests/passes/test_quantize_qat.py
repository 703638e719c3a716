"""quantize{mode=qat}: the fake_quant op (forward = the int8 grid, straight-through
gradients), the training copy it edits, and the result: the same int8 IR as post-training
quantization, run by every backend, with sparse weights' zeros kept."""

from __future__ import annotations

import pytest
import torch

import optc
from optc.backends.differential import check_backends, run_backend
from optc.errors import PipelineSpecError
from optc.ir import collect_problems, print_module
from optc.ir.ops.fake_quant import fake_quant
from optc.ir.ops.quantized_linear import quantize_weight
from optc.passes import PassContext, PassManager, parse_pipeline
from optc.passes.support.calibration import affine_qparams
from optc.passes.support.qat import QAT_OUTPUT, insert_fake_quant
from optc.tasks import evaluate
from optc.tests.conftest import assert_refused_unchanged, token_inputs
from optc.tests.train.conftest import tiny_bert, write_task, write_tokenizer
from optc.train import finetune

TASK = "text-classification"
UP = "encoder.layer.0.intermediate.dense.weight"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    tok = write_tokenizer(root / "tok")
    write_task(root / "task", train=480, dev=64)
    model, module = tiny_bert(layers=2, seed=1)
    module.meta["source"]["tokenizer"] = str(root / "tok")
    finetune(module, TASK, root / "task", tokenizer=tok, max_steps=80, lr=2e-3, batch_size=16,
             eval_split=None)
    return root, model, module, tok


def _qat(root, module, options: str = ",lr=1e-4"):
    spec = f"quantize{{mode=qat,max_steps=6,batch_size=16,data={root / 'task'}{options}}}"
    p = parse_pipeline(spec)[0]
    return p.run(module, PassContext(reference=module.clone()))


def _body(module) -> list[str]:
    """The printed IR without its meta line (training records its steps there)."""
    return [line for line in print_module(module).splitlines() if "meta {" not in line]


def test_fake_quant_forward_is_the_int8_grid_and_gradients_pass_straight_through() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 10, requires_grad=True)
    out = fake_quant(w, scheme="symmetric", bits=7, axis=0)
    q, scale = quantize_weight(w, 7)
    assert torch.equal(out.detach(), q.float() * scale[:, None])
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 9.0], requires_grad=True)
    s, zp = affine_qparams(-1.0, 1.0)
    y = fake_quant(x, s, zp, scheme="affine")
    lo, hi = (0 - zp.item()) * s.item(), (255 - zp.item()) * s.item()
    assert y[0].item() == pytest.approx(lo) and y[-1].item() == pytest.approx(hi)  # clipped
    assert y[2].item() == 0.0
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # no gradient where clipped


def test_training_copy_verifies_and_runs_on_eager_and_torchscript(tuned) -> None:
    _, model, base, _ = tuned
    work = base.clone()
    names = [n.args[1].name for n in work.graph if n.op == "linear"][:12]
    firsts = insert_fake_quant(work, names, 7, activations=True)
    assert len(firsts) == 8
    assert not collect_problems(work)
    assert sum(n.op == "fake_quant" for n in work.graph) == 12 + 8
    inputs = token_inputs(model, 2, 6)
    for i in range(len(firsts)):
        inputs[f"qat_scale_{i}"] = torch.tensor(0.05)
        inputs[f"qat_zero_point_{i}"] = torch.tensor(128.0)
    eager = run_backend(work, "eager", inputs)
    script = run_backend(work, "torchscript", inputs)
    assert torch.allclose(eager["logits"], script["logits"], atol=1e-5)
    assert f"{QAT_OUTPUT}0" in eager
    ref = run_backend(base, "eager", {k: v for k, v in inputs.items() if "qat" not in k})
    assert not torch.equal(eager["logits"], ref["logits"])  # fake quantization is active


def test_qat_gives_the_same_ir_as_post_training_static_quantization(tuned) -> None:
    root, model, base, _ = tuned
    ptq = base.clone()
    PassManager(f"quantize{{mode=static,data={root / 'task'}}}").run(ptq)
    qat = base.clone()
    result = _qat(root, qat)
    stats = result.stats
    assert result.modified and stats["steps"] == 6 and stats["qat_activations"] == 8
    assert stats["teacher"] == "pipeline-input" and stats["soft_targets"] is True
    assert _body(qat) == _body(ptq)  # same ops, operands, parameter names, types, attributes
    assert not collect_problems(qat)
    trained = [n for n, p in qat.params.items() if p.data.dtype == torch.int8]
    assert any(not torch.equal(qat.params[n].data, ptq.params[n].data) for n in trained)
    report = check_backends(qat, token_inputs(model, 3, 9))
    assert max(report.diffs["torchscript"].values()) <= 1e-5
    assert max(report.diffs["onnx"].values()) <= 1e-3


def test_qat_without_activations_gives_the_dynamic_form(tuned) -> None:
    root, model, base, _ = tuned
    ptq = base.clone()
    PassManager("quantize").run(ptq)
    qat = base.clone()
    stats = _qat(root, qat, ",lr=1e-4,activations=false").stats
    assert stats["qat_activations"] == 0
    assert _body(qat) == _body(ptq)
    report = check_backends(qat, token_inputs(model, 2, 7))
    assert max(report.diffs["onnx"].values()) <= 1e-3


def test_sparse_weights_stay_zero_through_qat(tuned) -> None:
    root, _, base, _ = tuned
    module = base.clone()
    PassManager("sparsify{sparsity=0.5}").run(module)
    zeros = module.params[UP].data == 0
    _qat(root, module)
    w = module.params[UP]
    assert set(w.attrs) == {"sparsity", "quantization"} and w.data.dtype == torch.int8
    assert zeros.float().mean() >= 0.5 and (w.data[zeros] == 0).all()
    optc.verify(module)


def test_qat_needs_a_task_and_refuses_max_drop(tuned) -> None:
    root, _, base, _ = tuned
    module = base.clone()
    module.meta.pop("task", None)
    assert_refused_unchanged(module, f"quantize{{mode=qat,data={root / 'task'}}}",
                             "quantize mode=qat trains or scores on a task")
    with pytest.raises(PipelineSpecError, match="QAT trains them all"):
        parse_pipeline("quantize{mode=qat,max_drop=1}")


def test_a_few_qat_steps_lower_the_loss_of_post_training_quantization(tuned) -> None:
    root, _, base, tok = tuned
    ptq = base.clone()
    PassManager(f"quantize{{mode=static,data={root / 'task'}}}").run(ptq)
    qat = base.clone()
    _qat(root, qat, ",lr=1e-3")  # 6 steps

    def dev(module):
        return evaluate(TASK, optc.to_eager(module), "dev", tok, data=root / "task")

    before, after = dev(ptq), dev(qat)
    assert after.mean_loss < 0.9 * before.mean_loss  # measured: 0.098 -> 0.073
    assert after.score >= before.score
