"""Training hooks: the order the loop calls them, extra loss terms, extra graph inputs set by
a hook, and which evaluations may be kept."""

from __future__ import annotations

import torch

from optc.ir.core import Module
from optc.ir.types import TensorType
from optc.tests.train.conftest import tiny_bert
from optc.train import TrainHooks, finetune, trainable

TASK = "text-classification"


class Recorder(TrainHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def start(self, model, total_steps):
        self.calls.append(("start", total_steps))

    def before_step(self, model, step):
        self.calls.append(("before", step))

    def loss(self, model, step):
        self.calls.append(("loss", step))
        return None

    def after_step(self, model, step):
        self.calls.append(("after", step))
        return {"step_seen": float(step)}

    def keep_best(self, step):
        return step >= 6

    def finish(self, model):
        self.calls.append(("finish", -1))


def test_hooks_are_called_in_order_and_gate_best_weights(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    hooks = Recorder()
    seen = []
    report = finetune(module, TASK, task_dir, tokenizer=tokenizer, epochs=1, max_steps=6,
                      batch_size=16, lr=1e-3, hooks=hooks, progress=seen.append)
    assert hooks.calls[0] == ("start", 6) and hooks.calls[-1] == ("finish", -1)
    body = hooks.calls[1:-1]
    assert body == [(kind, s) for s in range(6) for kind in ("before", "loss", "after")]
    assert [s.terms["step_seen"] for s in seen] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert report.best is not None and report.best.step == 6  # the only evaluation allowed


class Penalty(TrainHooks):
    """Pulls every weight of one matrix toward zero with a large L2 term."""

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, model, step):
        return 100.0 * model.tensor(self.name).pow(2).sum()


def test_an_extra_loss_term_is_trained(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    name = next(n for n, p in module.params.items() if p.data.dim() == 2 and "query" in n)
    before = module.params[name].data.norm()
    finetune(module, TASK, task_dir, tokenizer=tokenizer, epochs=1, max_steps=10,
             batch_size=16, lr=1e-2, hooks=Penalty(name), eval_split=None)
    assert module.params[name].data.norm() < 0.5 * before


def _scale_output(work: Module, structure) -> None:
    """Multiply the first output by a new graph input ``gate`` (shape [1])."""
    graph = work.graph
    name, value = next(iter(graph.outputs.items()))
    gate = graph.add_input("gate", TensorType(value.type.dtype, (1,)))
    scaled = graph.create_node("aten.mul.Tensor", (value, gate), output_types=[value.type])
    graph.set_output(name, scaled.outputs[0])


def test_edit_and_extra_inputs_feed_a_gate(task_dir, tokenizer) -> None:
    _, module = tiny_bert(layers=1)
    params_before = dict(module.params)
    model = trainable(module, dropout=0.0, edit=_scale_output)
    assert "gate" in model.input_names and "gate" not in [v.name for v in module.graph.inputs]
    assert dict(module.params) == params_before  # the module itself is unchanged
    ids = torch.tensor([[2, 7, 8, 3]])
    model.eval()
    model.extra_inputs = {"gate": torch.ones(1)}
    full = next(iter(model(input_ids=ids).values()))
    model.extra_inputs = {"gate": torch.full((1,), 0.5)}
    half = next(iter(model(input_ids=ids).values()))
    torch.testing.assert_close(half, 0.5 * full)
    explicit = next(iter(model(input_ids=ids, gate=torch.zeros(1)).values()))
    assert torch.count_nonzero(explicit) == 0  # an explicit input wins over extra_inputs
