"""onnx-st backend: a sentence-transformers directory whose model is optc's ONNX file
(onnx/model.onnx, config.json that AutoConfig reads, tokenizer, pooling files), for fp32, int8
and pruned models (per-layer head counts and FFN widths). ONNX Runtime, fed the tokenizer's
tensors by name as optimum's ORTModelForFeatureExtraction feeds them, gives optc's token
states. The load by ``SentenceTransformer(path, backend="onnx")`` itself needs optimum-onnx,
which pins an older transformers: tools/checks/st_onnx.py checks it in its own environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optc
from optc.backends import to_eager, write_backend
from optc.backends.st_onnx import ONNX_FILE, TOKEN_STATES, st_onnx_file, st_onnx_refusal
from optc.errors import BackendError, OutputError
from optc.ir.analysis import analyze
from optc.outputs import is_optc_export
from optc.tasks import declared_pooling as task_pooling
from optc.tasks import get_task
from optc.tasks.embedding import embed
from optc.tests.backends.test_st_export import TEXTS, _source
from optc.tests.train.conftest import write_tokenizer

PIPELINES = {
    "fp32": "dce",
    "pruned-int8": "drop-layers{layers=1},prune-heads{heads=0:1,1:0,1:3},"
                   "prune-neurons{neurons=0:0,0:5,0:9,1:1},dce,quantize",
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, optc.Module]]:
    """The tiny sentence-transformers BERT (mean pooling + Normalize), written with onnx-st
    (self-checked) after each pipeline of :data:`PIPELINES`."""
    root = tmp_path_factory.mktemp("st-onnx")
    model, source = optc.load_model(str(_source(root / "src", st=True)))
    captured = optc.capture(model, source=source)
    found = {}
    for name, pipeline in PIPELINES.items():
        module = captured.clone()
        optc.run_pipeline(module, pipeline)
        found[name] = (write_backend(module, "onnx-st", root / name), module)
    return found


def _json(path: Path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", list(PIPELINES))
def test_the_directory_is_what_sentence_transformers_onnx_backend_reads(exports, name) -> None:
    from transformers import AutoConfig

    out, module = exports[name]
    assert (out / ONNX_FILE).is_file() and st_onnx_file(out) == out / ONNX_FILE
    assert not list(out.glob("*.safetensors"))  # the config describes the ONNX file only
    assert (out / "vocab.txt").is_file() and (out / "tokenizer_config.json").is_file()
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in _json(out / "modules.json")] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    pooling = _json(out / "1_Pooling" / "config.json")
    assert pooling["word_embedding_dimension"] == 32
    assert {k for k, v in pooling.items() if v is True} == {"pooling_mode_mean_tokens"}
    assert _json(out / "sentence_bert_config.json")["max_seq_length"] == 64
    layers = analyze(module).layers
    heads = [layer.attention.num_heads for layer in layers]
    widths = [layer.ffn.width for layer in layers]
    config = AutoConfig.from_pretrained(str(out))  # what sentence-transformers reads first
    assert config.model_type == "bert" and config.num_hidden_layers == len(layers)
    assert config.num_attention_heads_per_layer == heads
    assert config.intermediate_size_per_layer == widths
    assert config.optc["format"] == "onnx-st" and config.optc["onnx_file"] == ONNX_FILE
    if name == "pruned-int8":  # per-layer sizes differ: the plain fields keep the source's
        import onnx

        assert (heads, widths) == ([3, 2], [61, 63])
        assert (config.num_attention_heads, config.intermediate_size) == (4, 64)

        ops = {n.op_type for n in onnx.load(str(out / ONNX_FILE)).graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)


@pytest.mark.parametrize("name", list(PIPELINES))
def test_onnx_runtime_fed_the_tokenizer_output_gives_optc_token_states(exports, name) -> None:
    """What optimum does: feed the session the tokenizer's tensors it names, read
    last_hidden_state; then sentence-transformers pools (mean) and normalizes."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out, module = exports[name]
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == TOKEN_STATES
    wanted = {i.name for i in session.get_inputs()}
    assert wanted == {"input_ids", "attention_mask", "token_type_ids"}
    tok = AutoTokenizer.from_pretrained(str(out))
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    states = session.run([TOKEN_STATES], {k: v for k, v in batch.items() if k in wanted})[0]
    with torch.inference_mode():
        eager = to_eager(module)(**{k: torch.from_numpy(v) for k, v in batch.items()})
    expected = eager[TOKEN_STATES]
    got = torch.from_numpy(states)
    mask = torch.from_numpy(batch["attention_mask"]).bool()
    tol = 1e-4 if name == "fp32" else 0.1  # the self-check's int8 tolerance (ORT's GELU)
    assert float((got - expected)[mask].abs().max()) <= tol
    pooled = (got * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    reference = embed(get_task("embedding"), to_eager(module), TEXTS, tok,
                      task_pooling(module.meta), 8, 64, tuple(batch))
    cosine = torch.nn.functional.cosine_similarity(pooled, reference, dim=-1)
    assert float(cosine.min()) >= (0.9999 if name == "fp32" else 0.99), cosine


def test_models_it_cannot_write_are_refused_in_one_line(exports, tmp_path: Path) -> None:
    import transformers as tf

    _, module = exports["fp32"]
    headed = tmp_path / "headed"
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, vocab_size=40, max_position_embeddings=64)
    tf.BertForSequenceClassification(config).save_pretrained(str(headed))
    write_tokenizer(headed)
    model, source = optc.load_model(str(headed))
    classifier = optc.capture(model, source=source)
    why = st_onnx_refusal(classifier)
    assert why is not None and "logits" in why and "--backend onnx" in why and "\n" not in why
    with pytest.raises(BackendError, match="task head"):
        write_backend(classifier, "onnx-st", tmp_path / "out", check=False)
    assert not (tmp_path / "out").exists()
    untokenized = module.clone()
    untokenized.meta["source"] = {**untokenized.meta["source"], "tokenizer": None}
    assert "no tokenizer directory" in st_onnx_refusal(untokenized)
    assert st_onnx_refusal(module) is None


