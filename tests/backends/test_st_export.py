"""hf backend, sentence-embedding models: the directory is also a sentence-transformers one
(modules.json, the Pooling config, Normalize, sentence_bert_config.json) with the pooling the
model's embedding task records, else its source's; sentence-transformers loads it and encodes
exactly what optc's eager IR pools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import optc
from optc.backends import to_eager, write_backend
from optc.backends.st_format import EMBEDDING_TASK_KINDS, declared_pooling
from optc.tasks import EMBEDDING_KINDS, get_task
from optc.tasks import declared_pooling as task_pooling
from optc.tasks.embedding import embed
from optc.tests.tasks.helpers import write
from optc.tests.train.conftest import VOCAB, sentences, write_tokenizer

TEXTS = [s for s, _ in sentences(12, 5)] + ["good", "a film and the actors and the music"]
NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _source(root: Path, st: bool) -> Path:
    """A tiny random 3-layer BERT directory with its tokenizer; ``st``: declared as a
    sentence-transformers model with mean pooling and Normalize."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64)
    tf.BertModel(config).save_pretrained(str(root))
    write_tokenizer(root)
    if st:
        write(root / "modules.json", json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}]))
        write(root / "1_Pooling" / "config.json", json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True,
             "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}))
    return root


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, tuple[Path, optc.Module]]:
    """Exports of the middle-layer-dropped model: as declared by its source (mean+normalize),
    with an embedding task recording cls pooling, and from a plain (non-ST) source."""
    root = tmp_path_factory.mktemp("st")
    model, source = optc.load_model(str(_source(root / "src", st=True)))
    captured = optc.capture(model, source=source)
    optc.run_pipeline(captured, "drop-layers{layers=1},dce")
    plain = write_tokenizer(root / "plain-src") and root / "plain-src"
    found = {}
    for name in ("declared", "task-cls", "plain"):
        module = captured.clone()
        if name == "task-cls":
            module.meta["task"] = {"name": "embedding", "kind": "embedding-agreement",
                                   "pooling": "cls", "max_length": 48}
        if name == "plain":  # a Hugging Face directory with no modules.json
            module.meta["source"] = {**module.meta["source"], "model": str(plain),
                                     "tokenizer": str(plain)}
        found[name] = (write_backend(module, "hf", root / name, check=name == "declared"), module)
    return found


def _json(path: Path):
    return json.loads(path.read_text())


def test_the_embedding_kinds_agree_with_the_tasks() -> None:
    assert EMBEDDING_TASK_KINDS == EMBEDDING_KINDS


def test_the_directory_declares_the_source_pooling(exports) -> None:
    out, module = exports["declared"]
    modules = _json(out / "modules.json")
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    pooling = _json(out / "1_Pooling" / "config.json")
    assert pooling["word_embedding_dimension"] == 32
    assert {k for k, v in pooling.items() if v is True} == {"pooling_mode_mean_tokens"}
    assert (out / "2_Normalize").is_dir()
    assert _json(out / "sentence_bert_config.json") == {"max_seq_length": 64,
                                                         "do_lower_case": False}
    assert _json(out / "config.json")["num_hidden_layers"] == 2  # the dropped layer is gone
    assert declared_pooling(module.meta).spec == "mean+normalize"


def test_the_recorded_task_pooling_wins_and_plain_models_get_no_st_files(exports) -> None:
    out, _ = exports["task-cls"]
    assert [m["path"] for m in _json(out / "modules.json")] == ["", "1_Pooling"]
    pooling = _json(out / "1_Pooling" / "config.json")
    assert {k for k, v in pooling.items() if v is True} == {"pooling_mode_cls_token"}
    assert not (out / "2_Normalize").exists()
    assert _json(out / "sentence_bert_config.json")["max_seq_length"] == 48  # the task's
    plain, _ = exports["plain"]
    assert (plain / "config.json").is_file() and not (plain / "modules.json").exists()
    assert not (plain / "1_Pooling").exists()


@pytest.mark.parametrize("name", ["declared", "task-cls"])
def test_sentence_transformers_loads_it_and_encodes_optc_eager_embeddings(exports, name) -> None:
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer

    out, module = exports[name]
    model = st.SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    got = model.encode(TEXTS, convert_to_tensor=True, batch_size=4).float()
    tok = AutoTokenizer.from_pretrained(str(out))
    pooling = task_pooling(module.meta)
    expected = embed(get_task("embedding"), to_eager(module), TEXTS, tok, pooling, 8, 64, NAMES)
    assert got.shape == expected.shape == (len(TEXTS), 32)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    if name == "declared":
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
