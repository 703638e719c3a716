"""optc: a compiler that specializes transformer models for their task.

    import optc
    module = optc.capture(model)                    # torch.export -> optc IR
    optc.run_pipeline(module, "dce")                # passes, verified between each
    optc.save(module, "out")                        # IR text + safetensors + metadata
    compiled = optc.load("out")                     # callable, no original class needed
"""

from optc.artifacts import load, load_module, save
from optc.backends.eager import to_eager
from optc.errors import OptcError
from optc.frontends.capture import capture
from optc.frontends.huggingface import load_model
from optc.ir import Module, parse_module, print_module, verify
from optc.passes import Pass, PassManager, PassResult, parse_pipeline, register_pass, run_pipeline

__version__ = "0.1.0"

__all__ = [
    "capture",
    "load_model",
    "save",
    "load",
    "load_module",
    "to_eager",
    "Module",
    "parse_module",
    "print_module",
    "verify",
    "Pass",
    "PassManager",
    "PassResult",
    "parse_pipeline",
    "register_pass",
    "run_pipeline",
    "OptcError",
]