def test_cli_writes_it_and_replaces_only_its_own_output(exports, tmp_path: Path, capsys) -> None:
    from optc.tools.cli.main import main
    from optc.tools.cli.train import _st_onnx_target

    source = Path(exports["fp32"][1].meta["source"]["model"])
    out = tmp_path / "st"
    args = [str(source), "--backend", "onnx-st", "-o", str(out), "-q", "--no-check"]
    assert main(args) == 0
    assert is_optc_export(out) and st_onnx_file(out) == out / ONNX_FILE
    assert _st_onnx_target(str(out)) == str(out / ONNX_FILE)  # optc eval DIR reads its file
    assert _st_onnx_target(str(source)) == str(source) and st_onnx_file(source) is None
    capsys.readouterr()
    assert main(args) == OutputError.exit_code  # never replaced silently
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0  # optc's own onnx-st directory may be replaced


def test_a_wrong_directory_is_removed_by_the_self_check(exports, tmp_path: Path,
                                                        monkeypatch) -> None:
    """The self-check runs onnx/model.onnx against the eager IR: an ONNX lowering that goes
    wrong (a perturbed weight) leaves no directory behind."""
    from optc.backends import onnx as onnx_backend

    _, module = exports["fp32"]
    real = onnx_backend.lower_for_onnx

    def wrong(m):  # noqa: ANN001
        lowered, translations = real(m)
        name = next(n for n in lowered.params if n.endswith("encoder.layer.0.output.dense.weight"))
        lowered.params[name].data = lowered.params[name].data * 1.5
        return lowered, translations

    monkeypatch.setattr(onnx_backend, "lower_for_onnx", wrong)
    with pytest.raises(BackendError, match="onnx-st self-check .* 'last_hidden_state' differs"):
        write_backend(module, "onnx-st", tmp_path / "st")
    assert list(tmp_path.iterdir()) == []
