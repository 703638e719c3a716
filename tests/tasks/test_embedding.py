"""Sentence-embedding tasks (optc.tasks.embedding, optc.tasks.pooling): pooling read from a
sentence-transformers directory, zero-shot sentence similarity and label-free agreement with a
reference model, scored on known embeddings and checked against scipy / brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import optc
from optc.errors import InputError
from optc.tasks import (
    Pooling,
    evaluate,
    get_task,
    neighbour_agreement,
    paired_bootstrap,
    parse_pooling,
    read_pooling,
)
from optc.tasks.records import Example
from optc.tests.tasks.helpers import write
from optc.tests.train.conftest import VOCAB, tiny_bert, write_tokenizer

# --------------------------------------------------------------------------------------------
# Pooling from a sentence-transformers directory


def _st_dir(root: Path, flags: dict[str, bool] | None, normalize: bool = False) -> Path:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    if flags is not None:
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling"})
        write(root / "1_Pooling" / "config.json", json.dumps(
            {"word_embedding_dimension": 8, **{f"pooling_mode_{k}": v for k, v in flags.items()}}))
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    write(root / "modules.json", json.dumps(modules))
    return root


@pytest.mark.parametrize("flags, modes", [
    ({"mean_tokens": True, "cls_token": False, "max_tokens": False}, ("mean",)),
    ({"mean_tokens": False, "cls_token": True, "max_tokens": False}, ("cls",)),
    ({"mean_tokens": False, "cls_token": False, "max_tokens": True}, ("max",)),
    ({"mean_tokens": True, "cls_token": True}, ("cls", "mean")),  # sentence-transformers' order
])
def test_pooling_is_read_from_modules_json_and_the_pooling_config(tmp_path, flags, modes) -> None:
    pooling = read_pooling(_st_dir(tmp_path, flags, normalize=True))
    assert pooling.modes == modes and pooling.normalize
    assert pooling.source == str(tmp_path / "1_Pooling" / "config.json")
    assert read_pooling(_st_dir(tmp_path / "plain", flags)).normalize is False


def test_directories_without_a_pooling_declaration(tmp_path) -> None:
    assert read_pooling(tmp_path) is None  # a plain Hugging Face directory: the task's default
    assert read_pooling(tmp_path / "missing") is None and read_pooling(None) is None
    only_normalize = read_pooling(_st_dir(tmp_path / "n", None, normalize=True))
    assert only_normalize.modes == ("mean",) and only_normalize.normalize


def test_a_broken_or_unsupported_pooling_declaration_is_refused(tmp_path) -> None:
    root = _st_dir(tmp_path / "a", {"mean_tokens": True})
    write(root / "1_Pooling" / "config.json", "{not json")
    with pytest.raises(InputError, match="config.json' is not valid JSON"):
        read_pooling(root)
    with pytest.raises(InputError, match="weightedmean_tokens is not supported"):
        read_pooling(_st_dir(tmp_path / "b", {"weightedmean_tokens": True}))
    with pytest.raises(InputError, match="turns no pooling mode on"):
        read_pooling(_st_dir(tmp_path / "c", {"mean_tokens": False}))
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "modules.json", json.dumps(
        [{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]))
    with pytest.raises(InputError, match="does not exist"):
        read_pooling(tmp_path / "d")


def test_pooling_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    lengths = [5, 2, 3]
    mask = np.array([[1] * n + [0] * (5 - n) for n in lengths])
    for modes, expected in (
        (("mean",), [hidden[i, :n].mean(0) for i, n in enumerate(lengths)]),
        (("cls",), [hidden[i, 0] for i in range(3)]),
        (("max",), [hidden[i, :n].max(0) for i, n in enumerate(lengths)]),
        (("mean_sqrt_len",), [hidden[i, :n].sum(0) / np.sqrt(n) for i, n in enumerate(lengths)]),
        (("cls", "mean"), [np.concatenate([hidden[i, 0], hidden[i, :n].mean(0)])
                           for i, n in enumerate(lengths)]),
    ):
        got = Pooling(modes)(torch.from_numpy(hidden), torch.from_numpy(mask))
        np.testing.assert_allclose(got.numpy(), np.stack(expected), rtol=1e-5, atol=1e-6)
    unit = Pooling(("mean",), normalize=True)(torch.from_numpy(hidden), torch.from_numpy(mask))
    np.testing.assert_allclose(unit.norm(dim=-1).numpy(), 1.0, rtol=1e-6)


def test_the_pooling_option_and_task_specs() -> None:
    assert parse_pooling("cls+normalize") == Pooling(("cls",), True, "option")
    with pytest.raises(InputError, match="pooling='avg'"):
        parse_pooling("avg")
    task = get_task("sentence-similarity{text_column=a,pair_column=b,label_column=gold,"
                    "pooling=max,max_score=1}")
    assert task.kind == "embedding-similarity" and task.head == "base"
    assert task.pooling.modes == ("max",) and task.max_score == 1.0
    assert task.table.text == "a" and task.table.pair == "b" and task.table.label == "gold"
    assert task.main_metric == "spearman" and task.metrics == ("spearman", "pearson")
    assert get_task("sentence-similarity").data_path == "glue/STS-B"
    agreement = get_task("embedding{data=texts.txt,text_column=body}")
    assert agreement.kind == "embedding-agreement" and agreement.needs_reference
    assert agreement.data_path == "texts.txt" and not agreement.trainable
    with pytest.raises(InputError, match="has no option labels"):
        get_task("embedding{labels=a,b}")


# --------------------------------------------------------------------------------------------
# Scores on known embeddings

_TABLE = torch.randn(len(VOCAB), 8, generator=torch.Generator().manual_seed(3))


def _table_model(input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor):
    """Token states = a fixed random row per token id (so mean pooling is known)."""
    return {"last_hidden_state": _TABLE[input_ids]}


def _mean_embedding(tokenizer, text: str) -> np.ndarray:
    ids = tokenizer(text)["input_ids"]
    return _TABLE[ids].numpy().mean(0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


STS_ROWS = [("the movie was good", "the film was great", 4.6),
            ("a plot and actors", "the plot was dull", 1.8),
            ("it is very fun", "this is really fun", 4.2),
            ("the ending was awful", "the music was excellent", 0.4),
            ("a boring story", "a dull story", 3.9),
            ("quite a scene", "the actors and the music", 0.8),
            ("this film is bad", "this movie is terrible", 4.0),
            ("great fun", "very boring", 0.2)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tok")
    write_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory) -> Path:
    lines = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in STS_ROWS]
    return write(tmp_path_factory.mktemp("sts") / "dev.tsv", "\n".join(lines) + "\n")


def test_sentence_similarity_scores_cosines_against_gold_with_scipy(tok, sts_file) -> None:
    task = get_task("sentence-similarity", data=str(sts_file))
    result = evaluate(task, _table_model, "dev", tok, batch_size=3)
    cosines = [_cos(_mean_embedding(tok, a), _mean_embedding(tok, b)) for a, b, _ in STS_ROWS]
    gold = [s for _, _, s in STS_ROWS]
    assert result.predictions == pytest.approx(cosines, abs=1e-6)
    assert result.metrics["spearman"] == pytest.approx(100 * stats.spearmanr(cosines, gold)[0])
    assert result.metrics["pearson"] == pytest.approx(100 * stats.pearsonr(cosines, gold)[0], abs=1e-4)
    assert result.score == result.metrics["spearman"] and result.num_examples == 8
    expected = (np.array(cosines) - np.array(gold) / 5.0) ** 2  # CosineSimilarityLoss
    np.testing.assert_allclose(result.losses.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert result.extra["pooling"] == "mean (default)"
    cls = evaluate(get_task("sentence-similarity", data=str(sts_file), pooling="cls"),
                   _table_model, "dev", tok, pooling=Pooling(("mean",)))
    assert cls.extra["pooling"] == "cls" and cls.predictions == pytest.approx([1.0] * 8)


def test_the_paired_bootstrap_recomputes_spearman_per_resample(tok, sts_file) -> None:
    task = get_task("sentence-similarity", data=str(sts_file))
    gold = [s for _, _, s in STS_ROWS]
    good = evaluate(task, _table_model, "dev", tok).predictions
    shuffled = list(reversed(good))
    delta = paired_bootstrap(task, good, shuffled, gold, resamples=200)
    assert delta.before == pytest.approx(100 * stats.spearmanr(good, gold)[0])
    assert delta.after == pytest.approx(100 * stats.spearmanr(shuffled, gold)[0])
    assert delta.low <= delta.delta <= delta.high


def test_neighbour_agreement_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(30, 6)).astype(np.float32)
    noisy = reference + rng.normal(scale=0.8, size=reference.shape).astype(np.float32)

    def top(x: np.ndarray, i: int, k: int) -> set[int]:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims = unit @ unit[i]
        sims[i] = -np.inf
        return set(np.argsort(-sims)[:k].tolist())

    got = neighbour_agreement(torch.from_numpy(noisy), torch.from_numpy(reference))
    expected = [len(top(noisy, i, 10) & top(reference, i, 10)) / 10 for i in range(30)]
    np.testing.assert_allclose(got.numpy(), expected)
    assert 0 < got.mean() < 1
    same = neighbour_agreement(torch.from_numpy(reference), torch.from_numpy(reference))
    assert same.tolist() == [1.0] * 30
    three = neighbour_agreement(torch.from_numpy(noisy[:3]), torch.from_numpy(reference[:3]))
    assert three.shape == (3,)  # k capped at texts - 1
    with pytest.raises(InputError, match="at least 2 texts"):
        neighbour_agreement(torch.ones(1, 4), torch.ones(1, 4))


def test_the_embedding_task_needs_a_reference_and_reads_text_lines(tok, tmp_path) -> None:
    texts = write(tmp_path / "texts.txt", "\n".join(a for a, _, _ in STS_ROWS) + "\n\n")
    task = get_task("embedding", data=str(texts))
    examples = task.read("dev")
    assert [e.text for e in examples] == [a for a, _, _ in STS_ROWS]
    with pytest.raises(InputError, match="pass reference="):
        evaluate(task, _table_model, examples, tok)
    with pytest.raises(InputError, match="takes no reference"):
        evaluate(get_task("sst2"), _table_model, [Example("a", None, 0)], tok, reference="self")
    base = evaluate(task, _table_model, examples, tok, reference="self")
    assert base.metrics["cosine"] == pytest.approx(100.0) and base.metrics["top10_agreement"] == 100
    shifted = torch.roll(_TABLE, 1, dims=1)
    other = evaluate(task, lambda input_ids, **_: {"last_hidden_state": shifted[input_ids]},
                     examples, tok, reference=base)
    assert other.metrics["cosine"] < 100 and other.mean_loss > 0
    expected = 1 - torch.nn.functional.cosine_similarity(other.extra["embeddings"],
                                                         base.extra["embeddings"])
    torch.testing.assert_close(other.losses, expected)
    assert task.read("val", val_size=2) and len(task.read("val", val_size=2)) == 2
    jsonl = write(tmp_path / "t.jsonl", '{"body": "good fun"}\n{"body": "dull plot"}\n')
    assert len(get_task("embedding", data=str(jsonl), text_column="body").read("dev")) == 2


def test_a_model_without_token_states_is_refused(tok, sts_file) -> None:
    with pytest.raises(InputError, match="pools the model's token states .* outputs only "
                                         "logits: evaluate the encoder without its task head"):
        evaluate(get_task("sentence-similarity", data=str(sts_file)),
                 lambda input_ids, **_: {"logits": torch.zeros(len(input_ids), 2)}, "dev", tok)


def test_training_refuses_sentence_similarity_and_distills_the_label_free_task() -> None:
    from optc.train import has_task_head

    _, module = tiny_bert(layers=1)
    with pytest.raises(InputError, match="cannot use task .* yet"):
        has_task_head(module, get_task("sentence-similarity"))
    assert has_task_head(module, get_task("embedding"))  # its "head": the token states
    with pytest.raises(InputError, match="pooling=mean chooses what a classification head"):
        has_task_head(module, get_task("embedding"), "mean")
    with pytest.raises(InputError, match="finetune cannot use task 'embedding' .* no labels"):
        get_task("embedding").check_trainable("finetune")


# --------------------------------------------------------------------------------------------
# optc eval on a tiny model directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir) -> Path:
    import transformers as tf

    path = tmp_path_factory.mktemp("st-tiny")
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64)
    tf.BertModel(config).save_pretrained(str(path))
    write_tokenizer(path)
    _st_dir(path, {"mean_tokens": True}, normalize=True)
    return path


def _eval_json(capsys, argv: list[str]) -> dict:
    from optc.tools.cli.train import cmd_eval

    assert cmd_eval([*argv, "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_optc_eval_sentence_similarity_on_a_directory_an_artifact_and_onnx(
        model_dir, sts_file, tmp_path, capsys) -> None:
    from optc.backends import write_backend

    hf = _eval_json(capsys, [str(model_dir), "--task", "sentence-similarity", "--data",
                             str(sts_file)])
    assert hf["task"] == "sentence-similarity" and hf["examples"] == 8
    assert hf["pooling"] == "mean, normalized" and set(hf["metrics"]) == {"spearman", "pearson"}
    model, source = optc.load_model(str(model_dir))
    module = optc.capture(model, source=source)
    optc.save(module, tmp_path / "art")
    write_backend(module, "onnx", tmp_path / "m.onnx")
    art = _eval_json(capsys, [str(tmp_path / "art"), "--task", "sentence-similarity", "--data",
                              str(sts_file)])
    onnx = _eval_json(capsys, [str(tmp_path / "m.onnx"), "--task", "sentence-similarity",
                               "--data", str(sts_file), "--tokenizer", str(model_dir)])
    for other in (art, onnx):
        assert other["pooling"] == "mean, normalized"
        assert other["metrics"]["pearson"] == pytest.approx(hf["metrics"]["pearson"], abs=1e-3)
    against = _eval_json(capsys, [str(tmp_path / "art"), "--task", "sentence-similarity",
                                  "--data", str(sts_file), "--against", str(model_dir),
                                  "--resamples", "50"])
    assert against["against"]["change"]["metric"] == "spearman"
    assert abs(against["against"]["change"]["delta"]) < 1e-6


def test_optc_eval_embedding_agreement_is_100_against_itself_and_less_after_pruning(
        model_dir, tmp_path, capsys) -> None:
    from optc.tests.train.conftest import sentences
    from optc.tools.cli.train import cmd_eval

    texts = write(tmp_path / "texts.txt", "\n".join(s for s, _ in sentences(40, 7)) + "\n")
    spec = f"embedding{{data={texts}}}"
    with pytest.raises(InputError, match="pass --against BASE"):
        cmd_eval([str(model_dir), "--task", spec, "-q"])
    model, source = optc.load_model(str(model_dir))
    module = optc.capture(model, source=source)
    optc.save(module, tmp_path / "same")
    same = _eval_json(capsys, [str(tmp_path / "same"), "--task", spec, "--against",
                               str(model_dir), "--resamples", "50"])
    assert same["metrics"]["cosine"] == pytest.approx(100, abs=1e-3)
    assert same["metrics"]["top10_agreement"] == 100.0 and same["examples"] == 40
    optc.run_pipeline(module, "prune-heads{heads=0:0,0:1,0:2,1:1,1:2,1:3},dce")
    optc.save(module, tmp_path / "pruned")
    pruned = _eval_json(capsys, [str(tmp_path / "pruned"), "--task", spec, "--against",
                                 str(model_dir), "--resamples", "50"])
    assert pruned["metrics"]["cosine"] < 99.999 and pruned["metrics"]["top10_agreement"] < 100
    change = pruned["against"]["change"]
    assert change["metric"] == "cosine" and change["before"] == pytest.approx(100, abs=1e-3)
    assert change["after"] == pytest.approx(pruned["metrics"]["cosine"]) and change["high"] < 0


def test_optc_finetune_refuses_the_embedding_tasks(model_dir, tmp_path) -> None:
    """(optc specialize searches on them: tests/search/test_embedding_search.py.)"""
    from optc.tools.cli.train import cmd_finetune

    with pytest.raises(InputError, match="optc finetune cannot use task 'sentence-similarity'"):
        cmd_finetune([str(model_dir), "--task", "sentence-similarity", "-o",
                      str(tmp_path / "o"), "-q"])


@pytest.mark.slow
def test_minilm_on_the_first_200_sts_b_dev_pairs(data_env, capsys) -> None:
    """sentence-transformers reports 82-87 Spearman on the full dev set for this model."""
    out = _eval_json(capsys, ["all-MiniLM-L6-v2", "--task", "sentence-similarity",
                              "--limit", "200"])
    assert out["pooling"] == "mean, normalized" and out["examples"] == 200
    assert 75 < out["metrics"]["spearman"] <= 100 and 75 < out["metrics"]["pearson"] <= 100
