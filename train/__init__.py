"""Training through the IR: trainable modules, task heads, fine-tuning and distillation.

    from optc.train import finetune, distill, add_task_head
    report = finetune(module, "sst2", tokenizer=tok, epochs=3)   # best dev weights -> IR
    report.score, report.evals, report.losses
    distill(student, teacher, "sst2", tokenizer=tok, alpha_soft=0.5, hidden_mse=1.0)

    model = trainable(module)            # nn.Module with nn.Parameters (copies of IR tensors)
    ...                                  # any training loop
    write_back(model, module)            # new tensors into the IR parameters
"""

from optc.train.batching import Encoded, collate, encode, length_grouped
from optc.train.heads import (
    HEAD_INIT_STD,
    add_task_head,
    has_task_head,
    selection_split,
    selection_warning,
    task_from_meta,
    task_meta,
    task_spec,
    trained_max_length,
)
from optc.train.hooks import TrainHooks
from optc.train.loop import (
    EditFn,
    EvalRecord,
    ProgressFn,
    RunOptions,
    StepInfo,
    TrainingInterrupted,
    TrainReport,
    distill,
    finetune,
    linear_schedule,
    make_optimizer,
    run_options,
)
from optc.train.losses import (
    hidden_state_loss,
    layer_ids,
    layer_map,
    parse_layer_map,
    soft_target_loss,
)
from optc.train.module import (
    DEFAULT_DROPOUT,
    HIDDEN_PREFIX,
    TrainableModule,
    dropout_probability,
    hidden_state_values,
    trainable,
    write_back,
)

__all__ = [
    "TrainableModule",
    "trainable",
    "write_back",
    "dropout_probability",
    "hidden_state_values",
    "DEFAULT_DROPOUT",
    "HIDDEN_PREFIX",
    "add_task_head",
    "has_task_head",
    "task_meta",
    "task_spec",
    "task_from_meta",
    "trained_max_length",
    "selection_split",
    "selection_warning",
    "HEAD_INIT_STD",
    "finetune",
    "distill",
    "TrainReport",
    "EvalRecord",
    "StepInfo",
    "ProgressFn",
    "TrainHooks",
    "EditFn",
    "RunOptions",
    "TrainingInterrupted",
    "run_options",
    "make_optimizer",
    "linear_schedule",
    "soft_target_loss",
    "hidden_state_loss",
    "layer_map",
    "layer_ids",
    "parse_layer_map",
    "Encoded",
    "encode",
    "collate",
    "length_grouped",
]
