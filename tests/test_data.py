"""Reading data without a task (optc.tasks.detect over optc.tasks.readers): the shared
GLUE/SQuAD files, CSV and JSON lines, path resolution, errors, calibration batches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from optc.errors import InputError
from optc.tasks.batching import example_batches
from optc.tasks.detect import first_split, read_examples
from optc.tasks.readers import DATA_ENV, read_squad_file, resolve_data_path
from optc.tasks.records import Example

# task, rows, label counts (None for STS-B's float scores), pair task -- from the data README;
# RTE's words are mapped entailment -> 0, not_entailment -> 1.
GLUE_DEV = [
    ("SST-2", 872, {1: 444, 0: 428}, False),
    ("MRPC", 408, {1: 279, 0: 129}, True),
    ("RTE", 277, {0: 146, 1: 131}, True),
    ("CoLA", 1043, {1: 721, 0: 322}, False),
    ("STS-B", 1500, None, True),
]
GLUE_TRAIN = [("SST-2", 67349), ("MRPC", 3668), ("RTE", 2490), ("CoLA", 8551), ("STS-B", 5749)]


@pytest.fixture(scope="session")
def tokenizer():
    from optc.frontends.huggingface import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture()
def no_data_env(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# The real files


@pytest.mark.parametrize(("task", "rows", "labels", "paired"), GLUE_DEV,
                         ids=[t[0] for t in GLUE_DEV])
def test_glue_dev(data_dir, task, rows, labels, paired):
    examples = read_examples(data_dir / "glue" / task / "dev.tsv")
    assert len(examples) == rows
    assert all((e.text_pair is not None) == paired for e in examples)
    assert all(e.text and (e.text_pair or not paired) for e in examples)
    if labels is None:
        assert all(type(e.label) is float and 0.0 <= e.label <= 5.0 for e in examples)
        assert sum(e.label for e in examples) / rows == pytest.approx(2.364, abs=1e-3)
    else:
        assert all(type(e.label) is int for e in examples)
        assert Counter(e.label for e in examples) == labels


@pytest.mark.parametrize(("task", "rows"), GLUE_TRAIN, ids=[t[0] for t in GLUE_TRAIN])
def test_glue_train_row_counts(data_dir, task, rows):
    assert len(read_examples(data_dir / "glue" / task, split="train")) == rows


def test_first_examples_verbatim(data_dir):
    glue = data_dir / "glue"
    assert read_examples(glue / "SST-2" / "dev.tsv", limit=1) == [
        Example("it 's a charming and often affecting journey . ", None, 1)]
    assert read_examples(glue / "CoLA" / "dev.tsv", limit=1)[0] == Example(
        "The sailors rode the breeze clear of the rocks.", None, 1)
    mrpc = read_examples(glue / "MRPC" / "dev.tsv", limit=1)[0]
    assert mrpc.text.startswith("He said the foodservice pie business")
    # an unbalanced quote opens the second sentence: GLUE files use no quoting
    assert mrpc.text_pair == (
        '"The foodservice pie business does not fit our long-term growth strategy.')
    rte = read_examples(glue / "RTE" / "dev.tsv", limit=1)[0]
    assert (rte.text_pair, rte.label) == ("Christopher Reeve had an accident.", 1)
    stsb = read_examples(glue / "STS-B" / "dev.tsv", limit=1)[0]
    assert stsb == Example("A man with a hard hat is dancing.",
                           "A man wearing a hard hat is dancing.", 5.0)


def test_squad_dev(data_dir):
    path = data_dir / "squad" / "dev-v1.1.json"
    examples = read_examples(path)
    assert len(examples) == 10570
    assert all(e.label is None and e.text_pair for e in examples)
    records = read_squad_file(path)
    assert len(records) == 10570 and len({r.id for r in records}) == 10570
    assert len({r.title for r in records}) == 48 and len({r.context for r in records}) == 2067
    assert sum(len(r.answer_texts) for r in records) == 34726
    assert all(r.context[s:s + len(t)] == t
               for r in records for s, t in zip(r.answer_starts, r.answer_texts, strict=True))
    first = records[0]
    assert (examples[0].text, examples[0].text_pair) == (first.question, first.context)
    assert (first.answer_text, first.answer_start) == ("Denver Broncos", 177)
    assert read_squad_file(path, limit=3) == records[:3]


def test_limit_takes_the_first_examples(data_dir):
    path = data_dir / "glue" / "RTE" / "dev.tsv"
    assert read_examples(path, limit=5) == read_examples(path)[:5]
    assert len(read_examples(data_dir / "squad", limit=7)) == 7
    with pytest.raises(InputError, match="limit"):
        read_examples(path, limit=0)


# --------------------------------------------------------------------------------------------
# Paths


def test_task_directory_picks_split(data_dir):
    sst2 = data_dir / "glue" / "SST-2"
    assert read_examples(sst2) == read_examples(sst2 / "dev.tsv")
    assert len(read_examples(data_dir / "glue" / "SST-2", split="train")) == 67349
    with pytest.raises(InputError, match=r"no file for split 'test' \(it holds dev.tsv, train.tsv\)"):
        read_examples(data_dir / "glue" / "SST-2", split="test")


def test_first_split_prefers_train_then_dev(data_dir, tmp_path):
    assert first_split(data_dir / "glue" / "SST-2", ("train", "dev")) == "train"
    assert first_split(data_dir / "squad", ("train", "dev")) == "dev"  # SQuAD: dev file only
    assert first_split(data_dir / "glue" / "SST-2" / "dev.tsv", ("train", "dev")) == "train"
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nok\t1\n")
    assert first_split(tmp_path, ("train", "dev")) == "dev"  # neither: reading names the splits


def test_calibration_reads_train_not_dev(tmp_path):
    """Passes that measure the model to decide removals must not look at the reported dev set."""
    task = tmp_path / "task"
    task.mkdir()
    (task / "train.tsv").write_text("sentence\tlabel\ntrain words\t1\n")
    (task / "dev.tsv").write_text("sentence\tlabel\ndev words\t0\n")
    module = _module(_tiny_dir(tmp_path / "m", "sequence-classification", num_labels=2))
    assert _calibrate(module, task)[0].labels.tolist() == [1]
    (task / "train.tsv").unlink()
    assert _calibrate(module, task)[0].labels.tolist() == [0]  # no train file: dev


def test_data_root_lists_tasks(data_dir):
    with pytest.raises(InputError, match="pick one") as info:
        read_examples(data_dir)
    for task in ("glue/SST-2", "glue/MRPC", "glue/RTE", "glue/CoLA", "glue/STS-B", "squad"):
        assert task in str(info.value)


def test_relative_to_data_env(data_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    assert resolve_data_path("glue/SST-2/dev.tsv") == data_dir / "glue" / "SST-2" / "dev.tsv"
    assert resolve_data_path(None) == data_dir
    assert len(read_examples("glue/SST-2/dev.tsv")) == 872
    assert len(read_examples("glue/MRPC")) == 408
    local = write(tmp_path / "glue.txt", "a local file wins\n")
    assert resolve_data_path("glue.txt").resolve() == local.resolve()  # returned as given
    with pytest.raises(InputError, match=f"nor under {DATA_ENV}={data_dir}: fix the path"):
        resolve_data_path("glue/SST-3/dev.tsv")


def test_resolution_errors(no_data_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/data (the default data root) from here
    with pytest.raises(InputError, match=f"set {DATA_ENV}"):
        resolve_data_path(None)
    with pytest.raises(InputError, match="does not exist"):
        read_examples(tmp_path / "missing.tsv")
    with pytest.raises(InputError, match=f"set {DATA_ENV}"):
        read_examples("glue/SST-2/dev.tsv")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="does not exist: point it at the data root"):
        resolve_data_path(None)


# --------------------------------------------------------------------------------------------
# Formats and errors (small files)


def test_plain_text(tmp_path):
    path = write(tmp_path / "lines.txt", "first line\n\n  \nsecond line\r\nthird\n")
    assert read_examples(path) == [Example("first line"), Example("second line"), Example("third")]
    assert read_examples(path, limit=2) == [Example("first line"), Example("second line")]


def test_generic_tsv_headers(tmp_path):
    single = write(tmp_path / "a.tsv", "id\ttext\n1\thello\n2\tworld\n")
    assert read_examples(single) == [Example("hello"), Example("world")]
    qnli = write(tmp_path / "b.tsv",
                 "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tnot_entailment\n")
    assert read_examples(qnli) == [Example("q?", "s.", 1)]
    mnli = write(tmp_path / "c.tsv",
                 "sentence1\tsentence2\tlabel\na\tb\tcontradiction\nc\td\tneutral\n")
    assert [e.label for e in read_examples(mnli)] == [2, 1]
    scores = write(tmp_path / "d.tsv", "sentence\tlabel\nx\t0.25\n")
    assert read_examples(scores) == [Example("x", None, 0.25)]
    bom = write(tmp_path / "e.tsv", "\ufeffsentence\tlabel\nx\t1\n")
    assert read_examples(bom) == [Example("x", None, 1)]


def test_csv_and_json_lines_are_read_like_tsv(tmp_path):
    """The one reader: CSV (quoted cells) and JSON lines work wherever TSV does."""
    tsv = write(tmp_path / "pairs.tsv", "sentence1\tsentence2\tlabel\na, b\tc\tentailment\n")
    csv = write(tmp_path / "pairs.csv", 'Sentence1,sentence2,label\n"a, b",c,entailment\n')
    jsonl = write(tmp_path / "pairs.jsonl", '{"sentence1": "a, b", "sentence2": "c", '
                                            '"label": "entailment"}\n\n')
    assert read_examples(tsv) == read_examples(csv) == read_examples(jsonl) == [
        Example("a, b", "c", 0)]
    own = write(tmp_path / "own.csv", "text,text_pair,label\nx,y,1\nz,w,\n")
    assert read_examples(own) == [Example("x", "y", 1), Example("z", "w", None)]
    task = tmp_path / "task"
    task.mkdir()
    write(task / "train.jsonl", '{"text": "t"}\n')
    assert read_examples(task, split="train") == [Example("t")]
    assert first_split(task, ("train", "dev")) == "train"
    with pytest.raises(InputError, match=r"odd\.jsonl:1: unrecognized JSONL header 'a, b'"):
        read_examples(write(tmp_path / "odd.jsonl", '{"a": 1, "b": 2}\n'))
    with pytest.raises(InputError, match=r"bad\.csv:2: expected 3 CSV columns, found 2"):
        read_examples(write(tmp_path / "bad.csv", "text,text_pair,label\nx,y\n"))


def test_empty_files(tmp_path):
    for name in ("empty.tsv", "empty.txt", "empty.json"):
        with pytest.raises(InputError, match="is empty"):
            read_examples(write(tmp_path / name, ""))
    with pytest.raises(InputError, match="is empty"):
        read_examples(write(tmp_path / "blank.txt", "\n  \n"))
    with pytest.raises(InputError, match="has no examples"):
        read_examples(write(tmp_path / "header.tsv", "sentence\tlabel\n"))


def test_unrecognized_header(tmp_path):
    path = write(tmp_path / "bad.tsv", "foo\tbar\n1\t2\n")
    with pytest.raises(InputError, match=r"bad\.tsv:1: unrecognized TSV header 'foo, bar'.*SST-2"):
        read_examples(path)


def test_malformed_rows_name_file_and_line(tmp_path):
    short = write(tmp_path / "short.tsv", "sentence\tlabel\ngood\t1\n\nbad row\n")
    with pytest.raises(InputError, match=r"short\.tsv:4: expected 2 TSV columns, found 1"):
        read_examples(short)
    assert len(read_examples(short, limit=1)) == 1  # rows after the limit are not read
    label = write(tmp_path / "label.tsv", "sentence1\tsentence2\tlabel\na\tb\tmaybe\n")
    with pytest.raises(InputError, match=r"label\.tsv:2: bad label 'maybe'"):
        read_examples(label)
    cola = write(tmp_path / "cola.tsv", "gj04\t1\t\tFine.\ngj04\t1\tToo few.\n")
    with pytest.raises(InputError, match=r"cola\.tsv:2: expected 4 TSV columns, found 3"):
        read_examples(cola)
    with pytest.raises(InputError, match=r"bad\.json:1: invalid JSON"):
        read_examples(write(tmp_path / "bad.json", "{'data': []}"))
    with pytest.raises(InputError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\] lacks 'question'"):
        read_examples(write(tmp_path / "qa.json", '{"data": [{"paragraphs": [{"context": "c", '
                                                  '"qas": [{"id": "1", "answers": []}]}]}]}'))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match=r"binary\.txt: not UTF-8"):
        read_examples(binary)


# --------------------------------------------------------------------------------------------
# Batching


def test_batches_pad_per_batch(tokenizer):
    examples = [Example("short"), Example("a somewhat longer sentence with more words"),
                Example("tiny"), Example("also tiny")]
    batches = example_batches(examples, tokenizer, ["input_ids", "attention_mask"], batch_size=2)
    assert len(batches) == 2 and [len(b) for b in batches] == [2, 2]
    for batch, chunk in zip(batches, (examples[:2], examples[2:]), strict=True):
        assert list(batch.inputs) == ["input_ids", "attention_mask"]
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        assert ids.dtype == mask.dtype == torch.int64
        lengths = [len(tokenizer(e.text)["input_ids"]) for e in chunk]
        assert ids.shape == (2, max(lengths))  # padded to the longest in this batch only
        assert mask.sum(dim=1).tolist() == lengths
        for row, length in enumerate(lengths):
            assert mask[row, :length].all() and not mask[row, length:].any()
            assert (ids[row, length:] == tokenizer.pad_token_id).all()
            assert ids[row, length - 1] == tokenizer.sep_token_id
        assert batch.labels is None
    assert batches[1].inputs["input_ids"].shape[1] < batches[0].inputs["input_ids"].shape[1]


def test_pairs_and_token_types(tokenizer):
    examples = [Example("first segment", "the second one", 1), Example("a", "b", 0)]
    (batch,) = example_batches(examples, tokenizer, ["input_ids", "token_type_ids", "attention_mask"])
    assert list(batch.inputs) == ["input_ids", "token_type_ids", "attention_mask"]
    ids, types, mask = (batch.inputs[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert types.dtype == torch.int64
    for row, example in enumerate(examples):
        first = len(tokenizer(example.text)["input_ids"])  # [CLS] text [SEP]
        total = int(mask[row].sum())
        assert not types[row, :first].any() and types[row, first:total].all()
        assert not types[row, total:].any()
        assert (ids[row, [0, first - 1, total - 1]] == torch.tensor(
            [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id])).all()
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [1, 0]


def test_truncation_and_label_dtypes(tokenizer):
    long = " ".join(["word"] * 300)
    (batch,) = example_batches([Example(long, long, 2.5), Example("x", "y", 1.0)], tokenizer,
                            ["input_ids"], max_length=32)
    assert batch.inputs["input_ids"].shape == (2, 32)
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [2.5, 1.0]
    (single,) = example_batches([Example(long)], tokenizer, ["input_ids"], max_length=16)
    assert single.inputs["input_ids"].shape == (1, 16)
    (mixed,) = example_batches([Example("a", label=1), Example("b")], tokenizer, ["input_ids"])
    assert mixed.labels is None


def test_token_type_zeros_when_tokenizer_gives_none(tokenizer):
    class NoTypes:  # a tokenizer (like DistilBERT's) that returns no token_type_ids
        pad_token_id, eos_token_id, padding_side = tokenizer.pad_token_id, None, "right"

        def __call__(self, *args, **kwargs):
            encoded = tokenizer(*args, **kwargs)
            return {k: v for k, v in encoded.items() if k != "token_type_ids"}

    (batch,) = example_batches([Example("a", "b c"), Example("d", "e")], NoTypes(),
                            ["input_ids", "token_type_ids"])
    assert batch.inputs["token_type_ids"].dtype == torch.int64
    assert batch.inputs["token_type_ids"].shape == batch.inputs["input_ids"].shape
    assert not batch.inputs["token_type_ids"].any()


def test_batching_errors(tokenizer):
    with pytest.raises(InputError, match="be taken from input_ids, attention_mask"):
        example_batches([Example("a")], tokenizer, ["input_ids", "pixel_values"])
    with pytest.raises(InputError, match="mix single texts and pairs"):
        example_batches([Example("a"), Example("b", "c")], tokenizer, ["input_ids"])
    with pytest.raises(InputError, match="batch_size"):
        example_batches([Example("a")], tokenizer, ["input_ids"], batch_size=0)
    with pytest.raises(InputError, match="no examples to batch"):
        example_batches([], tokenizer, ["input_ids"])


def test_calibration_batches_of_a_task_directory(data_dir, tokenizer):
    batches = example_batches(read_examples(data_dir / "glue" / "MRPC", limit=40), tokenizer,
                              ["input_ids", "attention_mask"], batch_size=16, max_length=64)
    assert [len(b) for b in batches] == [16, 16, 8]
    assert all(b.inputs["input_ids"].shape[1] <= 64 for b in batches)
    assert all(set(b.inputs) == {"input_ids", "attention_mask"} for b in batches)
    labels = torch.cat([b.labels for b in batches])
    assert labels.dtype == torch.long
    assert labels.tolist() == [e.label for e in read_examples(data_dir / "glue" / "MRPC", limit=40)]
    squad = example_batches(read_examples(data_dir / "squad", limit=4), tokenizer, ["input_ids"],
                            max_length=384)
    assert len(squad) == 1 and squad[0].labels is None


# -- calibration for passes: refusals before anything runs --------------------------------------
WORDS = ["the", "a", "film", "is", "good", "bad", "not", "very", "movie", "fun"]


def _tiny_dir(path: Path, head: str = "base", num_labels: int = 2, tokenizer: bool = True) -> Path:
    """A tiny random BERT saved in ``path`` (vocab 120), with a 15-token WordPiece tokenizer."""
    import transformers as tf

    from optc.tests.conftest import TINY

    torch.manual_seed(0)
    config = tf.BertConfig(**TINY, num_labels=num_labels)
    cls = {"base": tf.BertModel, "sequence-classification": tf.BertForSequenceClassification,
           "token-classification": tf.BertForTokenClassification}[head]
    cls(config).eval().save_pretrained(path, safe_serialization=True)
    if tokenizer:
        vocab = path / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        tf.BertTokenizer(str(vocab)).save_pretrained(path)
    return path


def _module(path: Path):
    import optc

    model, source = optc.load_model(path)
    return optc.capture(model, source=source)


def _calibrate(module, data: Path, **options):
    from optc.passes.support.calibration import calibration_batches

    args = dict(samples=8, batch_size=4, max_length=16, tokenizer=None, why="prune-heads{criterion=taylor}")
    return calibration_batches(module, str(data), **{**args, **options})


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sts") / "dev.tsv"
    rows = [f"the film is good\ta good movie\t{s}" for s in (4.2, 1.0, 3.5, 0.4)]
    path.write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def sst_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sst") / "dev.tsv"
    path.write_text("sentence\tlabel\nthe film is good\t1\na bad movie\t0\nnot fun\t2\n")
    return path


def test_calibration_without_tokenizer_files_is_refused(tmp_path, sst_file):
    module = _module(_tiny_dir(tmp_path / "m", tokenizer=False))
    with pytest.raises(InputError) as info:
        _calibrate(module, sst_file)
    message = str(info.value)
    assert message.startswith("prune-heads{criterion=taylor}: ")
    assert "no tokenizer files" in message and "tokenizer=" in message and "\n" not in message


def test_calibration_with_the_models_tokenizer_works(tmp_path, sst_file):
    module = _module(_tiny_dir(tmp_path / "m", "sequence-classification", num_labels=3))
    batches = _calibrate(module, sst_file)
    assert batches[0].labels.tolist() == [1, 0, 2]
    ids = batches[0].inputs["input_ids"]
    assert (ids[:, 1] != 1).all()  # real words, not [UNK]


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path, sst_file):
    module = _module(_tiny_dir(tmp_path / "m", tokenizer=False))
    with pytest.raises(InputError, match="30522 tokens but the model's embedding table has 120 rows"):
        _calibrate(module, sst_file, tokenizer=_embedded_tokenizer_dir())


def _embedded_tokenizer_dir() -> str:
    from optc.frontends.huggingface import default_model_path

    return str(default_model_path())


def test_scores_for_a_three_label_head_are_refused(tmp_path, sts_file):
    module = _module(_tiny_dir(tmp_path / "m", "sequence-classification", num_labels=3))
    with pytest.raises(InputError, match="scores .* the model's head has 3 labels"):
        _calibrate(module, sts_file)
    assert _calibrate(module, sts_file, use_labels=False)[0].labels is None


def test_class_label_out_of_range_is_refused(tmp_path, sst_file):
    module = _module(_tiny_dir(tmp_path / "m", "sequence-classification", num_labels=2))
    with pytest.raises(InputError, match="class label 2 but the model's head has 2 labels"):
        _calibrate(module, sst_file)


def test_sentence_labels_for_a_token_head_are_refused(tmp_path, sst_file):
    module = _module(_tiny_dir(tmp_path / "m", "token-classification", num_labels=3))
    with pytest.raises(InputError, match="one label per example.*labels every token"):
        _calibrate(module, sst_file)


def test_a_pass_calibrates_on_csv_data(tmp_path):
    """A CSV file is calibration data like a TSV (it used to be refused as a pass's data)."""
    from optc.passes.manager import PassManager

    module = _module(_tiny_dir(tmp_path / "m", "sequence-classification", num_labels=2))
    data = write(tmp_path / "cal.csv", "text,label\n" + "".join(
        f'"the film, {w}",{i % 2}\n' for i, w in enumerate(WORDS)))
    report = PassManager(f"drop-layers{{strategy=contribution,count=1,data={data},samples=8,"
                         "batch_size=4}").run(module)
    assert report.records[0].modified and report.records[0].stats["layers"]
    batches = _calibrate(module, data)
    assert [len(b) for b in batches] == [4, 4]
    assert batches[0].labels.tolist() == [0, 1, 0, 1]

